"""Compiled-module cache: compile a guest once, deserialize it in a fraction of a millisecond afterwards.

Keys are ``blake3(wasm)`` plus the engine fingerprint (wasmtime version and engine settings), so a new
wasmtime or a changed setting never loads stale native code. Deserializing trusts its input completely (it
is native code), so we only ever deserialize from our own cache directory: created with mode 0700, owned by
us, refused when group- or world-writable or owned by someone else. Entries are written atomically (temp
file, fsync, rename), so a crash never leaves a half-written module under a valid name.

Compiling is a guest's first chance to spend the worker's time, before its deadline starts, so it is
bounded too: a module over ``max_module_size`` bytes is refused unread (``ModuleTooLarge``), and a cache
miss compiles in a forked child with RLIMIT_CPU set, killed when ``compile_timeout`` seconds pass
(``CompileTimeout``); the parent only deserializes what the child produced. Like the supervisor, the caller
must not run other non-daemon threads while a module compiles (the child is forked).

The module is the archive author's, and compiling it runs a large native compiler over it: that child is
confined like a guest's own (``workers.confine``: every inherited socket, pipe, folder and writable file
closed, no_new_privs, an empty network namespace, rlimits with RLIMIT_AS, Landlock with no path, the same
seccomp filter), so a module that found a flaw in the compiler would hold nothing of the worker's: no
Redis connection, no store folder, no network, no file. In strict mode a layer that cannot be applied fails
the compile (``SandboxUnavailable``); nothing was compiled.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import signal
import stat
import threading
import time
from pathlib import Path

import blake3
import wasmtime

from sync_format.atomic import create_temp, discard, publish, sync_file
from sync_format.errors import CompileTimeout, GuestTrap, ModuleTooLarge, SandboxUnavailable, SyncError
from sync_format.escape import escape_text
from workers.confine import SandboxPolicy, apply_policy, build_program, enforce, set_pdeathsig
from workers.confine.descriptors import isolate_descriptors
from workers.engine import COMPILE_ERROR_LIMIT, compile_module, engine_fingerprint

log = logging.getLogger(__name__)

CACHE_SUFFIX = ".cwasm"
#: Largest ``sync.wasm`` compiled, in bytes.
DEFAULT_MAX_MODULE_SIZE = 16 * 1024 * 1024
#: Seconds a module may take to compile.
DEFAULT_COMPILE_TIMEOUT = 30.0
#: The child's answer starts with one of these: compiled code, the compiler's refusal, or a layer missing.
_COMPILED, _INVALID, _UNCONFINED = b"C", b"E", b"S"


class UnsafeCacheDirectory(SyncError):
    """Raised when the cache directory could be written by someone else, so its modules cannot be trusted.

    Attributes:
        path: The directory.
    """

    code = "unsafe_cache_directory"

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


class ModuleCache:
    """Loads guest modules through an on-disk cache of compiled code."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        engine: wasmtime.Engine,
        *,
        max_module_size: int = DEFAULT_MAX_MODULE_SIZE,
        compile_timeout: float = DEFAULT_COMPILE_TIMEOUT,
        policy: SandboxPolicy | None = None,
        seccomp_program: bytes | None = None,
    ) -> None:
        """Use ``directory`` (created if missing) for compiled modules of ``engine``.

        Args:
            directory: Cache directory; only this process's user may write it.
            engine: The engine modules are compiled for (``workers.engine.make_engine``).
            max_module_size: Largest module compiled, in bytes.
            compile_timeout: Seconds a compile may take.
            policy: How the compiler child is confined (its RLIMIT_CPU comes from ``compile_timeout``);
                by default every layer, strict.
            seccomp_program: The filter for that child (``workers.confine.build_program``); built here
                when not given and the policy has a seccomp layer.

        Raises:
            UnsafeCacheDirectory: The directory is not private to us.
        """
        self.directory = Path(directory)
        self.engine = engine
        self.max_module_size = max_module_size
        self.compile_timeout = compile_timeout
        cpu = math.ceil(compile_timeout) + 1
        self.policy = (policy or SandboxPolicy()).with_cpu_seconds(cpu)
        if seccomp_program is None and policy is None:
            with contextlib.suppress(SandboxUnavailable):  # strict mode then refuses at the first compile
                seccomp_program = build_program()
        self.seccomp_program = seccomp_program
        self._fingerprint = engine_fingerprint()
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise UnsafeCacheDirectory(self.directory, "not a directory") from exc
        self._check_private()

    def _check_private(self) -> None:
        st = self.directory.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeCacheDirectory(self.directory, "not a directory")
        if st.st_uid != os.geteuid():
            raise UnsafeCacheDirectory(self.directory, f"owned by uid {st.st_uid}, not by us")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafeCacheDirectory(self.directory, "writable by group or others")

    def path_for(self, wasm: bytes) -> Path:
        """Where the compiled form of ``wasm`` lives.

        Args:
            wasm: Module bytes.

        Returns:
            The cache file path.
        """
        digest = blake3.blake3(wasm).hexdigest()
        return self.directory / f"{digest}-{self._fingerprint}{CACHE_SUFFIX}"

    def load(self, wasm: bytes) -> wasmtime.Module:
        """Return the compiled module, compiling and caching it on a miss.

        Args:
            wasm: Module bytes.

        Returns:
            The module.

        Raises:
            GuestTrap: The bytes are not a valid binary module.
            ModuleTooLarge: The module is over ``max_module_size``.
            CompileTimeout: Compiling took longer than ``compile_timeout``.
            UnsafeCacheDirectory: The directory stopped being private.
        """
        return self.load_keyed(wasm)[0]

    def load_keyed(self, wasm: bytes) -> tuple[wasmtime.Module, str]:
        """``load``, and the module's cache key (``blake3(wasm)`` and the engine fingerprint: the name of its
        cache file without the suffix), which names this compiled code for the sandbox zygote.

        Args:
            wasm: Module bytes.

        Returns:
            The module and its key.

        Raises:
            GuestTrap: The bytes are not a valid binary module.
            ModuleTooLarge: The module is over ``max_module_size``.
            CompileTimeout: Compiling took longer than ``compile_timeout``.
            UnsafeCacheDirectory: The directory stopped being private.
        """
        if len(wasm) > self.max_module_size:
            raise ModuleTooLarge(
                f"sync.wasm is {len(wasm)} bytes, over this worker's limit of {self.max_module_size} bytes"
            )
        self._check_private()
        path = self.path_for(wasm)
        key = path.name.removesuffix(CACHE_SUFFIX)
        if path.exists():
            try:
                return wasmtime.Module.deserialize_file(self.engine, str(path)), key
            except wasmtime.WasmtimeError as exc:
                log.warning("module cache entry unusable, recompiling path=%s error=%s", path, exc)
                discard(path)
        started = time.monotonic()
        data = self._compile_bounded(wasm)
        try:
            module = wasmtime.Module.deserialize(self.engine, data)
        except wasmtime.WasmtimeError as exc:
            raise GuestTrap(f"compiled module does not load: {exc}") from exc
        self._store(path, data)
        log.info(
            "module compiled path=%s size=%d duration_ms=%.1f",
            path.name,
            len(wasm),
            (time.monotonic() - started) * 1000,
        )
        return module, key

    def _compile_bounded(self, wasm: bytes) -> bytes:
        """Compile in a forked child within ``compile_timeout``; return the serialized module."""
        others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
        if others:
            raise RuntimeError(f"compiling forks: stop these threads first: {[t.name for t in others]}")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover  (the child's work is checked by the parent)
            os.close(read_end)
            _compile_child(self.engine, wasm, write_end, self.policy, self.seccomp_program)
        os.close(write_end)
        try:
            data = _read_until(read_end, time.monotonic() + self.compile_timeout)
        finally:
            os.close(read_end)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
        # RLIMIT_CPU is applied with soft = hard, so the kernel may send SIGKILL rather than SIGXCPU; a
        # SIGKILL before the CPU limit is something else (the kernel out of memory, say), not a timeout.
        ended = os.waitstatus_to_exitcode(status)
        spent = usage.ru_utime + usage.ru_stime
        out_of_cpu = ended == -signal.SIGXCPU or (
            ended == -signal.SIGKILL and spent >= self.policy.rlimits.cpu_seconds - 0.5
        )
        if data is None or (not data and out_of_cpu):
            raise CompileTimeout(f"sync.wasm did not compile within {self.compile_timeout:g} s")
        if not data and ended == -signal.SIGKILL:
            raise GuestTrap(
                f"the compiler child was killed after {spent:.1f} s of CPU (out of memory?); "
                "sync.wasm was not compiled"
            )
        if data[:1] == _UNCONFINED:
            layer, _, reason = data[1:].decode(errors="replace").partition("\0")
            raise SandboxUnavailable(layer, f"the module compiler could not be confined: {reason}")
        if data[:1] == _INVALID:
            # Escaped again here: the child is not trusted to have done it, and the text quotes the guest.
            raise GuestTrap(escape_text(data[1:].decode(errors="replace"), COMPILE_ERROR_LIMIT))
        if data[:1] != _COMPILED:
            raise GuestTrap(f"the compiler child ended with status {os.waitstatus_to_exitcode(status)}")
        return data[1:]

    def _store(self, path: Path, data: bytes) -> None:
        temp, handle = create_temp(path)
        try:
            with handle:
                os.fchmod(handle.fileno(), 0o600)
                handle.write(data)
                sync_file(handle)
            publish(temp, path)
        except BaseException:
            discard(temp)
            raise


def _compile_child(  # pragma: no cover  (the parent checks what it answers)
    engine: wasmtime.Engine, wasm: bytes, fd: int, policy: SandboxPolicy, program: bytes | None
) -> None:
    """In the forked child: confine, compile, write the result to ``fd``, then exit (never returns)."""
    status = 0
    try:
        os.setsid()
        set_pdeathsig(signal.SIGKILL)
        isolate_descriptors(fd)
        os.environ.clear()
        try:
            enforce(apply_policy(policy, program), policy.mode)
        except SandboxUnavailable as exc:
            result = _UNCONFINED + f"{exc.layer}\0{exc.message.removeprefix(f'{exc.layer}: ')}".encode()
        else:
            try:
                result = _COMPILED + compile_module(engine, wasm).serialize()
            except GuestTrap as exc:
                result = _INVALID + exc.message.encode()
        view = memoryview(result)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:  # noqa: BLE001  (the parent reports an empty answer)
        status = 1
    os._exit(status)


def _read_until(fd: int, deadline: float) -> bytes | None:
    """Everything the child writes until it closes the pipe, or None when ``deadline`` passes first."""
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)

"""``ModuleCache``: compile a guest once, deserialize it afterwards, and trust only a private directory.

Deserializing loads native code, so the tests check what makes that safe: entries keyed by the wasm's blake3
and the engine fingerprint, written 0600 into a 0700 directory owned by us, a directory others could write
refused, and an entry that does not deserialize compiled afresh rather than trusted. Modules loaded here are
run in-process only to show they work (a constant function; nothing is confined).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest
import wasmtime

import workers.engine
import workers.module_cache
from sync_format.errors import GuestTrap, SandboxUnavailable
from workers.confine import SandboxMode, SandboxPolicy
from workers.engine import engine_fingerprint, make_engine
from workers.module_cache import CACHE_SUFFIX, ModuleCache, UnsafeCacheDirectory

ANSWER = bytes(wasmtime.wat2wasm('(module (func (export "answer") (result i32) (i32.const 42)))'))
OTHER = bytes(wasmtime.wat2wasm('(module (func (export "answer") (result i32) (i32.const 7)))'))
#: A uid that owns nothing on the test machine.
FOREIGN_UID = 12345


@pytest.fixture(scope="module")
def engine() -> wasmtime.Engine:
    """One engine with the product's settings."""
    return make_engine()


@pytest.fixture
def no_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make compiling fail, so any module returned was deserialized from the cache."""

    def refuse(engine: wasmtime.Engine, wasm: bytes) -> wasmtime.Module:
        raise AssertionError("compiled although a cache entry exists")

    monkeypatch.setattr(workers.module_cache, "compile_module", refuse)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Run with umask 0, so modes come from the cache and not from the umask."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def answer(engine: wasmtime.Engine, module: wasmtime.Module) -> int:
    """Instantiate ``module`` and call its ``answer`` export."""
    store = wasmtime.Store(engine)
    store.set_fuel(10_000)
    func = wasmtime.Instance(store, module, []).exports(store)["answer"]
    assert isinstance(func, wasmtime.Func)
    result = func(store)
    assert isinstance(result, int)
    return result


def listing(directory: Path) -> dict[str, tuple[int, int]]:
    """Names in ``directory`` with their inode and modification time."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir()}


def test_compiles_once_then_deserializes(
    engine: wasmtime.Engine, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The first load compiles and stores one entry; later loads, also by a new cache with a new engine,
    deserialize it without compiling or writing anything, and the module works."""
    directory = tmp_path / "modules"
    first = ModuleCache(directory, engine).load(ANSWER)
    before = listing(directory)
    assert len(before) == 1
    request.getfixturevalue("no_compiling")
    again = ModuleCache(directory, engine).load(ANSWER)
    fresh_engine = make_engine()
    elsewhere = ModuleCache(directory, fresh_engine).load(ANSWER)
    assert listing(directory) == before
    assert answer(engine, first) == answer(engine, again) == answer(fresh_engine, elsewhere) == 42


def test_entry_name_is_wasm_hash_and_engine_fingerprint(
    engine: wasmtime.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry is named ``<blake3 of the wasm>-<engine fingerprint>.cwasm``; other bytes or another wasmtime
    version give another name."""
    cache = ModuleCache(tmp_path, engine)
    cache.load(ANSWER)
    expected = f"{blake3.blake3(ANSWER).hexdigest()}-{engine_fingerprint()}{CACHE_SUFFIX}"
    assert [p.name for p in tmp_path.iterdir()] == [expected]
    assert cache.path_for(ANSWER) == tmp_path / expected
    assert cache.path_for(OTHER) != cache.path_for(ANSWER)
    monkeypatch.setattr(workers.engine, "wasmtime_version", lambda: "0.0.0")
    assert ModuleCache(tmp_path, engine).path_for(ANSWER) != cache.path_for(ANSWER)


@pytest.mark.usefixtures("umask_zero")
def test_entries_are_private(engine: wasmtime.Engine, tmp_path: Path) -> None:
    """The cache directory is created 0700 and entries are written 0600, whatever the umask."""
    directory = tmp_path / "nested" / "modules"
    ModuleCache(directory, engine).load(ANSWER)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    [entry] = directory.iterdir()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert (entry.stat().st_uid, directory.stat().st_uid) == (os.geteuid(), os.geteuid())


def _chmod(mode: int) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        directory.chmod(mode)
        return directory

    return make


def _foreign(directory: Path) -> Path:
    os.chown(directory, FOREIGN_UID, FOREIGN_UID)
    return directory


def _symlink(directory: Path) -> Path:
    link = directory.parent / "link"
    link.symlink_to(directory)
    return link


def _regular_file(directory: Path) -> Path:
    path = directory.parent / "file"
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_chmod(0o770), "writable by group or others"),
        (_chmod(0o720), "writable by group or others"),
        (_chmod(0o702), "writable by group or others"),
        (_chmod(0o777), "writable by group or others"),
        (_foreign, f"owned by uid {FOREIGN_UID}"),
        (_symlink, "not a directory"),
        (_regular_file, "not a directory"),
    ],
    ids=[
        "group-writable",
        "group-write-only",
        "world-writable",
        "mode-777",
        "foreign-owner",
        "symlink",
        "file",
    ],
)
def test_unsafe_directory_is_refused(
    engine: wasmtime.Engine, tmp_path: Path, spoil: Callable[[Path], Path], reason: str
) -> None:
    """A cache directory someone else could write (or that is not a plain directory) is refused."""
    directory = tmp_path / "modules"
    directory.mkdir(mode=0o700)
    target = spoil(directory)
    with pytest.raises(UnsafeCacheDirectory) as caught:
        ModuleCache(target, engine)
    assert caught.value.path == target
    assert reason in caught.value.message


def test_directory_that_becomes_unsafe_is_not_loaded_from(
    engine: wasmtime.Engine, tmp_path: Path, no_compiling: None
) -> None:
    """A directory made group-writable after the cache was opened is refused at the next load, before its
    entries are read."""
    directory = tmp_path / "modules"
    cache = ModuleCache(directory, engine)
    cache.path_for(ANSWER).write_bytes(b"planted")
    directory.chmod(0o775)
    with pytest.raises(UnsafeCacheDirectory, match="writable by group or others"):
        cache.load(ANSWER)
    assert cache.path_for(ANSWER).read_bytes() == b"planted"


@pytest.mark.parametrize(
    "corrupt",
    [lambda data: b"not a module" * 100, lambda data: data[: len(data) // 2], lambda data: b""],
    ids=["garbage", "truncated", "empty"],
)
def test_corrupted_entry_is_recompiled(
    engine: wasmtime.Engine,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
    corrupt: Callable[[bytes], bytes],
) -> None:
    """An entry that does not deserialize is discarded and recompiled, never used; the new entry is good."""
    cache = ModuleCache(tmp_path, engine)
    cache.load(ANSWER)
    path = cache.path_for(ANSWER)
    damaged = corrupt(path.read_bytes())
    path.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="workers.module_cache"):
        module = cache.load(ANSWER)
    assert answer(engine, module) == 42
    assert any("module cache entry unusable" in r.getMessage() for r in caplog.records)
    assert path.read_bytes() != damaged
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    request.getfixturevalue("no_compiling")
    assert answer(engine, cache.load(ANSWER)) == 42


@pytest.mark.parametrize(
    ("wasm", "message"),
    [
        (b'(module (func (export "answer") (result i32) (i32.const 42)))', "not a binary WebAssembly module"),
        (b"", "not a binary WebAssembly module"),
        (b"\x00asm\x02\x00\x00\x00", "not a binary WebAssembly module"),
        (b"\x00asm\x01\x00\x00\x00\x01\xff\xff", "invalid module"),
        (bytes(wasmtime.wat2wasm("(module (func (result i32)))")), "invalid module"),
    ],
    ids=["text-format", "empty", "version-2", "truncated-section", "fails-validation"],
)
def test_invalid_wasm_is_a_guest_trap(
    engine: wasmtime.Engine, tmp_path: Path, wasm: bytes, message: str
) -> None:
    """Bytes that are not a valid binary module raise GuestTrap, and nothing is written to the cache."""
    cache = ModuleCache(tmp_path / "modules", engine)
    with pytest.raises(GuestTrap, match=message):
        cache.load(wasm)
    assert list(cache.directory.iterdir()) == []


def test_the_compiler_child_holds_nothing_of_the_worker_and_reaches_nothing(
    engine: wasmtime.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive author's module is compiled in a child confined like a guest's: what the worker held
    (a connection, stand-in for Redis; a store folder; a log open for writing) is closed before the
    compiler starts, and it can open no file and create no socket. The compiler is replaced by a probe
    that reports what it could reach, as a compile error, so the parent shows it."""
    worker_end, other_end = socket.socketpair()
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    log_file = (tmp_path / "worker.log").open("ab")
    held = {"connection": worker_end.fileno(), "folder": folder, "log": log_file.fileno()}

    def probe(engine: wasmtime.Engine, wasm: bytes) -> wasmtime.Module:
        seen = []
        for name, fd in held.items():
            try:
                os.write(fd, b"x")
            except OSError as exc:
                seen.append(f"{name} {'closed' if exc.errno == errno.EBADF else exc.errno}")
            else:
                seen.append(f"{name} open")
        for name, attempt in (
            ("file", lambda: os.close(os.open("/etc/hostname", os.O_RDONLY))),
            ("socket", lambda: socket.socket().close()),
        ):
            try:
                attempt()
            except PermissionError:
                seen.append(f"{name} refused")
            else:
                seen.append(f"{name} reached")
        raise GuestTrap(", ".join(seen))

    monkeypatch.setattr(workers.module_cache, "compile_module", probe)
    try:
        with pytest.raises(GuestTrap) as caught:
            ModuleCache(tmp_path / "modules", engine).load(ANSWER)
        other_end.setblocking(False)
        with pytest.raises(BlockingIOError):
            other_end.recv(1)  # nothing came through the worker's connection
    finally:
        worker_end.close()
        other_end.close()
        os.close(folder)
        log_file.close()
    assert caught.value.message == (
        "connection closed, folder closed, log closed, file refused, socket refused"
    )
    assert (tmp_path / "worker.log").read_bytes() == b""


def test_a_compiler_child_that_cannot_be_confined_compiles_nothing_in_strict_mode(
    engine: wasmtime.Engine, tmp_path: Path
) -> None:
    """Strict mode with no seccomp filter (libseccomp missing, say) refuses to compile, saying which layer
    is missing; nothing is cached. Permissive mode compiles without it."""
    strict = ModuleCache(tmp_path / "strict", engine, policy=SandboxPolicy(), seccomp_program=None)
    with pytest.raises(SandboxUnavailable, match=r"^seccomp: the module compiler could not be confined: "):
        strict.load(ANSWER)
    assert list(strict.directory.iterdir()) == []
    permissive = ModuleCache(
        tmp_path / "permissive",
        engine,
        policy=SandboxPolicy(mode=SandboxMode.PERMISSIVE),
        seccomp_program=None,
    )
    assert answer(engine, permissive.load(ANSWER)) == 42


def test_a_compiler_child_killed_before_its_cpu_limit_is_not_called_a_timeout(
    engine: wasmtime.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL and no answer was reported as "did not compile within 30 s" even when the child had used no
    CPU (the kernel's out-of-memory killer, say). The child's CPU time now tells: here it is killed from
    outside at once, and the error says it was killed, not that it ran out of time."""

    def wait(engine: wasmtime.Engine, wasm: bytes) -> wasmtime.Module:
        time.sleep(30)  # (clock_nanosleep: allowed by the child's filter)
        raise AssertionError("not killed")

    def kill_the_child() -> None:
        own = os.getpid()
        for _ in range(500):
            for task in os.listdir(f"/proc/{own}/task"):
                children = Path(f"/proc/{own}/task/{task}/children").read_text().split()
                for child in children:
                    os.kill(int(child), signal.SIGKILL)
                    return
            time.sleep(0.01)

    monkeypatch.setattr(workers.module_cache, "compile_module", wait)
    killer = threading.Thread(target=kill_the_child, daemon=True)  # (a daemon: compiling forks)
    killer.start()
    with pytest.raises(GuestTrap, match=r"killed after 0\.\d s of CPU \(out of memory\?\)"):
        ModuleCache(tmp_path / "modules", engine, compile_timeout=20).load(ANSWER)
    killer.join(5)

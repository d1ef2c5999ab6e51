"""Compiled-module cache: compile a guest once, deserialize it in a fraction of a millisecond afterwards.

Keys are ``blake3(wasm)`` plus the engine fingerprint (wasmtime version and engine settings), so a new
wasmtime or a changed setting never loads stale native code. Deserializing trusts its input completely (it
is native code), so we only ever deserialize from our own cache directory: created with mode 0700, owned by
us, refused when group- or world-writable or owned by someone else. Entries are written atomically (temp
file, fsync, rename), so a crash never leaves a half-written module under a valid name.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import blake3
import wasmtime

from sync_format.atomic import create_temp, discard, publish, sync_file
from sync_format.errors import GuestTrap, SyncError
from workers.engine import compile_module, engine_fingerprint

log = logging.getLogger(__name__)

CACHE_SUFFIX = ".cwasm"


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

    def __init__(self, directory: str | os.PathLike[str], engine: wasmtime.Engine) -> None:
        """Use ``directory`` (created if missing) for compiled modules of ``engine``.

        Args:
            directory: Cache directory; only this process's user may write it.
            engine: The engine modules are compiled for (``workers.engine.make_engine``).

        Raises:
            UnsafeCacheDirectory: The directory is not private to us.
        """
        self.directory = Path(directory)
        self.engine = engine
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
            UnsafeCacheDirectory: The directory stopped being private.
        """
        self._check_private()
        path = self.path_for(wasm)
        if path.exists():
            try:
                return wasmtime.Module.deserialize_file(self.engine, str(path))
            except wasmtime.WasmtimeError as exc:
                log.warning("module cache entry unusable, recompiling path=%s error=%s", path, exc)
                discard(path)
        started = time.monotonic()
        module = compile_module(self.engine, wasm)
        self._store(path, module)
        log.info(
            "module compiled path=%s size=%d duration_ms=%.1f",
            path.name,
            len(wasm),
            (time.monotonic() - started) * 1000,
        )
        return module

    def _store(self, path: Path, module: wasmtime.Module) -> None:
        try:
            data = module.serialize()
        except wasmtime.WasmtimeError as exc:
            raise GuestTrap(f"cannot serialize compiled module: {exc}") from exc
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

"""``syncctl guest build``: compile a guest from C, Zig, AssemblyScript or a Rust crate, then check its ABI.

Toolchains come from the registries a user already has: C and Zig through PyPI's ``ziglang`` (``zig cc``
and ``zig build-exe`` for ``wasm32-freestanding``), AssemblyScript through npm's ``assemblyscript``
(``asc``), Rust through ``rustc`` with the ``wasm32-unknown-unknown`` standard library (Debian: ``rustc``
and ``libstd-rust-dev-wasm32``). A missing one is a ``ToolchainMissing`` naming the package to install.

Invariants: output is size-optimized and stripped, and reproducible (no paths, timestamps or build ids in
the module: the compiler runs in the source's directory on relative names, Rust's paths are remapped);
the packaged SDK (``syncctl/sdk``) is on the include/import path, but plain sources that import ``host``
functions directly build too; and nothing is written unless ``check_abi`` passes: imports only from
``host`` with the ABI's signatures, a ``memory`` export and a ``run: () -> ()`` export.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from sync_format.errors import SyncError
from workers.host_abi import IMPORT_MODULE, SIGNATURES

#: The SDK files shipped in the wheel.
SDK_DIR = Path(__file__).parent / "sdk"
LANGUAGES = ("c", "zig", "rust", "assemblyscript")
#: Where ``make guest-toolchains`` installs npm's assemblyscript (under the cache directory).
NPM_PREFIX = Path("guest-toolchains") / "npm"
#: The assemblyscript release the SDK is tested with.
ASSEMBLYSCRIPT_VERSION = "0.28.20"
#: Seconds a compiler may run.
BUILD_TIMEOUT = 300

_INSTALL = {
    "zig": "C and Zig guests need the ziglang package: pip install 'sync-archives[guest]' "
    "(or pip install ziglang)",
    "asc": "AssemblyScript guests need node and npm's assemblyscript: npm install --prefix "
    f"~/.cache/sync/{NPM_PREFIX} assemblyscript@{ASSEMBLYSCRIPT_VERSION} (or make guest-toolchains)",
    "rustc": "Rust guests need rustc with the wasm32-unknown-unknown target: apt-get install rustc "
    "libstd-rust-dev-wasm32 (or rustup target add wasm32-unknown-unknown)",
}


class ToolchainMissing(SyncError):
    """The compiler a guest's language needs is not installed; the message names the package."""

    code = "toolchain_missing"


class GuestBuildFailed(SyncError):
    """The compiler failed, or its module breaks the guest ABI."""

    code = "guest_build_failed"


@dataclass(frozen=True)
class BuildResult:
    """A built guest.

    Attributes:
        language: ``c``, ``zig``, ``rust`` or ``assemblyscript``.
        wasm: The module bytes (already ABI-checked).
        seconds: Wall time of the compiler.
        command: The compiler command line.
    """

    language: str
    wasm: bytes
    seconds: float
    command: tuple[str, ...]


def detect_language(src: Path) -> str:
    """The language of a source: by suffix, or a directory with ``src/lib.rs`` is a Rust crate.

    Args:
        src: A ``.c``, ``.zig`` or ``.ts`` file, or a Rust crate directory.

    Returns:
        One of ``LANGUAGES``.

    Raises:
        GuestBuildFailed: Not a source this command builds.
    """
    if src.is_dir():
        if (src / "src" / "lib.rs").is_file():
            return "rust"
        raise GuestBuildFailed(f"{src} is a directory without src/lib.rs (not a Rust crate)")
    languages = {".c": "c", ".zig": "zig", ".ts": "assemblyscript"}
    if src.name.startswith("-"):
        # The compilers get the bare name (reproducible builds): one starting with "-" would be an option.
        raise GuestBuildFailed(f"{src}: a source name must not start with '-'")
    if src.suffix in languages:
        return languages[src.suffix]
    raise GuestBuildFailed(f"{src}: expected a .c, .zig or .ts file or a Rust crate directory")


def build(src: Path, cache_dir: Path) -> BuildResult:
    """Compile a guest and check it against the ABI.

    Args:
        src: The source file or crate directory.
        cache_dir: The settings' cache directory (where ``make guest-toolchains`` puts npm packages).

    Returns:
        The built module.

    Raises:
        ToolchainMissing: The language's compiler is not installed.
        GuestBuildFailed: The compiler failed or the module breaks the ABI.
    """
    src = src.resolve()
    if not src.exists():
        raise GuestBuildFailed(f"{src}: no such file or directory")
    language = detect_language(src)
    with tempfile.TemporaryDirectory(prefix="sync-guest-build-") as tmp:
        out = Path(tmp) / "guest.wasm"
        if language == "c":
            command, cwd = _c_command(src, out), src.parent
        elif language == "zig":
            command, cwd = _zig_command(src, out), src.parent
        elif language == "assemblyscript":
            command, cwd = _asc_command(src, out, cache_dir, Path(tmp)), src.parent
        else:
            command, cwd = _rust_command(src, out, Path(tmp)), src
        started = time.monotonic()
        _run(command, cwd)
        seconds = time.monotonic() - started
        wasm = out.read_bytes()
    problems = check_abi(wasm)
    if problems:
        raise GuestBuildFailed(f"{src.name} breaks the guest ABI: {'; '.join(problems)}")
    return BuildResult(language, wasm, seconds, tuple(command))


def default_output(src: Path) -> Path:
    """Where ``guest build`` writes without ``-o``: SRC with ``.wasm``, or ``guest.wasm`` in a crate.

    Args:
        src: The source file or crate directory.

    Returns:
        The output path.
    """
    return src / "guest.wasm" if src.is_dir() else src.with_suffix(".wasm")


def check_abi(wasm: bytes) -> list[str]:
    """What is wrong with a module as a guest: imports, signatures, exports.

    Args:
        wasm: Module bytes.

    Returns:
        The problems (empty when it is a valid guest).
    """
    try:
        module = wasmtime.Module(wasmtime.Engine(), wasm)
    except wasmtime.WasmtimeError as exc:
        return [f"not a valid module: {str(exc).splitlines()[0]}"]
    problems = []
    for imp in module.imports:
        wanted = SIGNATURES.get(imp.name or "") if imp.module == IMPORT_MODULE else None
        if wanted is None:
            problems.append(f"imports {imp.module}::{imp.name}, which the host does not provide")
            continue
        ty = imp.type
        got = _signature(ty) if isinstance(ty, wasmtime.FuncType) else None
        if got != wanted:
            problems.append(f"host::{imp.name} has signature {got}, expected {wanted}")
    exports = {e.name: e.type for e in module.exports}
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        problems.append("no exported memory named 'memory'")
    run = exports.get("run")
    if not isinstance(run, wasmtime.FuncType) or _signature(run) != ((), ()):
        problems.append("no exported function run: () -> ()")
    return problems


def _signature(ty: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results)


def _run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "0"}
    try:
        done = subprocess.run(  # noqa: S603  (a compiler we located, with arguments we built)
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise GuestBuildFailed(f"{command[0]} ran longer than {BUILD_TIMEOUT} s") from exc
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise GuestBuildFailed(f"compiler failed ({done.returncode}):\n{output}")


def _zig() -> list[str]:
    if importlib.util.find_spec("ziglang") is None:
        raise ToolchainMissing(_INSTALL["zig"])
    return [sys.executable, "-m", "ziglang"]


def _c_command(src: Path, out: Path) -> list[str]:
    return [
        *_zig(),
        "cc",
        "--target=wasm32-freestanding",
        "-Oz",
        "-nostdlib",
        "-mbulk-memory",
        "-ffile-prefix-map=" + str(src.parent) + "=.",
        "-I",
        str(SDK_DIR / "c"),
        # wasm32-freestanding has no libc: a string.h and its few functions ship with the SDK.
        "-isystem",
        str(SDK_DIR / "c" / "libc"),
        "-Wl,--no-entry",
        "-Wl,--export=run",
        "-Wl,--strip-all",
        "-Wl,--gc-sections",
        "-o",
        str(out),
        src.name,
        str(SDK_DIR / "c" / "libc" / "sync_libc.c"),
    ]


def _zig_command(src: Path, out: Path) -> list[str]:
    return [
        *_zig(),
        "build-exe",
        "-target",
        "wasm32-freestanding",
        "-O",
        "ReleaseSmall",
        "-fno-entry",
        "--export=run",
        "-fstrip",
        "--dep",
        "sync_guest",
        f"-Mroot={src.name}",
        f"-Msync_guest={SDK_DIR / 'zig' / 'sync_guest.zig'}",
        f"-femit-bin={out}",
    ]


def _asc_command(src: Path, out: Path, cache_dir: Path, tmp: Path) -> list[str]:
    if shutil.which("node") is None:
        raise ToolchainMissing(_INSTALL["asc"])
    candidates = [
        shutil.which("asc"),
        cache_dir / NPM_PREFIX / "node_modules" / ".bin" / "asc",
        Path.home() / ".cache" / "sync" / NPM_PREFIX / "node_modules" / ".bin" / "asc",
    ]
    asc = next((str(c) for c in candidates if c is not None and Path(c).is_file()), None)
    if asc is None:
        raise ToolchainMissing(_INSTALL["asc"])
    # asc reads asconfig.json from its working directory unless told otherwise, and a config's "transform"
    # entries are JavaScript it imports and runs: a source directory must not get to run code here.
    config = tmp / "asconfig.json"
    config.write_text("{}\n", encoding="utf-8")
    return [
        asc,
        src.name,
        "--config",
        str(config),
        "-o",
        str(out),
        "--runtime",
        "stub",
        "-Oz",
        "--noAssert",
        "--use",
        "abort=",
        "--lib",
        str(SDK_DIR / "assemblyscript"),
    ]


def find_rustc() -> str:
    """The ``rustc`` of a sysroot with the ``wasm32-unknown-unknown`` standard library (never a rustup proxy).

    Returns:
        Its path.

    Raises:
        ToolchainMissing: None found.
    """
    seen = []
    for candidate in (shutil.which("rustc"), "/usr/bin/rustc"):
        if candidate is None or candidate in seen or not Path(candidate).is_file():
            continue
        seen.append(candidate)
        # Asked from a neutral directory: a rustup proxy obeys a rust-toolchain(.toml) of the directory it
        # runs in, and a crate's could name any program as its "toolchain".
        done = subprocess.run(  # noqa: S603
            [candidate, "--print", "sysroot"], capture_output=True, text=True, check=False, cwd="/"
        )
        sysroot = Path(done.stdout.strip())
        compiler = sysroot / "bin" / "rustc"
        target = sysroot / "lib" / "rustlib" / "wasm32-unknown-unknown"
        if done.returncode == 0 and target.is_dir() and compiler.is_file():
            # The sysroot's own compiler, not the proxy: the build runs in the crate's directory.
            return str(compiler)
    raise ToolchainMissing(_INSTALL["rustc"])


def _rust_command(crate: Path, out: Path, tmp: Path) -> list[str]:
    rustc = find_rustc()
    common = [
        "--edition",
        "2021",
        "--target",
        "wasm32-unknown-unknown",
        "-C",
        "opt-level=z",
        "-C",
        "panic=abort",
        "-C",
        "codegen-units=1",
        f"--remap-path-prefix={crate}=guest",
        f"--remap-path-prefix={SDK_DIR / 'rust'}=sync_guest",
    ]
    sdk = tmp / "libsync_guest.rlib"
    _run(
        [
            rustc,
            *common,
            "--crate-type",
            "rlib",
            "--crate-name",
            "sync_guest",
            "-o",
            str(sdk),
            str(SDK_DIR / "rust" / "src" / "lib.rs"),
        ],
        crate,
    )
    return [
        rustc,
        *common,
        "--crate-type",
        "cdylib",
        "--crate-name",
        "guest",
        "-C",
        "lto",
        "-C",
        "strip=symbols",
        "--extern",
        f"sync_guest={sdk}",
        "-o",
        str(out),
        str(Path("src") / "lib.rs"),
    ]

"""Confinement of the guest's child process: each layer alone, all layers together, and wasmtime guests
running fully confined.

Every case forks a throwaway child with ``os.fork()``: the child applies the layers, attempts the forbidden
action, writes a JSON result to a pipe (or the socketpair a real job uses) and leaves with ``os._exit``. The
parent waits for the result on the pipe with a deadline, reaps the child and asserts. Nothing here confines
the pytest process. A case with no layers is the control: the same action succeeds unconfined.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import resource
import select
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

import workers.confine
from sync_format.errors import SandboxUnavailable
from workers.confine import (
    ALL_LAYERS,
    Layer,
    LayerStatus,
    Rlimits,
    SandboxMode,
    SandboxPolicy,
    SandboxReport,
    apply_policy,
    build_program,
    enforce,
    get_no_new_privs,
    probe,
    set_dumpable,
    set_pdeathsig,
)
from workers.confine.landlock import describe
from workers.confine.rlimits import highest_descriptor, mapped_bytes
from workers.engine import GuestLimits, compile_module, make_engine, make_store

#: Generous bound for a child to answer; only reached when something is broken.
CHILD_TIMEOUT_S = 60.0
#: The Landlock ABI of the kernel these tests are written for (notes/sandbox-facts.md).
EXPECTED_LANDLOCK_ABI = 7

NONE: tuple[Layer, ...] = ()
NETNS = (Layer.NETNS,)
LANDLOCK = (Layer.NO_NEW_PRIVS, Layer.LANDLOCK)
SECCOMP = (Layer.NO_NEW_PRIVS, Layer.SECCOMP)
FULL = ALL_LAYERS

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long


@pytest.fixture(scope="module")
def program() -> bytes:
    """The default (thread-less) seccomp program, built once in the parent."""
    return build_program()


def in_child(
    body: Callable[[Any], Any],
    *,
    layers: tuple[Layer, ...],
    program: bytes | None,
    policy: SandboxPolicy | None = None,
    prepare: Callable[[], Any] = lambda: None,
    channel: str = "pipe",
) -> dict[str, Any]:
    """Fork, run ``prepare`` then confine then ``body(prepared)`` in the child; return the child's JSON."""
    policy = policy or SandboxPolicy(layers=layers)
    if channel == "pipe":
        read_fd, write_fd = os.pipe()
        child_end: socket.socket | None = None
    else:
        parent_end, child_end = socket.socketpair()
        read_fd, write_fd = parent_end.detach(), -1
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            set_pdeathsig(signal.SIGKILL)
            os.close(read_fd)
            prepared = prepare()
            report = apply_policy(policy, program)
            try:
                result: Any = body(prepared)
            except Exception as exc:  # noqa: BLE001  (the child reports any failure to the parent instead)
                result = {"exception": f"{type(exc).__name__}: {exc}"}
            data = json.dumps({"report": report.to_json(), "result": result}).encode()
            if child_end is not None:
                child_end.sendall(data)
            else:
                while data:
                    data = data[os.write(write_fd, data) :]
            code = 0
        finally:
            os._exit(code)
    if child_end is not None:
        child_end.close()
    else:
        os.close(write_fd)
    return _collect(pid, read_fd)


def _collect(pid: int, read_fd: int) -> dict[str, Any]:
    """Read the child's answer until EOF within the deadline, reap the child, and decode the answer."""
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], CHILD_TIMEOUT_S)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"child ended with wait status {status}"
    answer: dict[str, Any] = json.loads(b"".join(chunks))
    return answer


def attempt(action: Callable[[], object]) -> int | None:
    """Run ``action`` and return the errno of the OSError it raised, or None when it succeeded."""
    try:
        action()
    except OSError as exc:
        return exc.errno
    return None


def raw_syscall(number: int, *args: int) -> int | None:
    """Make a raw syscall with the given arguments and return its errno, or None when it succeeded."""
    ctypes.set_errno(0)
    result = LIBC.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    return ctypes.get_errno() if result == -1 else None


@pytest.fixture
def listener() -> Iterator[tuple[str, int]]:
    """A TCP listener the parent opened on 127.0.0.1 (a free port)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield server.getsockname()
    finally:
        server.close()


def test_full_confinement_reports_every_layer_active(program: bytes) -> None:
    """Under the default policy the report lists all five layers active, in order, and Landlock ABI 7."""
    answer = in_child(lambda _: None, layers=FULL, program=program)
    report = SandboxReport.from_json(answer["report"])
    assert report.complete
    assert report.active_layers == ALL_LAYERS
    assert report.landlock_abi == EXPECTED_LANDLOCK_ABI
    details = {s.layer: s.detail for s in report.statuses}
    assert details[Layer.LANDLOCK] == (
        "ABI 7: fs(16 rights, read-only: none), net(tcp bind+connect), scope(abstract-unix, signal)"
    )
    assert re.fullmatch(
        r"as=\d+MiB\+1536MiB cpu=60s nofile=\d+\+64 fsize=0 core=0 nproc=0", details[Layer.RLIMITS]
    )
    assert "default EPERM" in details[Layer.SECCOMP]


def test_no_new_privs_is_set() -> None:
    """After the no_new_privs layer, /proc/self/status says NoNewPrivs 1 and PR_GET_NO_NEW_PRIVS agrees."""

    def body(_: None) -> dict[str, Any]:
        status = Path("/proc/self/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("NoNewPrivs:"))
        return {"status": line.split()[1], "prctl": get_no_new_privs()}

    answer = in_child(body, layers=(Layer.NO_NEW_PRIVS,), program=None)
    assert answer["result"] == {"status": "1", "prctl": True}


OPEN_CASES = [
    pytest.param(NONE, {None}, id="unconfined"),
    pytest.param(LANDLOCK, {errno.EACCES}, id="landlock"),
    pytest.param(SECCOMP, {errno.EPERM}, id="seccomp"),
    pytest.param(FULL, {errno.EPERM, errno.EACCES}, id="full"),
]


@pytest.mark.parametrize(("layers", "expected"), OPEN_CASES)
def test_opening_files_fails(program: bytes, layers: tuple[Layer, ...], expected: set[int | None]) -> None:
    """Opening /etc/passwd, /proc/self/maps, /dev/urandom fails: EACCES by Landlock, EPERM by seccomp."""
    paths = ["/etc/passwd", "/proc/self/maps", "/dev/urandom"]

    def body(_: None) -> list[int | None]:
        return [attempt(lambda p=p: os.close(os.open(p, os.O_RDONLY))) for p in paths]

    answer = in_child(body, layers=layers, program=program)
    assert set(answer["result"]) <= expected, answer


def test_landlock_read_only_path_allows_reading_only(tmp_path: Path) -> None:
    """A read-only path stays readable and listable, but not writable, while every other path stays closed."""
    (tmp_path / "data.txt").write_text("readable")

    def body(_: None) -> dict[str, Any]:
        return {
            "read": (tmp_path / "data.txt").read_text(),
            "list": sorted(os.listdir(tmp_path)),
            "write": attempt(lambda: os.close(os.open(tmp_path / "data.txt", os.O_WRONLY))),
            "create": attempt(lambda: os.close(os.open(tmp_path / "new", os.O_WRONLY | os.O_CREAT))),
            "other": attempt(lambda: os.close(os.open("/etc/passwd", os.O_RDONLY))),
        }

    policy = SandboxPolicy(layers=LANDLOCK, read_only_paths=(str(tmp_path),))
    answer = in_child(body, layers=LANDLOCK, program=None, policy=policy)
    assert answer["result"] == {
        "read": "readable",
        "list": ["data.txt"],
        "write": errno.EACCES,
        "create": errno.EACCES,
        "other": errno.EACCES,
    }
    assert f"read-only: {tmp_path}" in answer["report"]["layers"][1]["detail"]


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        pytest.param(NONE, None, id="unconfined"),
        pytest.param(SECCOMP, errno.EPERM, id="seccomp"),
        pytest.param(FULL, errno.EPERM, id="full"),
    ],
)
def test_creating_a_socket_fails(program: bytes, layers: tuple[Layer, ...], expected: int | None) -> None:
    """socket() fails with EPERM once the seccomp filter is loaded."""
    answer = in_child(
        lambda _: attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()),
        layers=layers,
        program=program,
    )
    assert answer["result"] == expected


@pytest.mark.parametrize(
    ("layers", "precreate", "expected"),
    [
        pytest.param(NONE, False, None, id="unconfined"),
        pytest.param(NETNS, False, errno.ENETUNREACH, id="netns"),
        pytest.param(LANDLOCK, True, errno.EACCES, id="landlock"),
        pytest.param(SECCOMP, True, errno.EPERM, id="seccomp"),
        pytest.param(FULL, True, errno.EPERM, id="full"),
    ],
)
def test_tcp_connect_to_parent_listener_fails(
    program: bytes,
    listener: tuple[str, int],
    layers: tuple[Layer, ...],
    precreate: bool,
    expected: int | None,
) -> None:
    """Connecting to the parent's 127.0.0.1 listener fails: ENETUNREACH in netns, EACCES under Landlock, EPERM
    under seccomp (with a socket created before confinement where socket() itself is denied)."""

    def make() -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def body(early: socket.socket | None) -> int | None:
        sock = early or make()
        try:
            return attempt(lambda: sock.connect(listener))
        finally:
            sock.close()

    answer = in_child(body, layers=layers, program=program, prepare=make if precreate else lambda: None)
    assert answer["result"] == expected


def test_network_namespace_has_only_loopback_down() -> None:
    """In the new network namespace the only interface is ``lo``, and it is down."""
    siocgifflags, iff_up = 0x8913, 0x1

    def body(_: None) -> dict[str, Any]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("16sH22x", b"lo", 0)
            flags = struct.unpack("16sH22x", fcntl.ioctl(sock, siocgifflags, request))[1]
        return {"interfaces": [name for _, name in socket.if_nameindex()], "up": bool(flags & iff_up)}

    answer = in_child(body, layers=NETNS, program=None)
    assert answer["result"] == {"interfaces": ["lo"], "up": False}


#: An unprivileged uid for the child to drop to, distinct from the kernel's overflow uid (65534).
UNPRIVILEGED_ID = 12345


@pytest.mark.parametrize(
    ("dumpable", "uid_inside", "detail"),
    [
        pytest.param(
            True, UNPRIVILEGED_ID, f"uid {UNPRIVILEGED_ID}, gid {UNPRIVILEGED_ID} mapped", id="mapped"
        ),
        pytest.param(
            False, 65534, "uid/gid maps NOT written (Permission denied, errno 13)", id="not-dumpable"
        ),
    ],
)
def test_unprivileged_child_enters_user_and_network_namespace(
    listener: tuple[str, int], dumpable: bool, uid_inside: int, detail: str
) -> None:
    """A non-root child gets an empty network namespace via a user namespace, and says when maps failed."""

    def drop_privileges() -> None:
        os.setgroups([])
        os.setgid(UNPRIVILEGED_ID)
        os.setuid(UNPRIVILEGED_ID)
        # Changing uid made the process non-dumpable; a worker started unprivileged is dumpable.
        set_dumpable(dumpable)

    def body(_: None) -> dict[str, Any]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            refused = attempt(lambda: sock.connect(listener))
        return {"uid": os.getuid(), "interfaces": [n for _, n in socket.if_nameindex()], "connect": refused}

    answer = in_child(body, layers=NETNS, program=None, prepare=drop_privileges)
    assert answer["result"] == {"uid": uid_inside, "interfaces": ["lo"], "connect": errno.ENETUNREACH}
    (status,) = answer["report"]["layers"]
    assert status["active"] is True
    assert status["detail"].startswith("new user+network namespace")
    assert detail in status["detail"]


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        pytest.param(LANDLOCK, errno.EACCES, id="landlock"),
        pytest.param(SECCOMP, errno.EPERM, id="seccomp"),
        pytest.param(FULL, errno.EPERM, id="full"),
    ],
)
def test_execve_fails(program: bytes, layers: tuple[Layer, ...], expected: int) -> None:
    """execve("/bin/true") fails: EACCES under Landlock (execute is handled), EPERM under seccomp."""
    answer = in_child(
        lambda _: attempt(lambda: os.execv("/bin/true", ["/bin/true"])),  # noqa: S606  (must be refused)
        layers=layers,
        program=program,
    )
    assert answer["result"] == expected


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        pytest.param(NONE, None, id="unconfined"),
        pytest.param(LANDLOCK, errno.EPERM, id="landlock-scope"),
        pytest.param(SECCOMP, errno.EPERM, id="seccomp"),
        pytest.param(FULL, errno.EPERM, id="full"),
    ],
)
def test_signalling_the_parent_fails(program: bytes, layers: tuple[Layer, ...], expected: int | None) -> None:
    """kill(parent, 0) fails with EPERM under Landlock's signal scope and under seccomp."""
    parent = os.getpid()
    answer = in_child(lambda _: attempt(lambda: os.kill(parent, 0)), layers=layers, program=program)
    assert answer["result"] == expected


def test_rlimits_are_in_effect(tmp_path: Path) -> None:
    """The default limits read back as soft = hard (AS: what the child mapped plus the headroom; NOFILE: its
    highest descriptor plus the count), and NOFILE, FSIZE and AS refuse what exceeds them."""
    limits = Rlimits()
    target = tmp_path / "grown"

    def held() -> tuple[int, int]:
        return mapped_bytes(), highest_descriptor()

    def body(before: list[int]) -> dict[str, Any]:
        mapped_before, highest_before = before
        names = {"as": resource.RLIMIT_AS, "nofile": resource.RLIMIT_NOFILE, "fsize": resource.RLIMIT_FSIZE}
        names |= {"core": resource.RLIMIT_CORE, "cpu": resource.RLIMIT_CPU}
        values = {name: list(resource.getrlimit(which)) for name, which in names.items()}
        fds = []
        nofile_errno = None
        try:
            while len(fds) <= highest_before + 1 + limits.open_files:
                fds.append(os.dup(0))
        except OSError as exc:
            nofile_errno = exc.errno
        finally:
            for fd in fds:
                os.close(fd)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
        fsize_errno = attempt(lambda: os.write(fd, b"x"))
        os.close(fd)
        try:
            bytearray(2 * limits.address_space)
            as_refused = False
        except MemoryError:
            as_refused = True
        as_limit = values.pop("as")
        as_ok = as_limit[0] == as_limit[1] and 0 <= as_limit[0] - limits.address_space - mapped_before < 2**24
        nofile_limit = values.pop("nofile")
        nofile_ok = nofile_limit == [highest_before + 1 + limits.open_files] * 2
        return {
            "values": values,
            "as_relative": as_ok,
            "nofile_relative": nofile_ok,
            "nofile": nofile_errno,
            "fsize": fsize_errno,
            "as_refused": as_refused,
        }

    answer = in_child(body, layers=(Layer.RLIMITS,), program=None, prepare=held)
    result = answer["result"]
    assert result["as_relative"] is True
    assert result["nofile_relative"] is True
    assert result["values"] == {
        "fsize": [limits.file_size] * 2,
        "core": [limits.core] * 2,
        "cpu": [limits.cpu_seconds] * 2,
    }
    assert result["nofile"] == errno.EMFILE
    assert result["fsize"] == errno.EFBIG
    assert result["as_refused"] is True


DENIED_SYSCALLS = [
    # (name, arguments): harmless arguments; the filter must refuse before the kernel looks at them.
    ("socket", (socket.AF_INET, socket.SOCK_STREAM, 0)),
    ("connect", (0, 0, 0)),
    ("bind", (0, 0, 0)),
    ("execve", (0, 0, 0)),
    ("execveat", (-100, 0, 0, 0, 0)),
    ("ptrace", (0, 0, 0, 0)),
    ("mount", (0, 0, 0, 0, 0)),
    ("umount2", (0, 0)),
    ("unshare", (0,)),
    ("setns", (-1, 0)),
    ("open", (0, 0, 0)),
    ("openat", (-100, 0, 0, 0)),
    ("clone", (signal.SIGCHLD, 0, 0, 0, 0)),
    ("kill", (1, 0)),
    ("prctl", (39, 0, 0, 0, 0)),
    ("ioctl", (0, 0x541B, 0)),
    ("fcntl", (0, 1, 0)),
]


@pytest.mark.parametrize(("name", "args"), DENIED_SYSCALLS, ids=[name for name, _ in DENIED_SYSCALLS])
def test_seccomp_denies_syscall(program: bytes, name: str, args: tuple[int, ...]) -> None:
    """A syscall outside the allow-list fails with EPERM under seccomp alone, while getpid still works."""
    import pyseccomp  # type: ignore[import-untyped]  # libseccomp only resolves names here, in the parent

    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    getpid = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "getpid")
    assert number >= 0
    answer = in_child(
        lambda _: {"denied": raw_syscall(number, *args), "getpid": raw_syscall(getpid)},
        layers=SECCOMP,
        program=program,
    )
    assert answer["result"] == {"denied": errno.EPERM, "getpid": None}


def _start_thread_then_fork() -> dict[str, Any]:
    """Start and join a thread, then try to fork; report what happened to each."""
    ran = []
    try:
        worker = threading.Thread(target=lambda: ran.append(threading.get_native_id()))
        worker.start()
        worker.join()
        thread = "ran" if ran and ran[0] != threading.get_native_id() else "did not run"
    except RuntimeError as exc:
        thread = f"refused: {exc}"
    return {"thread": thread, "fork": attempt(os.fork)}


def test_threads_are_refused_by_default(program: bytes) -> None:
    """With the default program a child cannot start a thread, nor fork."""
    answer = in_child(lambda _: _start_thread_then_fork(), layers=FULL, program=program)
    assert answer["result"]["thread"].startswith("refused")
    assert answer["result"]["fork"] == errno.EPERM


def test_unavailable_layers_are_reported_not_raised(program: bytes) -> None:
    """A layer that cannot be applied is reported inactive with reason and errno; the others still apply."""
    policy = SandboxPolicy(read_only_paths=("/nonexistent/confine-test",))
    answer = in_child(lambda _: None, layers=FULL, program=None, policy=policy)
    report = SandboxReport.from_json(answer["report"])
    assert report.active_layers == (Layer.NO_NEW_PRIVS, Layer.NETNS, Layer.RLIMITS)
    landlock, seccomp = report.missing
    assert (landlock.layer, landlock.errno) == (Layer.LANDLOCK, errno.ENOENT)
    assert seccomp.layer is Layer.SECCOMP
    assert seccomp.reason is not None
    assert "no filter program" in seccomp.reason


def test_enforce_refuses_incomplete_report_in_strict_mode_only() -> None:
    """``enforce`` raises SandboxUnavailable for a missing layer if strict and returns it if permissive."""
    missing = LayerStatus(Layer.NETNS, False, reason="netns: unshare failed: EPERM", errno=errno.EPERM)
    report = SandboxReport(statuses=(LayerStatus(Layer.NO_NEW_PRIVS, True, "set"), missing), landlock_abi=7)
    assert enforce(report, SandboxMode.PERMISSIVE) == (missing,)
    with pytest.raises(SandboxUnavailable) as caught:
        enforce(report, SandboxMode.STRICT)
    assert (caught.value.layer, caught.value.errno) == ("netns", errno.EPERM)
    complete = SandboxReport(statuses=(LayerStatus(Layer.NO_NEW_PRIVS, True, "set"),), landlock_abi=7)
    assert enforce(complete, SandboxMode.STRICT) == ()


def test_landlock_detail_names_what_an_older_abi_cannot_enforce() -> None:
    """The Landlock detail for an older ABI lists each right that ABI cannot enforce, omitting none."""
    text = describe(3)
    assert text.startswith("ABI 3: fs(15 rights, read-only: none)")
    for missing in ("net tcp bind+connect (needs ABI 4)", "scope", "fs ioctl_dev (needs ABI 5)"):
        assert missing in text.split("NOT enforced at this ABI:")[1]


def test_probe_reports_this_machine_without_confining_the_caller() -> None:
    """``probe`` reports every layer available here, and the calling process keeps its network and files."""
    report = probe()
    assert report.complete
    assert report.landlock_abi == EXPECTED_LANDLOCK_ABI
    assert not get_no_new_privs()
    assert Path("/etc/passwd").read_text()


def test_public_names_are_exported() -> None:
    """Every name in ``workers.confine.__all__`` exists and none is listed twice."""
    exported = workers.confine.__all__
    assert len(exported) == len(set(exported))
    assert [n for n in exported if not hasattr(workers.confine, n)] == []


GUESTS = {
    # A data segment (copied without memfd, copy-on-write images are off) plus a recursive computation.
    "compute": """(module (memory 1) (data (i32.const 0) "\\2a")
        (func $fib (param i32) (result i32)
          (if (result i32) (i32.lt_u (local.get 0) (i32.const 2)) (then (local.get 0))
            (else (i32.add (call $fib (i32.sub (local.get 0) (i32.const 1)))
                           (call $fib (i32.sub (local.get 0) (i32.const 2)))))))
        (func (export "run") (result i32)
          (i32.add (i32.mul (i32.load8_u (i32.const 0)) (i32.const 100000)) (call $fib (i32.const 20)))))""",
    # A host function created in the child (wasmtime-py's trampoline is a module-level ctypes callback).
    "host_call": """(module (import "env" "add" (func $add (param i32 i32) (result i32)))
        (func (export "run") (result i32) (call $add (i32.const 40) (i32.const 2))))""",
    "unreachable": """(module (func (export "run") (result i32) unreachable))""",
    # Memory with a maximum that fits the reservation: no bounds check, the guard region faults (SIGSEGV).
    "out_of_bounds_guard": """(module (memory 1 1)
        (func (export "run") (result i32) (i32.load (i32.const 0x20000))))""",
    # Memory without a maximum: an explicit bounds check traps.
    "out_of_bounds_check": """(module (memory 1)
        (func (export "run") (result i32) (i32.load (i32.const 0x20000))))""",
    "stack_overflow": """(module (func $f (export "run") (result i32) (call $f)))""",
    "out_of_fuel": """(module (func (export "run") (result i32) (loop $l (br $l)) (i32.const 0)))""",
    # Grows by 64 MiB until refused; returns the final size in 64 KiB pages.
    "memory_grow": """(module (memory 0)
        (func (export "run") (result i32)
          (block $done (loop $l
            (br_if $done (i32.eq (memory.grow (i32.const 1024)) (i32.const -1)))
            (br $l)))
          (memory.size)))""",
}

#: What each guest must do in the confined child.
EXPECTED_OUTCOMES = {
    "compute": {"value": 42 * 100000 + 6765},
    "host_call": {"value": 42},
    "unreachable": {"trap": "UNREACHABLE"},
    "out_of_bounds_guard": {"trap": "MEMORY_OUT_OF_BOUNDS"},
    "out_of_bounds_check": {"trap": "MEMORY_OUT_OF_BOUNDS"},
    "stack_overflow": {"trap": "STACK_OVERFLOW"},
    "out_of_fuel": {"trap": "OUT_OF_FUEL"},
    "memory_grow": {"value": GuestLimits().memory_bytes // 65536},
}


def test_wasm_guests_run_fully_confined(program: bytes) -> None:
    """Modules compiled in the parent run in a child under all five layers and default limits: values come
    back, traps (unreachable, out of bounds, stack overflow, fuel) are reported, memory grows to the limit."""
    engine = make_engine()
    modules = {name: compile_module(engine, wasmtime.wat2wasm(text)) for name, text in GUESTS.items()}

    def run_one(name: str, module: wasmtime.Module) -> dict[str, Any]:
        limits = GuestLimits(fuel=10_000_000) if name == "out_of_fuel" else GuestLimits()
        store = make_store(engine, limits)
        imports: list[wasmtime.Func] = []
        if name == "host_call":
            i32 = wasmtime.ValType.i32()
            imports.append(wasmtime.Func(store, wasmtime.FuncType([i32, i32], [i32]), lambda a, b: a + b))
        try:
            instance = wasmtime.Instance(store, module, imports)
            run = instance.exports(store)["run"]
            assert isinstance(run, wasmtime.Func)
            return {"value": run(store)}
        except wasmtime.Trap as trap:
            return {"trap": trap.trap_code.name if trap.trap_code is not None else trap.message}
        except wasmtime.WasmtimeError as exc:
            return {"error": str(exc)}

    def body(_: None) -> dict[str, Any]:
        return {name: run_one(name, module) for name, module in modules.items()}

    answer = in_child(body, layers=FULL, program=program, channel="socketpair")
    assert SandboxReport.from_json(answer["report"]).complete
    assert answer["result"] == EXPECTED_OUTCOMES

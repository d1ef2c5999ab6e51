"""The confined child: what runs between ``fork`` and ``os._exit`` for one guest job.

Order matters and never changes: leave the parent's session and process group, die with the parent, point
stdio at /dev/null, close every inherited socket, pipe and writable file except the channel, clear the
environment, apply the sandbox policy, report it, refuse in strict mode when a layer is missing, and only
then touch the guest. Everything needed afterwards was imported and prepared by the parent before fork: the
child opens no file, imports no module and creates no socket once confined. A spare child (``spare_main``,
``workers.spare``) takes the same steps in the same order, forked before its job exists: it waits for the
job after the layers no job sets (no_new_privs, network namespace) and applies the rest once it has it.
Every outcome, including our own bugs, is sent to the parent as a message; the child never returns into the
caller's code.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
from dataclasses import dataclass
from typing import NoReturn

import wasmtime

from sync_format.errors import GuestError, GuestTrap, SandboxUnavailable, SyncError
from workers.channel import Channel, ChannelClosed, ProtocolViolation
from workers.confine import SandboxPolicy, SandboxReport, apply_policy, enforce, set_pdeathsig
from workers.confine.apply import EARLY_LAYERS, LATE_LAYERS
from workers.confine.descriptors import isolate_descriptors
from workers.engine import GuestLimits
from workers.guest_runner import run_guest
from workers.host_abi import ERR_REQUEST_FAILED

#: Exit status of a child that hit a bug of ours (EX_SOFTWARE).
EXIT_INTERNAL = 70


@dataclass(frozen=True)
class ChildJob:
    """Everything the child needs, prepared by the parent before fork.

    Attributes:
        engine: The engine the module was compiled with.
        module: The compiled guest.
        payload: The archive's current payload.
        limits: The run's budgets.
        policy: The confinement to apply.
        seccomp_program: The BPF program the parent built, or None when it could not.
        context: The archive's ``context.json`` bytes (empty when absent), for ABI v2 ``context_read``.
        module_key: The module's cache key (``ModuleCache.load_keyed``), or None: with a key, a zygote's
            child that already holds this module gets only the key, not the bytes (``workers.zygote``).
    """

    engine: wasmtime.Engine
    module: wasmtime.Module
    payload: bytes
    limits: GuestLimits
    policy: SandboxPolicy
    seccomp_program: bytes | None
    context: bytes = b""
    module_key: str | None = None


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class ChannelIO:
    """``GuestIO`` in the child: every request goes to the parent, which decides and performs it."""

    def __init__(self, channel: Channel, max_response_size: int) -> None:
        self._channel = channel
        self._max = max_response_size

    def http_request(self, url: str, method: str) -> _Reply:
        """Ask the parent to perform a request.

        Args:
            url: The guest's URL.
            method: The guest's method.

        Returns:
            The parent's reply (a status and body, or a negative ABI code).
        """
        self._channel.send_json({"type": "http", "url": url, "method": method})
        return self._reply()

    def http_send(self, url: str, method: str, headers: bytes, body: bytes) -> _Reply:
        """Ask the parent to perform a version-2 request (header block and body travel as DATA).

        Args:
            url: The guest's URL.
            method: The guest's method.
            headers: The guest's raw header block.
            body: The request body.

        Returns:
            The parent's reply, with the response headers.
        """
        message = {"type": "http", "url": url, "method": method, "v": 2}
        self._channel.send_json({**message, "headers_size": len(headers), "body_size": len(body)})
        self._channel.send_data(headers)
        self._channel.send_data(body)
        return self._reply()

    def log(self, line: str) -> None:
        """Send one already escaped and cut guest log line to the parent.

        Args:
            line: The line.
        """
        self._channel.send_json({"type": "log", "line": line})

    def _reply(self) -> _Reply:
        reply = self._channel.recv_json()
        size = reply.get("size", 0)
        status = reply.get("status")
        if reply.get("type") != "http_response" or not isinstance(status, int):
            return _Reply(ERR_REQUEST_FAILED, b"")
        if not isinstance(size, int) or not 0 <= size <= self._max:
            raise ProtocolViolation("response body size out of range")
        raw_headers = reply.get("headers", [])
        headers = tuple((str(h[0]), str(h[1])) for h in raw_headers if isinstance(h, list) and len(h) == 2)
        return _Reply(status, self._channel.recv_data(size), headers)


def child_main(sock_fd: int, job: ChildJob) -> NoReturn:
    """Run one job in the freshly forked child and exit; never returns.

    Args:
        sock_fd: The child's end of the socketpair.
        job: The prepared job.
    """
    status = EXIT_INTERNAL
    channel: Channel | None = None
    try:
        channel = _enter(sock_fd)
        status = _run(channel, job, apply_policy(job.policy, job.seccomp_program))
    except SyncError as exc:
        status = _send_error(channel, exc)
    except (ChannelClosed, ProtocolViolation):
        status = EXIT_INTERNAL
    except BaseException as exc:  # noqa: BLE001  (last resort: report our own bug to the parent, then exit)
        status = _send_error(channel, GuestError(f"internal error in the sandbox child: {exc!r}"))
    os._exit(status)


def spare_main(
    sock_fd: int,
    engine: wasmtime.Engine,
    policy: SandboxPolicy,
    seccomp_program: bytes | None,
    *,
    handed: bool = False,
    held: dict[str, wasmtime.Module] | None = None,
    rehearsal: ChildJob | None = None,
) -> NoReturn:
    """Be a spare child: prepare, wait for one job on the channel, confine fully, run it and exit.

    The same steps as ``child_main`` in the same order, split at the job's arrival: leaving the session,
    the descriptors, the environment and the ``EARLY_LAYERS`` (no_new_privs, the empty network namespace)
    come first; the job (``workers.spare.send_job``: limits, RLIMIT_CPU, the serialized module or the key of
    a ``held`` one, payload and context) is then read and its module deserialized from the parent's bytes,
    and only then the remaining layers (rlimits, Landlock, seccomp) are applied, reported and enforced before
    the guest is touched. The channel closing before a job arrives (the spare was discarded) ends the child
    quietly.

    Args:
        sock_fd: The child's end of the socketpair; with ``handed``, the control socket of the zygote that
            forked it instead (``workers.zygote``), over which the channel's descriptor arrives; the control
            socket is closed as soon as it did.
        engine: The engine the parent's modules were compiled with.
        policy: The runtime's policy; the job sets its RLIMIT_CPU.
        seccomp_program: The BPF program the parent built, or None when it could not.
        handed: The channel is handed over by a zygote (see ``sock_fd``).
        held: Modules the zygote loaded before forking this child, by key; a job may name one instead of
            sending its bytes. Emptied once the job arrived (``_receive_job``), before the late layers.
        rehearsal: The built-in warm-up job (``workers.runtime.warm_up_paths``, with a key): taken through
            the job path once (``rehearse``, by key) after the early layers and before the channel is taken,
            so that the pages a job touches are copied here, off its path, instead of fault by fault during
            it. Only ever our own constant module; no archive's guest runs before the late layers.
    """
    status = EXIT_INTERNAL
    channel: Channel | None = None
    try:
        first = _enter(sock_fd)
        channel = None if handed else first  # errors never go to a zygote's control socket
        early = apply_policy(policy, seccomp_program, only=EARLY_LAYERS)
        if rehearsal is not None:
            rehearse(engine, policy, seccomp_program, rehearsal, by_key=True)
        channel = _handed_channel(first) if handed else first
        job = _receive_job(channel, engine, policy, seccomp_program, held)
        late = apply_policy(job.policy, seccomp_program, only=LATE_LAYERS)
        report = SandboxReport(statuses=early.statuses + late.statuses, landlock_abi=late.landlock_abi)
        status = _run(channel, job, report)
    except SyncError as exc:
        status = _send_error(channel, exc)
    except (ChannelClosed, ProtocolViolation):
        status = EXIT_INTERNAL
    except BaseException as exc:  # noqa: BLE001  (last resort: report our own bug to the parent, then exit)
        status = _send_error(channel, GuestError(f"internal error in the sandbox child: {exc!r}"))
    os._exit(status)


def _handed_channel(control: Channel) -> Channel:
    """Receive the job's channel descriptor from the zygote and close the control socket (the child must
    not keep a line to the zygote)."""
    _, fds, _, _ = socket.recv_fds(control.sock, 16, 1)
    control.sock.close()
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ChannelClosed("the zygote handed no channel")
    return Channel(socket.socket(fileno=fds[0]))


def rehearse(
    engine: wasmtime.Engine,
    policy: SandboxPolicy,
    seccomp_program: bytes | None,
    job: ChildJob,
    *,
    by_key: bool = False,
) -> None:
    """Take ``job`` through a spare's job path once in this process, over a local socketpair, unconfined.

    For every process that forks children (``workers.runtime.warm_up_paths``), which never runs a job itself:
    children forked afterwards inherit the interpreter's specialised code and the allocator's state for the
    whole path (channel, job decoding, module deserialisation, guest run, result) instead of each paying for
    it on its own copy-on-write pages. ``job`` must be the built-in warm-up guest; nothing here applies a
    layer.

    Args:
        engine: The engine.
        policy: The policy children will get.
        seccomp_program: The program children will load.
        job: The warm-up job (``workers.runtime.warm_up_paths`` builds it).
        by_key: Send the module by its key, as held (``job.module_key`` must be set): the path of a zygote's
            child that holds its job's module, without deserialising it.
    """
    from workers.spare import send_job  # noqa: PLC0415  (the parent's half, only for the rehearsal)

    held = {job.module_key: job.module} if by_key and job.module_key is not None else None
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with parent_end, child_end:
        parent, child = Channel(parent_end), Channel(child_end)
        send_job(parent, job, module_held=held is not None)
        received = _receive_job(child, engine, policy, seccomp_program, held)
        _run(child, received, SandboxReport(statuses=()))
        parent.recv_json()  # the report
        result = parent.recv_json()
        if result.get("size") is not None:
            parent.recv_data(int(result["size"]))


def _enter(sock_fd: int) -> Channel:
    """The first steps of every child: own session, die with the parent, only the channel, no environment.

    Every object inherited from the parent is moved out of the garbage collector's reach (``gc.freeze``): a
    collection in the child would otherwise write to the header of each one it visits, copying the parent's
    pages one fault at a time, for objects that live until the child exits anyway.
    """
    gc.freeze()
    os.setsid()
    set_pdeathsig(signal.SIGKILL)
    isolate_descriptors(sock_fd)
    os.environ.clear()
    return Channel(socket.socket(fileno=sock_fd))


def _receive_job(
    channel: Channel,
    engine: wasmtime.Engine,
    policy: SandboxPolicy,
    seccomp_program: bytes | None,
    held: dict[str, wasmtime.Module] | None = None,
) -> ChildJob:
    """Read the job a spare was sent (the parent is trusted; sizes were set by it).

    ``held`` are the modules a zygote's child inherited (``workers.zygote``): a job naming one of them by its
    key comes without the module's bytes. Whatever the job, ``held`` is emptied before this returns, so the
    child keeps no module but its own job's (the others' code is unmapped when their last reference goes).
    """
    message = channel.recv_json()
    if message["type"] != "job":
        raise ProtocolViolation(f"expected a job, got {message['type']!r}")
    key = message.get("module_key")
    try:
        if key is None:
            module = wasmtime.Module.deserialize(engine, channel.recv_data(int(message["module_size"])))
        elif held is not None and key in held and message["module_size"] == 0:
            module = held[key]
        else:
            raise ProtocolViolation("the job names a module this child does not hold")
    finally:
        if held is not None:
            held.clear()
    payload = channel.recv_data(int(message["payload_size"]))
    context = channel.recv_data(int(message["context_size"]))
    return ChildJob(
        engine=engine,
        module=module,
        payload=payload,
        limits=GuestLimits(**message["limits"]),
        policy=policy.with_cpu_seconds(int(message["cpu_seconds"])),
        seccomp_program=seccomp_program,
        context=context,
        module_key=key,
    )


def _run(channel: Channel, job: ChildJob, report: SandboxReport) -> int:
    """Report the confinement, refuse in strict mode when incomplete, run the guest, send its result."""
    channel.send_json({"type": "report", "report": report.to_json()})
    enforce(report, job.policy.mode)
    run = run_guest(
        job.engine,
        job.module,
        job.payload,
        job.limits,
        ChannelIO(channel, job.limits.max_response_size),
        job.context,
    )
    channel.send_json(
        {
            "type": "result",
            "entry": run.entry,
            "fuel_used": run.fuel_used,
            "requests": run.requests,
            "duration_ms": run.duration_ms,
            "size": None if run.new_payload is None else len(run.new_payload),
            "unchanged": run.unchanged,
            "log_lines": run.log_lines,
        }
    )
    if run.new_payload is not None:
        channel.send_data(run.new_payload)
    return 0


def _send_error(channel: Channel | None, exc: SyncError) -> int:
    if channel is None:
        return EXIT_INTERNAL
    message: dict[str, object] = {"type": "error", "code": exc.code, "message": exc.message}
    if isinstance(exc, GuestTrap):
        message["trap_code"] = exc.trap_code
    if isinstance(exc, SandboxUnavailable):
        message["layer"] = exc.layer
        message["errno"] = exc.errno
    try:
        channel.send_json(message)
    except (ChannelClosed, ProtocolViolation):
        return EXIT_INTERNAL
    return 0

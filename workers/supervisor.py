"""The supervisor: fork a fresh confined child per guest job and own its clock (CONTRIBUTING.md).

The parent forks, keeps its end of a socketpair and waits in slices: each slice it may call a heartbeat
(claims in Redis stay alive while a job runs), and at the job's deadline it SIGKILLs the child's whole
process group — signals never interrupt running wasm, so the deadline is the parent's, not the child's.
While waiting it serves the child's requests: HTTP is performed here, by ``Egress``, after the allow-list,
DNS and private-address checks; the child has no network at all. The new payload arrives as DATA frames
and is spooled to a temp file, capped at the policy's maximum. ABI v2 requests carry a header block and a
body (sizes checked before reading); their headers pass ``guest_http.prepare_headers`` here, where granted
operator secrets are filled in. A request never raises out of the session: an exception from the requester
(which promises none) is the guest's -5 ``egress_failed``, logged with its class only. Every request counts
against the policy's ``max_requests`` here, those refused before egress included; past it a call is -5 at
once and unlogged, and only the first ``MAX_EGRESS_ERRORS`` error codes of a run are kept. Guest ``log``
lines are counted and cut again here (the child is not trusted to have done it), kept in the outcome and
written to the worker log. The child is always reaped with ``wait4``
so its exit status and resource use are recorded. With a ``SpareChild`` the child may have been forked
ahead of its job (``workers.spare``); with a ``Zygote`` a small separate process forks it
(``workers.zygote``): the job is then sent to it, this process still kills its group at the deadline, and
the zygote reaps it on request and returns its exit status and rusage. Everything above holds the same.

Fork safety: the caller must not run other threads that could hold a lock the child needs (wasmtime's,
the allocator's, Python's). Only daemon threads are tolerated: egress starts them itself (a DNS lookup
abandoned at its timeout, a deadline watchdog) and they touch nothing the child uses. The engine never
compiles in parallel and the child never compiles.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from sync_format.errors import (
    GuestError,
    GuestOutOfFuel,
    GuestTimeout,
    GuestTrap,
    PolicyDenied,
    SandboxUnavailable,
    SyncError,
)
from sync_format.escape import escape_text
from workers.addresses import Resolver, system_resolver
from workers.channel import Channel, ChannelClosed, ChannelTimeout, ProtocolViolation
from workers.child import ChildJob, child_main
from workers.confine import SandboxReport
from workers.egress import STATUS_BODY_FAILED, STATUS_FAILED, Egress, EgressPolicy, HttpResult
from workers.guest_http import HeaderRefusal, prepare_headers
from workers.host_abi import (
    ERR_BAD_REQUEST,
    MAX_LOG_LINE,
    MAX_LOG_LINES,
    MAX_REQUEST_BODY,
    MAX_REQUEST_HEADERS_BYTES,
    MAX_RESPONSE_HEADERS_BYTES,
)
from workers.spare import SpareChild, send_job
from workers.zygote import Zygote

log = logging.getLogger(__name__)

#: Seconds between heartbeats while a job runs.
HEARTBEAT_INTERVAL = 1.0
#: Longest error message taken from the child, in characters (escapes included).
CHILD_MESSAGE_LIMIT = 500
#: Payloads up to this size stay in memory while staged; larger ones spill to a temp file.
SPOOL_IN_MEMORY = 8 * 1024 * 1024
#: Error codes kept per run in ``egress_errors`` (the first ones; a guest chooses how many calls fail).
MAX_EGRESS_ERRORS = 64


@dataclass(frozen=True)
class ChildUsage:
    """How the child ended and what it used.

    Attributes:
        exit_status: ``os.waitstatus_to_exitcode`` of the child (negative: killed by that signal).
        user_seconds: CPU time in user mode.
        system_seconds: CPU time in kernel mode.
        max_rss_kib: Peak resident set size in KiB.
    """

    exit_status: int
    user_seconds: float
    system_seconds: float
    max_rss_kib: int


@dataclass
class SandboxOutcome:
    """The result of one supervised run.

    Attributes:
        error: Why the run failed, or None when the guest completed.
        report: The child's confinement report (None if it died before sending one).
        entry: The entry point that ran.
        new_payload: The staged new payload (file positioned at 0), or None when nothing was written.
        new_payload_size: Its size in bytes.
        fuel_used: Fuel the guest consumed.
        requests: HTTP requests the guest made.
        egress_errors: ``error_code`` of each request that got no response (connect, DNS, timeout, refused
            headers...), the first ``MAX_EGRESS_ERRORS`` of them.
        egress: Each refused or failed request (``rule``, ``host``, ``code``, ``url``, ``reason``; escaped).
        duration_ms: Wall time from fork to reap.
        usage: The child's exit status and resource use.
        unchanged: The guest said "nothing changed" (ABI v2); ``new_payload`` is then None.
        log: The guest's ``log`` lines (escaped, at most ``MAX_LOG_LINES``, then one line counting the rest).
    """

    error: SyncError | None = None
    report: SandboxReport | None = None
    entry: str | None = None
    new_payload: IO[bytes] | None = None
    new_payload_size: int = 0
    fuel_used: int = 0
    requests: int = 0
    egress_errors: list[str] = field(default_factory=list)
    egress: list[dict[str, object]] = field(default_factory=list)
    duration_ms: float = 0.0
    usage: ChildUsage | None = None
    unchanged: bool = False
    log: list[str] = field(default_factory=list)
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        """Release the staged payload."""
        if self.new_payload is not None and not self._closed:
            self.new_payload.close()
            self._closed = True


class Requester(Protocol):
    """What performs a guest's requests: ``Egress``, or ``syncctl guest test``'s fixtures."""

    #: Each refused or failed request so far (escaped), for the status record.
    failures: list[dict[str, object]]

    def request(
        self,
        url: str,
        method: str,
        *,
        deadline: float,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        secret_headers: frozenset[str] = frozenset(),
        secret_hosts: tuple[tuple[str, ...], ...] = (),
    ) -> HttpResult:
        """Perform one request (see ``Egress.request``)."""
        ...


@dataclass(frozen=True)
class Grants:
    """Secrets a guest's requests may use: names the manifest asks for, values and destinations the operator
    supplies (a secret goes only where the operator bound it, whatever the manifest lists).

    Attributes:
        allow_env: The manifest's ``permissions.allow_env``.
        secrets: Operator-supplied values by name (``Settings.guest_secrets``).
        bindings: Operator-supplied host patterns by name (``Settings.guest_secret_hosts``).
    """

    allow_env: tuple[str, ...] = ()
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    bindings: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def run_in_sandbox(
    job: ChildJob,
    egress_policy: EgressPolicy,
    *,
    heartbeat: Callable[[], None] | None = None,
    resolver: Resolver = system_resolver,
    grants: Grants | None = None,
    requester: Requester | None = None,
    spare: SpareChild | None = None,
    zygote: Zygote | None = None,
) -> SandboxOutcome:
    """Run one guest job in a fresh confined child.

    Args:
        job: The prepared job (module loaded, payload read, policy and limits set).
        egress_policy: What the guest may fetch, performed here in the parent.
        heartbeat: Called about every ``HEARTBEAT_INTERVAL`` seconds while the job runs.
        resolver: Name resolution for egress.
        grants: Secrets the guest's v2 request headers may reference.
        requester: Performs the requests instead of an ``Egress`` over ``egress_policy`` (fixtures).
        spare: Where a child forked ahead waits (``workers.spare``): the job goes to it when it fits, and
            the next spare is forked once this job's child is reaped.
        zygote: The sandbox zygote (``workers.zygote``): when given and the job fits its policy, it forks
            the child instead of this process; a zygote that cannot serve fails the job as
            ``sandbox_unavailable`` (never unconfined).

    Returns:
        The outcome; failures of the guest or the sandbox are in ``error``, never raised.

    Raises:
        RuntimeError: The caller runs other non-daemon threads (forking would be unsafe).
    """
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    if others:
        raise RuntimeError(f"run_in_sandbox forks: stop these threads first: {[t.name for t in others]}")
    started = time.monotonic()
    deadline = started + job.limits.timeout_seconds
    outcome = SandboxOutcome()
    by_zygote = zygote is not None and zygote.serves(job.policy, job.seccomp_program)
    keep: tuple[str, bytes] | None = None
    if zygote is not None and by_zygote:
        try:
            pid, parent_sock, keep = _from_zygote(zygote, job, deadline)
        except SandboxUnavailable as exc:
            outcome.error = exc
            outcome.duration_ms = (time.monotonic() - started) * 1000
            return outcome
    else:
        taken = spare.take(job, deadline) if spare is not None else None
        if taken is not None:
            pid, parent_sock = taken
        else:
            parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            pid = os.fork()
            if pid == 0:  # pragma: no cover  (the child's coverage is the parent's assertions)
                parent_sock.close()
                child_main(child_sock.detach(), job)
            child_sock.close()
    performer = requester or Egress(egress_policy, resolver=resolver, heartbeat=heartbeat)
    session = _Session(
        Channel(parent_sock), outcome, job, performer, grants or Grants(), egress_policy.max_requests
    )
    try:
        session.serve(deadline, heartbeat)
    finally:
        outcome.egress = list(performer.failures)
        parent_sock.close()
        if zygote is not None and by_zygote:
            outcome.usage = _reap_by_zygote(zygote, pid, keep)
            if outcome.usage is None and outcome.error is None and outcome.entry is None:
                outcome.error = GuestError("the sandbox zygote died while the guest ran; it is restarted")
        else:
            outcome.usage = _reap(pid, kill=True)
        outcome.duration_ms = (time.monotonic() - started) * 1000
    if spare is not None and not by_zygote:
        try:
            spare.refill()  # the next job's child prepares while this outcome is committed and reported
        except (RuntimeError, OSError) as exc:  # the next job forks its own child; this outcome stands
            log.warning("sandbox spare child not forked error=%s", exc)
    if outcome.error is None and outcome.entry is None:
        outcome.error = _death_cause(outcome.usage, job.limits.timeout_seconds)
    if outcome.error is not None:
        outcome.close()
        outcome.new_payload = None
    return outcome


class _Session:
    """Parent side of the protocol for one child."""

    def __init__(
        self,
        channel: Channel,
        outcome: SandboxOutcome,
        job: ChildJob,
        egress: Requester,
        grants: Grants,
        max_requests: int,
    ) -> None:
        self.channel = channel
        self.outcome = outcome
        self.job = job
        self.egress = egress
        self.grants = grants
        self.max_requests = max_requests
        self.calls = 0
        self.log_lines = 0

    def serve(self, deadline: float, heartbeat: Callable[[], None] | None) -> None:
        while True:
            slice_end = min(deadline, time.monotonic() + HEARTBEAT_INTERVAL)
            try:
                message = self.channel.recv_json(slice_end)
            except ChannelTimeout:
                if time.monotonic() >= deadline:
                    self.outcome.error = self._timeout()
                    return
                if heartbeat is not None:
                    heartbeat()
                continue
            except ChannelClosed:
                return  # the child died; its exit status says why
            except ProtocolViolation as exc:
                self.outcome.error = GuestError(f"sandbox child broke the protocol: {exc}")
                return
            try:
                if self._handle(message, deadline):
                    return
            except ChannelTimeout:
                self.outcome.error = self._timeout()
                return
            except (ChannelClosed, ProtocolViolation) as exc:
                self.outcome.error = GuestError(f"sandbox channel failed: {exc}")
                return

    def _timeout(self) -> GuestTimeout:
        seconds = self.job.limits.timeout_seconds
        return GuestTimeout(f"guest ran past its deadline of {seconds:g} s", seconds=seconds)

    def _handle(self, message: dict[str, Any], deadline: float) -> bool:
        """Handle one message; True when the run is over."""
        kind = message["type"]
        if kind == "report":
            self.outcome.report = SandboxReport.from_json(message["report"])
            missing = self.outcome.report.missing
            if missing:
                log.warning(
                    "sandbox incomplete mode=%s missing=%s",
                    self.job.policy.mode.value,
                    ",".join(f"{s.layer.value}({s.reason})" for s in missing),
                )
            return False
        if kind == "http":
            self._http(message, deadline)
            return False
        if kind == "log":
            self._log(message)
            return False
        if kind == "result":
            self._result(message, deadline)
            return True
        if kind == "error":
            self.outcome.error = _error_from_child(message, self.job.limits.timeout_seconds)
            return True
        raise ProtocolViolation(f"unknown message type {kind!r}")

    def _http(self, message: dict[str, Any], deadline: float) -> None:
        """One guest request, counted against the run's budget whether it is refused here, by egress or not.

        Calls past ``max_requests`` are answered -5 ``too_many_requests`` at once and without a log line: a
        guest looping on a refused call must not write the worker's log or the status record without end.
        """
        url, method = message.get("url"), message.get("method")
        if not isinstance(url, str) or not isinstance(method, str):
            raise ProtocolViolation("http request without url or method")
        v2 = message.get("v") == 2
        # A v2 request's header block and body follow on the channel: read even when refused, to stay in step.
        block, body = self._v2_parts(message, deadline) if v2 else (b"", b"")
        self.calls += 1
        if self.calls > self.max_requests:
            result = HttpResult(STATUS_FAILED, error_code="too_many_requests", reason="request budget spent")
        elif v2:
            result = self._http_v2(url, method, block, body, deadline)
        else:
            result = self._perform(url, method, deadline)
        if result.error_code is not None and len(self.outcome.egress_errors) < MAX_EGRESS_ERRORS:
            self.outcome.egress_errors.append(result.error_code)
        reply: dict[str, Any] = {"type": "http_response", "status": result.status, "size": len(result.body)}
        if v2:
            reply["headers"] = [list(h) for h in result.headers]
        self.channel.send_json(reply)
        self.channel.send_data(result.body)

    def _v2_parts(self, message: dict[str, Any], deadline: float) -> tuple[bytes, bytes]:
        """A v2 request's header block and body, their sizes checked before reading."""
        sizes = message.get("headers_size"), message.get("body_size")
        limits = MAX_REQUEST_HEADERS_BYTES, MAX_REQUEST_BODY
        if not all(isinstance(n, int) and 0 <= n <= cap for n, cap in zip(sizes, limits, strict=True)):
            raise ProtocolViolation(f"http request sizes {sizes!r} out of range")
        block = self.channel.recv_data(int(sizes[0] or 0), deadline)
        body = self.channel.recv_data(int(sizes[1] or 0), deadline)
        return block, body

    def _http_v2(self, url: str, method: str, block: bytes, body: bytes, deadline: float) -> HttpResult:
        """A v2 request: check the headers, fill in granted secrets, perform it."""
        prepared = prepare_headers(
            block,
            allow_env=self.grants.allow_env,
            secrets=self.grants.secrets,
            url=url,
            bindings=self.grants.bindings,
        )
        if isinstance(prepared, HeaderRefusal):
            log.warning("egress request refused error=%s reason=%s", prepared.error_code, prepared.reason)
            return HttpResult(ERR_BAD_REQUEST, error_code=prepared.error_code, reason=prepared.reason)
        if prepared.secrets_used:
            log.info("egress request uses secrets names=%s", ",".join(prepared.secrets_used))
        result = self._perform(
            url,
            method,
            deadline,
            headers=prepared.headers,
            body=body,
            secret_headers=prepared.secret_names,
            secret_hosts=prepared.secret_hosts,
        )
        if result.status == ERR_BAD_REQUEST:  # reserved for header refusals; egress never says it
            return HttpResult(STATUS_FAILED, error_code=result.error_code, reason=result.reason)
        size = sum(len(name) + len(value) + 3 for name, value in result.headers)
        if size > MAX_RESPONSE_HEADERS_BYTES:
            # Forwarded as is, they would overflow the reply's control message and end the whole run.
            reason = f"response headers of {size} bytes, at most {MAX_RESPONSE_HEADERS_BYTES}"
            return HttpResult(STATUS_BODY_FAILED, error_code="headers_too_large", reason=reason)
        return result

    def _perform(
        self,
        url: str,
        method: str,
        deadline: float,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        secret_headers: frozenset[str] = frozenset(),
        secret_hosts: tuple[tuple[str, ...], ...] = (),
    ) -> HttpResult:
        """One request by the requester, which promises never to raise for what a guest or server causes.

        The backstop for a broken promise: an exception here would end the whole run (and, before the
        outcome exists, the refresh) on a server's say-so, so it becomes the guest's -5 ``egress_failed``.
        Only the exception's class is logged: its text may quote the server or the URL's secrets.
        """
        try:
            return self.egress.request(
                url,
                method,
                deadline=deadline,
                headers=headers,
                body=body,
                secret_headers=secret_headers,
                secret_hosts=secret_hosts,
            )
        except Exception as exc:  # noqa: BLE001  (the backstop itself; the class is logged below)
            # Not log.exception: the traceback's text is what must stay out of the log.
            name = type(exc).__name__
            log.error("egress request failed unexpectedly error=egress_failed exception=%s", name)  # noqa: TRY400
            return HttpResult(STATUS_FAILED, error_code="egress_failed", reason="egress failed unexpectedly")

    def _log(self, message: dict[str, Any]) -> None:
        """Keep one guest log line: cut, escaped again and counted here (the child is not trusted)."""
        self.log_lines += 1
        if self.log_lines <= MAX_LOG_LINES:
            raw = str(message.get("line", ""))[: 8 * MAX_LOG_LINE]  # escapes grow a line up to 6x
            line = "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in raw)
            self.outcome.log.append(line)
            log.info("guest log line=%s", line)
        elif self.log_lines == MAX_LOG_LINES + 1:
            self.outcome.log.append(f"[more than {MAX_LOG_LINES} lines: the rest were dropped]")

    def _result(self, message: dict[str, Any], deadline: float) -> None:
        size = message.get("size")
        out = self.outcome
        out.entry = str(message.get("entry"))
        out.fuel_used = int(message.get("fuel_used", 0))
        out.requests = int(message.get("requests", 0))
        out.unchanged = message.get("unchanged") is True
        if out.unchanged and size is not None:
            raise ProtocolViolation("a payload sent after the guest said unchanged")
        if size is None:
            return
        if not isinstance(size, int) or not 0 <= size <= self.job.limits.max_payload_size:
            raise ProtocolViolation(f"new payload size {size!r} out of range")
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115  (closed by the outcome)
        self.channel.recv_data(size, deadline, sink=spool)
        spool.seek(0)
        out.new_payload = spool
        out.new_payload_size = size


def _error_from_child(message: dict[str, Any], timeout: float) -> SyncError:
    code = message.get("code")
    # Whatever the child says may quote the guest: escaped and bounded before it reaches a status or a log.
    text = escape_text(message.get("message", "guest failed"), CHILD_MESSAGE_LIMIT)
    if code == GuestTrap.code:
        trap = message.get("trap_code")
        return GuestTrap(text, trap_code=trap if isinstance(trap, str) else None)
    if code == GuestOutOfFuel.code:
        return GuestOutOfFuel(text)
    if code == GuestTimeout.code:
        return GuestTimeout(text, seconds=timeout)
    if code == PolicyDenied.code:
        return PolicyDenied(text, rule="guest")
    if code == SandboxUnavailable.code:
        errno = message.get("errno")
        layer = str(message.get("layer", "sandbox"))
        # The child's message is already "<layer>: <reason>"; rebuilding the error must not prefix it again.
        return SandboxUnavailable(
            layer, text.removeprefix(f"{layer}: "), errno=errno if isinstance(errno, int) else None
        )
    return GuestError(text)


def _death_cause(usage: ChildUsage | None, timeout: float) -> SyncError:
    """Why a child ended without sending a result."""
    status = usage.exit_status if usage is not None else None
    if status == -signal.SIGXCPU:
        return GuestTimeout("guest used up its CPU-time limit", seconds=timeout)
    if status is not None and status < 0:
        name = signal.Signals(-status).name
        return GuestTrap(f"sandbox child died from {name}", trap_code=f"signal:{name}")
    return GuestError(f"sandbox child exited with status {status} without a result")


def _from_zygote(
    zygote: Zygote, job: ChildJob, deadline: float
) -> tuple[int, socket.socket, tuple[str, bytes] | None]:
    """A child from the zygote, already sent ``job``: its pid, the parent's end of its channel, and the module
    for the zygote to keep when its child did not hold it (given with the reap request)."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        spawned = zygote.spawn(child_sock, job.module_key)
    except BaseException:
        parent_sock.close()
        raise
    finally:
        child_sock.close()
    keep = None
    if job.module_key is not None and not spawned.module_held:
        keep = (job.module_key, bytes(job.module.serialize()))
    # A child that died at once: the session sees the channel closed, its exit status says why.
    with contextlib.suppress(ChannelClosed):
        send_job(Channel(parent_sock), job, deadline, module_held=spawned.module_held)
    return spawned.pid, parent_sock, keep


def _reap_by_zygote(zygote: Zygote, pid: int, keep: tuple[str, bytes] | None = None) -> ChildUsage | None:
    """Kill the zygote's child (the group first) and have the zygote reap it; None when the zygote is gone."""
    reaped = zygote.reap(pid, kill=True, keep=keep)
    if reaped is None:
        return None
    status, user, system, max_rss = reaped
    return ChildUsage(exit_status=status, user_seconds=user, system_seconds=system, max_rss_kib=max_rss)


def _reap(pid: int, *, kill: bool) -> ChildUsage:
    """Kill the child's process group if asked and it is still there, then wait for it."""
    if kill:
        # The group goes first (anything the child started); the pid too, in case the child was killed
        # before its setsid() made the group exist.
        for kill_call in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill_call(pid, signal.SIGKILL)
    _, status, rusage = os.wait4(pid, 0)
    return ChildUsage(
        exit_status=os.waitstatus_to_exitcode(status),
        user_seconds=rusage.ru_utime,
        system_seconds=rusage.ru_stime,
        max_rss_kib=rusage.ru_maxrss,
    )

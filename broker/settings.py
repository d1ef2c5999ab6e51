"""``Settings``: every knob of sync, built once from flags and the environment and passed down.

Only this module reads the environment (CONTRIBUTING.md). Defaults are named constants with their unit.
Components receive a ``Settings`` (or the few fields they need); nothing reads configuration from globals.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from broker.retry import DEFAULT_BASE_DELAY, DEFAULT_MAX_DELAY, DEFAULT_MAX_RETRIES
from sync_format.errors import SyncError
from sync_format.hosts import parse_pattern, parse_private_entry

#: Default WebDAV port of the reference's ``sync-mount``.
DEFAULT_PORT = 4918
#: Default bind address: loopback only.
DEFAULT_HOST = "127.0.0.1"
#: Sandbox mode when none is given: refuse to run guests without every confinement layer.
DEFAULT_SANDBOX = "strict"
#: Guest wall-clock budget in seconds when a manifest's ``policy.timeout`` is 0.
DEFAULT_GUEST_TIMEOUT = 30.0
#: Upper bound on any guest's wall-clock budget, in seconds, whatever its manifest asks.
MAX_GUEST_TIMEOUT = 600.0
#: Largest payload a guest may produce, in bytes.
DEFAULT_MAX_PAYLOAD = 256 * 1024 * 1024

#: Port of a worker's metrics and health endpoint: 0 means no endpoint.
DEFAULT_METRICS_PORT = 0
#: Address a worker's metrics endpoint binds: loopback only (a container passes 0.0.0.0).
DEFAULT_METRICS_HOST = "127.0.0.1"
#: Margin of the broker's visibility timeout over what it must outlast, in seconds (see
#: ``broker.celery_app.visibility_timeout``).
DEFAULT_VISIBILITY_MARGIN = 30.0
#: Seconds a running job's claim outlives its last heartbeat (``broker.claims.RUNNING_CLAIM_TTL_MS``).
DEFAULT_RUNNING_CLAIM_TTL = 30.0
#: Seconds an archive's claim is kept after a refresh that failed or changed nothing: a guest that always
#: fails, read 20 times a second, ran 1,143 times a minute without it (one job per read once the last ended).
DEFAULT_REFRESH_COOLDOWN = 30.0
#: Longest cooldown accepted (reads merge for that long; an operator's ``syncctl refresh`` does not wait).
MAX_REFRESH_COOLDOWN = 3600.0
#: Bytes all of one run's guest HTTP responses may add up to (each one is also capped on its own).
DEFAULT_EGRESS_MAX_TOTAL_BYTES = 64 * 1024 * 1024
#: Largest ``sync.wasm`` a worker compiles, in bytes.
DEFAULT_MAX_MODULE_SIZE = 16 * 1024 * 1024
#: Seconds a worker lets a ``sync.wasm`` compile.
DEFAULT_COMPILE_TIMEOUT = 30.0
#: mountd: largest request head in bytes.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
#: mountd: most header lines in one request.
DEFAULT_MAX_HEADER_FIELDS = 100
#: mountd: seconds a client may take to send a request head, first byte to blank line.
DEFAULT_HEADER_TIMEOUT = 10.0
#: mountd: largest XML request body (PROPFIND, PROPPATCH, LOCK) in bytes.
DEFAULT_MAX_XML_BODY = 1024 * 1024
#: mountd: most XML elements in one such body (each asked-for property is one).
DEFAULT_MAX_XML_ELEMENTS = 1000
#: mountd: longest WebDAV lock lifetime in seconds (one hour).
DEFAULT_MAX_LOCK_TIMEOUT = 3600
#: mountd: most ranges answered in one Range header (more get the whole body).
DEFAULT_MAX_RANGES = 16
#: Seconds a read asking for fresh data (``Cache-Control: no-cache``) waits for a refresh at most.
DEFAULT_FRESH_WAIT = 5.0
#: Proactive refresh requests a scheduler keeps in flight at most: bounds the broker's queue in
#: overload, so that refreshes asked for by reads wait behind this many, not behind the whole backlog.
DEFAULT_SCHEDULER_WINDOW = 64
#: Longest fresh wait accepted: a waiting read holds one of mountd's 16 server threads.
MAX_FRESH_WAIT = 60.0
#: Log line format when none is given.
DEFAULT_LOG_FORMAT = "text"
#: mountd server processes sharing one listening socket: one unless the operator asks for more, because every
#: process keeps its own listing cache, payload checks and metrics, and needs the broker's Redis for locks
#: (docs/serving.md, "Several processes").
DEFAULT_MOUNTD_PROCESSES = 1
#: Most mountd server processes one supervisor starts.
MAX_MOUNTD_PROCESSES = 64

SANDBOX_MODES = ("strict", "permissive")
#: Spellings of a boolean in the environment.
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})

#: ``text``: ``LEVEL logger: message`` lines; ``json``: one JSON object per line.
LOG_FORMATS = ("text", "json")
#: Environment variable of the log format (read by ``log_format``, before any command builds settings).
LOG_FORMAT_ENV = "SYNC_LOG_FORMAT"

_ENV = {
    "store": "SYNC_STORE",
    "broker_url": "SYNC_BROKER_URL",
    "result_backend": "SYNC_RESULT_BACKEND",
    "host": "SYNC_HOST",
    "port": "SYNC_PORT",
    "cache_dir": "SYNC_CACHE_DIR",
    "sandbox": "SYNC_SANDBOX",
    "allow_anonymous": "SYNC_ALLOW_ANONYMOUS",
    "metrics_port": "SYNC_METRICS_PORT",
    "metrics_host": "SYNC_METRICS_HOST",
    "retry_max_retries": "SYNC_RETRY_MAX_RETRIES",
    "retry_base_delay": "SYNC_RETRY_BASE_DELAY",
    "retry_max_delay": "SYNC_RETRY_MAX_DELAY",
    "visibility_margin": "SYNC_VISIBILITY_MARGIN",
    "egress_allow_private": "SYNC_EGRESS_ALLOW_PRIVATE",
    "running_claim_ttl": "SYNC_RUNNING_CLAIM_TTL",
    "refresh_cooldown": "SYNC_REFRESH_COOLDOWN",
    "egress_max_total_bytes": "SYNC_EGRESS_MAX_TOTAL_BYTES",
    "max_module_size": "SYNC_MAX_MODULE_SIZE",
    "compile_timeout": "SYNC_COMPILE_TIMEOUT",
    # mountd limits against hostile clients
    "max_header_bytes": "SYNC_MAX_HEADER_BYTES",
    "max_header_fields": "SYNC_MAX_HEADER_FIELDS",
    "header_timeout": "SYNC_HEADER_TIMEOUT",
    "max_xml_body": "SYNC_MAX_XML_BODY",
    "max_xml_elements": "SYNC_MAX_XML_ELEMENTS",
    "max_lock_timeout": "SYNC_MAX_LOCK_TIMEOUT",
    "inline_active_content": "SYNC_INLINE_ACTIVE_CONTENT",
    "max_ranges": "SYNC_MAX_RANGES",
    "fresh_wait": "SYNC_FRESH_WAIT",
    "scheduler_window": "SYNC_SCHEDULER_WINDOW",
    "sandbox_spare_child": "SYNC_SANDBOX_SPARE_CHILD",
    "sandbox_zygote": "SYNC_SANDBOX_ZYGOTE",
    "facts_index": "SYNC_FACTS_INDEX",
    "mountd_processes": "SYNC_MOUNTD_PROCESSES",
}

#: What a long-running worker (``syncctl worker``, ``celery -A workers.celery_entry``) uses unless the
#: operator says otherwise: guest children are forked by the sandbox zygote, a small process started once per
#: pool process (``workers.zygote``), which makes a job's fork..reap about half as costly as forking the
#: worker. One-shot commands (``syncctl run``, ``guest test``) and library callers keep ``Settings``' own
#: default (fork per job), where starting a zygote would cost more than it saves. ``SYNC_SANDBOX_ZYGOTE=0``
#: turns it off for workers.
WORKER_DEFAULTS: Mapping[str, Any] = MappingProxyType({"sandbox_zygote": True})


class SettingsError(SyncError, ValueError):
    """Raised when a setting has a value that cannot be used; the message names the setting."""

    code = "settings_error"


#: Prefix of the variables holding guest secrets: ``SYNC_GUEST_SECRET_API_TOKEN`` supplies ``API_TOKEN``.
GUEST_SECRET_PREFIX = "SYNC_GUEST_SECRET_"  # noqa: S105  (a variable name prefix, not a secret)


#: Suffix of the variable binding a secret to destinations: ``SYNC_GUEST_SECRET_API_TOKEN_HOSTS`` lists the
#: host patterns ``API_TOKEN`` may be sent to. A secret's name therefore never ends in ``_HOSTS``.
GUEST_SECRET_HOSTS_SUFFIX = "_HOSTS"  # noqa: S105  (a variable name suffix, not a secret)


def _is_secret_var(name: str) -> bool:
    return name.startswith(GUEST_SECRET_PREFIX) and len(name) > len(GUEST_SECRET_PREFIX)


def _binding_of(var: str) -> str | None:
    """The secret a ``SYNC_GUEST_SECRET_<NAME>_HOSTS`` variable binds, or None for any other variable."""
    if not _is_secret_var(var) or not var.endswith(GUEST_SECRET_HOSTS_SUFFIX):
        return None
    name = var[len(GUEST_SECRET_PREFIX) : -len(GUEST_SECRET_HOSTS_SUFFIX)]
    return name or None


def secret_hosts_var(name: str) -> str:
    """The variable that binds secret ``name`` to destinations (for messages and docs)."""
    return f"{GUEST_SECRET_PREFIX}{name}{GUEST_SECRET_HOSTS_SUFFIX}"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sync"


@dataclass(frozen=True)
class Settings:
    """All settings of one process.

    Attributes:
        store: Store directory or single archive served or refreshed.
        broker_url: Celery broker URL; None selects the embedded default.
        result_backend: Celery result backend URL; None derives it from the broker.
        host: Address mountd binds.
        port: Port mountd binds.
        cache_dir: Where compiled guest modules and the embedded broker's data live.
        sandbox: ``strict`` or ``permissive``.
        guest_timeout: Guest budget in seconds when a manifest says 0.
        max_guest_timeout: Cap on any guest's budget in seconds.
        max_payload_size: Largest payload a guest may produce, in bytes.
        allow_anonymous: Let mountd serve a non-loopback address without a users file (anonymous requests
            are then read-only); see ``mountd.auth.access``.
        metrics_port: Port of a worker's ``/metrics`` and ``/health`` endpoint; 0 turns it off.
        metrics_host: Address that endpoint binds.
        guest_secrets: Operator-supplied secrets a guest's request headers may reference as ``${NAME}`` when
            its manifest lists NAME in ``permissions.allow_env``; from ``SYNC_GUEST_SECRET_<NAME>``
            variables (never printed: left out of the repr).
        retry_max_retries: Retries of a refresh after a transient failure before it is given up.
        retry_base_delay: Ceiling of the first retry's delay in seconds; it doubles per retry.
        retry_max_delay: Cap on any retry's delay in seconds (``broker.retry.RetryPolicy``).
        visibility_margin: Seconds the broker's visibility timeout adds to the longest of the retry delay
            and a dead job's claim lifetime, so a job of a killed worker runs again after about that long.
        egress_allow_private: The operator's ``SYNC_EGRESS_ALLOW_PRIVATE`` (comma-separated ``HOST:PORT`` or
            ``CIDR:PORT``, PORT may be ``*``): the only way a guest reaches a loopback, private, link-local,
            CGNAT or other non-public address; the manifest must still list the host. Metadata addresses
            stay closed whatever it says.
        running_claim_ttl: Seconds a running job's claim outlives its last heartbeat (crash recovery time).
        refresh_cooldown: Seconds an archive's claim is kept after a refresh that failed for good or ended
            unchanged, so that reads of the still expired archive merge into it instead of starting a job
            each (0: released at once).
        egress_max_total_bytes: Bytes one run's guest HTTP responses may add up to.
        max_module_size: Largest ``sync.wasm`` compiled, in bytes.
        compile_timeout: Seconds a ``sync.wasm`` may take to compile (in a forked child).
        max_header_bytes: mountd: largest request head (request line and headers) in bytes; 431 past it.
        max_header_fields: mountd: most header lines in one request; 431 past it.
        header_timeout: mountd: seconds from a request head's first byte to its end; closed past it.
        max_xml_body: mountd: largest PROPFIND/PROPPATCH/LOCK body in bytes; 413 past it.
        max_xml_elements: mountd: most XML elements in such a body (properties asked for); 413 past it.
        max_lock_timeout: mountd: longest lock lifetime granted, in seconds ("Infinite" gets this).
        inline_active_content: mountd: serve active types (HTML, SVG, ...) inline instead of as attachments
            (only for stores whose every writer is trusted).
        max_ranges: mountd: most ranges in one Range header; past it the whole body is sent (200).
        fresh_wait: Seconds mountd lets a read asking for fresh data wait for a refresh (0: never waits).
        scheduler_window: Proactive refresh requests mountd's scheduler keeps in flight at most.
        sandbox_spare_child: Workers keep one child forked ahead, already out of the parent's session,
            descriptors and network (no_new_privs and the empty network namespace applied); the next
            guest job is sent to it and it applies the job's rlimits, Landlock and seccomp before running
            it (``workers.spare``). Each child still runs one job. Off: one fork per job.
        sandbox_zygote: Workers start a small separate process (``python -m workers.zygote_main``, no secrets,
            no inherited descriptors) that forks the guest children, keeping one spare ahead; the worker
            still owns the deadline and gets each child's exit status and rusage (``workers.zygote``).
            Takes precedence over ``sandbox_spare_child``. On for workers (``WORKER_DEFAULTS``).
        facts_index: mountd: keep what each archive version looks like in ``<cache_dir>/mountd-facts`` so a
            first listing after a restart opens only archives that changed; False keeps it in memory only.
        guest_secret_hosts: Where each secret may be sent: host patterns (``sync_format.hosts`` syntax,
            as in ``allow_hosts``) by secret name, from ``SYNC_GUEST_SECRET_<NAME>_HOSTS`` (comma-separated).
            The operator's grant: a secret goes only to a request whose host (and port) a pattern of its
            binding matches; a secret without a binding is never sent, whatever an archive lists.
        mountd_processes: mountd server processes sharing one listening socket under a supervisor
            (``mountd.processes``); more than one needs the broker's Redis (locks are shared there).
    """

    store: Path | None = None
    broker_url: str | None = None
    result_backend: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    cache_dir: Path = Path()
    sandbox: str = DEFAULT_SANDBOX
    guest_timeout: float = DEFAULT_GUEST_TIMEOUT
    max_guest_timeout: float = MAX_GUEST_TIMEOUT
    max_payload_size: int = DEFAULT_MAX_PAYLOAD
    allow_anonymous: bool = False
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_host: str = DEFAULT_METRICS_HOST
    # Guest request secrets (ABI v2).
    guest_secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Where each secret may be sent: the operator's binding, never the archive's.
    guest_secret_hosts: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    # Retry timing: settings so that operators (and tests) can shorten or lengthen it.
    retry_max_retries: int = DEFAULT_MAX_RETRIES
    retry_base_delay: float = DEFAULT_BASE_DELAY
    retry_max_delay: float = DEFAULT_MAX_DELAY
    visibility_margin: float = DEFAULT_VISIBILITY_MARGIN
    # Egress screening and slow-source limits.
    egress_allow_private: tuple[str, ...] = ()
    running_claim_ttl: float = DEFAULT_RUNNING_CLAIM_TTL
    refresh_cooldown: float = DEFAULT_REFRESH_COOLDOWN
    egress_max_total_bytes: int = DEFAULT_EGRESS_MAX_TOTAL_BYTES
    max_module_size: int = DEFAULT_MAX_MODULE_SIZE
    compile_timeout: float = DEFAULT_COMPILE_TIMEOUT
    # mountd limits against hostile clients (docs/security.md, "Limits")
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_header_fields: int = DEFAULT_MAX_HEADER_FIELDS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_xml_body: int = DEFAULT_MAX_XML_BODY
    max_xml_elements: int = DEFAULT_MAX_XML_ELEMENTS
    max_lock_timeout: int = DEFAULT_MAX_LOCK_TIMEOUT
    inline_active_content: bool = False
    max_ranges: int = DEFAULT_MAX_RANGES
    # Freshness: the bounded wait of fresh-demanding reads, the scheduler's in-flight window.
    fresh_wait: float = DEFAULT_FRESH_WAIT
    scheduler_window: int = DEFAULT_SCHEDULER_WINDOW
    # Sandbox: keep one pre-forked child ready for the next guest job (workers.spare).
    sandbox_spare_child: bool = False
    # Sandbox: a small separate process forks the guest children (workers.zygote).
    sandbox_zygote: bool = False
    # mountd: keep archive facts on disk across restarts (mountd.dav.facts_store).
    facts_index: bool = True
    # mountd's process model: server processes sharing one listening socket.
    mountd_processes: int = DEFAULT_MOUNTD_PROCESSES

    def __post_init__(self) -> None:
        if self.sandbox not in SANDBOX_MODES:
            raise SettingsError(
                f"SYNC_SANDBOX must be one of {', '.join(SANDBOX_MODES)}, not {self.sandbox!r}"
            )
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise SettingsError(f"{name} {getattr(self, name)} is out of range")
        if self.retry_max_retries < 0 or self.visibility_margin < 0:
            raise SettingsError("retry_max_retries and visibility_margin must not be negative")
        if not 0 < self.retry_base_delay <= self.retry_max_delay:
            raise SettingsError(
                f"retry delays need 0 < retry_base_delay ({self.retry_base_delay})"
                f" <= retry_max_delay ({self.retry_max_delay})"
            )
        for entry in self.egress_allow_private:
            try:
                parse_private_entry(entry)
            except ValueError as exc:
                raise SettingsError(f"SYNC_EGRESS_ALLOW_PRIVATE: {exc}") from exc
        positive = ("running_claim_ttl", "egress_max_total_bytes", "max_module_size", "compile_timeout")
        for name in [*positive, *sorted(_INT_LIMITS), "header_timeout"]:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive, not {getattr(self, name)}")
        if not 0 <= self.refresh_cooldown <= MAX_REFRESH_COOLDOWN:
            raise SettingsError(
                f"refresh_cooldown (SYNC_REFRESH_COOLDOWN) must be 0..{MAX_REFRESH_COOLDOWN:g} s,"
                f" not {self.refresh_cooldown}"
            )
        if not 0 <= self.fresh_wait <= MAX_FRESH_WAIT:
            raise SettingsError(
                f"fresh_wait (SYNC_FRESH_WAIT) must be 0..{MAX_FRESH_WAIT:g} s, not {self.fresh_wait}"
            )
        if self.scheduler_window < 1:
            raise SettingsError(
                f"scheduler_window (SYNC_SCHEDULER_WINDOW) must be >= 1, not {self.scheduler_window}"
            )
        if not 1 <= self.mountd_processes <= MAX_MOUNTD_PROCESSES:
            raise SettingsError(
                f"mountd_processes (SYNC_MOUNTD_PROCESSES) must be 1..{MAX_MOUNTD_PROCESSES}, "
                f"not {self.mountd_processes}"
            )
        _check_secret_hosts(self.guest_secrets, self.guest_secret_hosts)

    def unbound_secrets(self) -> tuple[str, ...]:
        """Secrets the operator supplied but bound to no destination: unusable (never sent) until bound."""
        return tuple(sorted(n for n in self.guest_secrets if n not in self.guest_secret_hosts))

    @classmethod
    def from_env(
        cls,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        defaults: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Build settings: flags (``overrides``, None values ignored) win over the environment.

        Args:
            overrides: Values from command-line flags by field name.
            env: The environment to read; ``os.environ`` when None.
            defaults: The calling command's own defaults by field name (``WORKER_DEFAULTS``), used where
                neither the environment nor a flag gives a value.

        Returns:
            The settings.

        Raises:
            SettingsError: A value cannot be used.
        """
        source = os.environ if env is None else env
        values: dict[str, Any] = {"cache_dir": _default_cache_dir(), **(defaults or {})}
        for name, var in _ENV.items():
            if var in source and source[var] != "":
                values[name] = source[var]
        secrets = {
            k.removeprefix(GUEST_SECRET_PREFIX): v
            for k, v in source.items()
            if _is_secret_var(k) and _binding_of(k) is None
        }
        if secrets:
            values["guest_secrets"] = secrets
        bindings = {bound: v for k, v in source.items() if (bound := _binding_of(k)) is not None}
        if bindings:
            values["guest_secret_hosts"] = bindings
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        return cls(**_coerce(values))


def log_format(flag: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The log line format: the flag, else ``SYNC_LOG_FORMAT``, else ``text``.

    Separate from ``Settings`` because logging is set up before a command builds its settings (and for
    commands that build none).

    Args:
        flag: The ``--log-format`` value, or None.
        env: The environment to read; ``os.environ`` when None.

    Returns:
        One of ``LOG_FORMATS``.

    Raises:
        SettingsError: The value is not one of ``LOG_FORMATS``.
    """
    source = os.environ if env is None else env
    value = flag or source.get(LOG_FORMAT_ENV) or DEFAULT_LOG_FORMAT
    if value not in LOG_FORMATS:
        raise SettingsError(f"{LOG_FORMAT_ENV} must be one of {', '.join(LOG_FORMATS)}, not {value!r}")
    return value


#: Each field's annotation as written (``from __future__ import annotations`` keeps them as text).
_FIELD_TYPES = {f.name: str(f.type) for f in fields(Settings)}
#: Integer mountd limits (each must be positive).
_INT_LIMITS = frozenset(
    {
        "max_header_bytes",
        "max_header_fields",
        "max_xml_body",
        "max_xml_elements",
        "max_lock_timeout",
        "max_ranges",
    }
)


def parse_seconds(value: Any) -> float:
    """A duration: a number of seconds, optionally with the unit ``s`` or ``ms`` (``5``, ``5s``, ``500ms``).

    Args:
        value: The text (or a number).

    Returns:
        Seconds.

    Raises:
        ValueError: Not a duration.
    """
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip().lower()
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    return float(text.removesuffix("s"))


def _coerce(values: Mapping[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(Settings)}
    unknown = set(values) - known
    if unknown:
        raise SettingsError(f"unknown setting {sorted(unknown)[0]!r}")
    return {name: _coerce_one(name, value) for name, value in values.items()}


def _coerce_one(name: str, value: Any) -> Any:
    """Turn a flag or environment value into the type the field declares (its annotation)."""
    kind = _FIELD_TYPES[name]
    try:
        if kind in ("Path", "Path | None") and value is not None:
            return Path(value)
        if name == "fresh_wait":
            return parse_seconds(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{name} must be a number, not {value!r}") from exc
    if kind == "bool":
        return _coerce_bool(name, value)
    if name == "egress_allow_private":
        entries = value.split(",") if isinstance(value, str) else list(value)
        return tuple(e.strip() for e in entries if e.strip())
    if name == "guest_secret_hosts":
        return {secret: _split_patterns(patterns) for secret, patterns in dict(value).items()}
    return value


def _split_patterns(patterns: str | Sequence[str]) -> tuple[str, ...]:
    """A binding's entries: a comma-separated string (the environment) or a sequence (flags, tests)."""
    items = patterns.split(",") if isinstance(patterns, str) else list(patterns)
    return tuple(str(item).strip() for item in items)


def _check_secret_hosts(secrets: Mapping[str, str], bindings: Mapping[str, tuple[str, ...]]) -> None:
    """Refuse a binding that is not what the operator meant: it would silently leave a secret unusable or,
    worse, admit hosts nobody intended. Every entry must parse as a host pattern; none may be empty."""
    for name, patterns in bindings.items():
        var = secret_hosts_var(name)
        if name not in secrets:
            raise SettingsError(f"{var} binds secret {name}, but {GUEST_SECRET_PREFIX}{name} is not set")
        if isinstance(patterns, str) or not any(patterns):
            raise SettingsError(f"{var} must list at least one host pattern (host, *.suffix, [:port])")
        for entry in patterns:
            if not entry or parse_pattern(entry) is None:
                raise SettingsError(
                    f"{var} entry {entry!r} is not a host pattern (host, *.suffix, IP, optionally :port)"
                )


def _coerce_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    choices = "/".join(sorted(_TRUE_WORDS | _FALSE_WORDS))
    raise SettingsError(f"{name} ({_ENV[name]}) must be one of {choices}, not {value!r}")

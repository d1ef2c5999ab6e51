"""``Settings``: every knob of sync, built once from flags and the environment and passed down.

Only this module reads the environment (STYLE rule 10). Defaults are named constants with their unit.
Components receive a ``Settings`` (or the few fields they need); nothing reads configuration from globals.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sync_format.errors import SyncError

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
#: Seconds a read asking for fresh data (``Cache-Control: no-cache``) waits for a refresh at most (issue 16).
DEFAULT_FRESH_WAIT = 5.0
#: Proactive refresh requests a scheduler keeps in flight at most (issue 16): bounds the broker's queue in
#: overload, so that refreshes asked for by reads wait behind this many, not behind the whole backlog.
DEFAULT_SCHEDULER_WINDOW = 64
#: Longest fresh wait accepted: a waiting read holds one of mountd's 16 server threads.
MAX_FRESH_WAIT = 60.0
#: Log line format when none is given.
DEFAULT_LOG_FORMAT = "text"

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
    "fresh_wait": "SYNC_FRESH_WAIT",
    "scheduler_window": "SYNC_SCHEDULER_WINDOW",
}


class SettingsError(SyncError, ValueError):
    """Raised when a setting has a value that cannot be used; the message names the setting."""

    code = "settings_error"


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
            are then read-only); see ``mountd.auth``.
        metrics_port: Port of a worker's ``/metrics`` and ``/health`` endpoint; 0 turns it off.
        metrics_host: Address that endpoint binds.
        fresh_wait: Seconds mountd lets a read asking for fresh data wait for a refresh (0: never waits).
        scheduler_window: Proactive refresh requests mountd's scheduler keeps in flight at most.
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
    # Freshness (issue 16): the bounded wait of fresh-demanding reads, the scheduler's in-flight window.
    fresh_wait: float = DEFAULT_FRESH_WAIT
    scheduler_window: int = DEFAULT_SCHEDULER_WINDOW

    def __post_init__(self) -> None:
        if self.sandbox not in SANDBOX_MODES:
            raise SettingsError(
                f"SYNC_SANDBOX must be one of {', '.join(SANDBOX_MODES)}, not {self.sandbox!r}"
            )
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise SettingsError(f"{name} {getattr(self, name)} is out of range")
        if not 0 <= self.fresh_wait <= MAX_FRESH_WAIT:
            raise SettingsError(
                f"fresh_wait (SYNC_FRESH_WAIT) must be 0..{MAX_FRESH_WAIT:g} s, not {self.fresh_wait}"
            )
        if self.scheduler_window < 1:
            raise SettingsError(
                f"scheduler_window (SYNC_SCHEDULER_WINDOW) must be >= 1, not {self.scheduler_window}"
            )

    @classmethod
    def from_env(
        cls, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Build settings: flags (``overrides``, None values ignored) win over the environment.

        Args:
            overrides: Values from command-line flags by field name.
            env: The environment to read; ``os.environ`` when None.

        Returns:
            The settings.

        Raises:
            SettingsError: A value cannot be used.
        """
        source = os.environ if env is None else env
        values: dict[str, Any] = {"cache_dir": _default_cache_dir()}
        for name, var in _ENV.items():
            if var in source and source[var] != "":
                values[name] = source[var]
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
    try:
        if name in ("store", "cache_dir") and value is not None:
            return Path(value)
        if name in ("port", "max_payload_size", "metrics_port", "scheduler_window"):
            return int(value)
        if name in ("guest_timeout", "max_guest_timeout"):
            return float(value)
        if name == "fresh_wait":
            return parse_seconds(value)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{name} must be a number, not {value!r}") from exc
    if name == "allow_anonymous":
        return _coerce_bool(name, value)
    return value


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

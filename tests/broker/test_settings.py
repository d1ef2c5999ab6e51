"""``Settings.from_env``: SYNC_ALLOW_ANONYMOUS, the metrics endpoint, the log format, retry timing."""

from __future__ import annotations

import pytest

from broker.retry import RetryPolicy
from broker.settings import WORKER_DEFAULTS, Settings, SettingsError, log_format


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("false", False), ("no", False)],
)
def test_allow_anonymous_from_env(value: str, expected: bool) -> None:
    """Each accepted spelling of SYNC_ALLOW_ANONYMOUS gives its boolean."""
    assert Settings.from_env(env={"SYNC_ALLOW_ANONYMOUS": value}).allow_anonymous is expected


def test_allow_anonymous_defaults_off_and_flag_wins() -> None:
    """Unset means False; a flag value overrides the environment."""
    assert Settings.from_env(env={}).allow_anonymous is False
    settings = Settings.from_env({"allow_anonymous": True}, env={"SYNC_ALLOW_ANONYMOUS": "0"})
    assert settings.allow_anonymous is True


def test_allow_anonymous_rejects_other_words() -> None:
    """A value that is not a boolean word is a SettingsError naming the variable."""
    with pytest.raises(SettingsError, match="SYNC_ALLOW_ANONYMOUS"):
        Settings.from_env(env={"SYNC_ALLOW_ANONYMOUS": "maybe"})


def test_metrics_endpoint_is_off_on_loopback_by_default() -> None:
    """Without flags or variables the worker endpoint is off (port 0) and would bind 127.0.0.1."""
    settings = Settings.from_env(env={})
    assert (settings.metrics_port, settings.metrics_host) == (0, "127.0.0.1")


def test_metrics_flags_win_over_the_environment() -> None:
    """SYNC_METRICS_PORT and SYNC_METRICS_HOST apply, and flags override them."""
    env = {"SYNC_METRICS_PORT": "9100", "SYNC_METRICS_HOST": "0.0.0.0"}  # noqa: S104  (a container's bind)
    assert Settings.from_env(env=env).metrics_port == 9100
    assert Settings.from_env(env=env).metrics_host == "0.0.0.0"  # noqa: S104
    assert Settings.from_env({"metrics_port": 9200, "metrics_host": None}, env=env).metrics_port == 9200


@pytest.mark.parametrize("value", ["x", "70000", "-1"])
def test_a_bad_metrics_port_is_a_settings_error(value: str) -> None:
    """A metrics port that is not a number in 0..65535 is refused with the setting's name."""
    with pytest.raises(SettingsError, match="metrics_port"):
        Settings.from_env(env={"SYNC_METRICS_PORT": value})


def test_log_format_comes_from_the_flag_then_the_environment() -> None:
    """The flag wins, then SYNC_LOG_FORMAT, then text; anything else is refused."""
    assert log_format(None, {}) == "text"
    assert log_format(None, {"SYNC_LOG_FORMAT": "json"}) == "json"
    assert log_format("text", {"SYNC_LOG_FORMAT": "json"}) == "text"
    with pytest.raises(SettingsError, match="SYNC_LOG_FORMAT"):
        log_format(None, {"SYNC_LOG_FORMAT": "yaml"})


def test_retry_timing_comes_from_the_environment() -> None:
    """``SYNC_RETRY_*`` and ``SYNC_VISIBILITY_MARGIN`` set the retry policy and the visibility margin."""
    env = {
        "SYNC_RETRY_MAX_RETRIES": "2",
        "SYNC_RETRY_BASE_DELAY": "0.2",
        "SYNC_RETRY_MAX_DELAY": "0.5",
        "SYNC_VISIBILITY_MARGIN": "10",
    }
    settings = Settings.from_env(env=env)
    assert RetryPolicy.from_settings(settings) == RetryPolicy(2, 0.2, 0.5)
    assert settings.visibility_margin == 10.0
    assert RetryPolicy.from_settings(Settings()) == RetryPolicy()


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"SYNC_RETRY_MAX_RETRIES": "-1"}, id="negative-retries"),
        pytest.param({"SYNC_RETRY_BASE_DELAY": "0"}, id="zero-base"),
        pytest.param({"SYNC_RETRY_BASE_DELAY": "9", "SYNC_RETRY_MAX_DELAY": "3"}, id="base-over-max"),
        pytest.param({"SYNC_VISIBILITY_MARGIN": "-1"}, id="negative-margin"),
        pytest.param({"SYNC_RETRY_MAX_DELAY": "soon"}, id="not-a-number"),
    ],
)
def test_bad_retry_timing_is_a_settings_error(env: dict[str, str]) -> None:
    """Retry timing that ``RetryPolicy`` could not use is refused when the settings are built."""
    with pytest.raises(SettingsError):
        Settings.from_env(env=env)


def test_egress_allow_private_is_read_and_checked() -> None:
    """``SYNC_EGRESS_ALLOW_PRIVATE`` is a comma-separated list of HOST:PORT or CIDR:PORT (PORT may be *),
    empty by default; a malformed entry is refused naming the variable (issue 11)."""
    assert Settings.from_env(env={}).egress_allow_private == ()
    value = "127.0.0.1:8080, 10.231.0.0/16:*,[::1]:443,[fd00::/8]:*,mountd:8080,"
    settings = Settings.from_env(env={"SYNC_EGRESS_ALLOW_PRIVATE": value})
    assert settings.egress_allow_private == (
        "127.0.0.1:8080",
        "10.231.0.0/16:*",
        "[::1]:443",
        "[fd00::/8]:*",
        "mountd:8080",
    )
    for bad in ("127.0.0.1", "10.0.0.0/33:*", "::1:80", "host:0", "host:http", "*.example.com:*"):
        with pytest.raises(SettingsError, match="SYNC_EGRESS_ALLOW_PRIVATE"):
            Settings.from_env(env={"SYNC_EGRESS_ALLOW_PRIVATE": bad})


def test_mountd_limits_have_defaults_and_come_from_the_environment() -> None:
    """The hostile-client limits (issue 12): defaults, environment variables, non-positive values refused."""
    defaults = Settings.from_env(env={})
    assert (defaults.max_header_bytes, defaults.max_header_fields, defaults.header_timeout) == (
        65536,
        100,
        10.0,
    )
    assert (defaults.max_xml_body, defaults.max_xml_elements) == (1024 * 1024, 1000)
    assert (defaults.max_lock_timeout, defaults.max_ranges, defaults.inline_active_content) == (
        3600,
        16,
        False,
    )
    env = {
        "SYNC_MAX_HEADER_BYTES": "8192",
        "SYNC_MAX_HEADER_FIELDS": "20",
        "SYNC_HEADER_TIMEOUT": "2.5",
        "SYNC_MAX_XML_BODY": "4096",
        "SYNC_MAX_XML_ELEMENTS": "50",
        "SYNC_MAX_LOCK_TIMEOUT": "60",
        "SYNC_MAX_RANGES": "4",
        "SYNC_INLINE_ACTIVE_CONTENT": "yes",
    }
    given = Settings.from_env(env=env)
    assert (given.max_header_bytes, given.max_header_fields, given.header_timeout) == (8192, 20, 2.5)
    assert (given.max_xml_body, given.max_xml_elements, given.max_lock_timeout) == (4096, 50, 60)
    assert (given.max_ranges, given.inline_active_content) == (4, True)
    with pytest.raises(SettingsError, match="max_ranges must be positive"):
        Settings.from_env(env={"SYNC_MAX_RANGES": "0"})


def test_mountd_processes_default_to_one_and_come_from_flag_or_environment() -> None:
    """SYNC_MOUNTD_PROCESSES: 1 by default, the flag wins over the environment, 0 and 65 are refused."""
    assert Settings.from_env(env={}).mountd_processes == 1
    assert Settings.from_env(env={"SYNC_MOUNTD_PROCESSES": "2"}).mountd_processes == 2
    assert (
        Settings.from_env({"mountd_processes": 3}, env={"SYNC_MOUNTD_PROCESSES": "2"}).mountd_processes == 3
    )
    for bad in ("0", "65", "-1"):
        with pytest.raises(SettingsError, match="SYNC_MOUNTD_PROCESSES"):
            Settings.from_env(env={"SYNC_MOUNTD_PROCESSES": bad})


def test_a_commands_own_defaults_yield_to_the_environment_and_flags() -> None:
    """``from_env(defaults=...)``: a command's default (the workers' zygote) applies only where neither the
    environment nor a flag decides."""
    assert Settings.from_env(env={}, defaults=WORKER_DEFAULTS).sandbox_zygote is True
    assert Settings.from_env(env={}).sandbox_zygote is False
    off = {"SYNC_SANDBOX_ZYGOTE": "0"}
    assert Settings.from_env(env=off, defaults=WORKER_DEFAULTS).sandbox_zygote is False
    flag = {"sandbox_zygote": False}
    assert Settings.from_env(flag, env={}, defaults=WORKER_DEFAULTS).sandbox_zygote is False


def test_the_refresh_cooldown_defaults_to_30_s_and_is_bounded() -> None:
    """``SYNC_REFRESH_COOLDOWN``: 30 s by default, 0 releases at once; over an hour or negative: refused."""
    assert Settings.from_env(env={}).refresh_cooldown == 30.0
    assert Settings.from_env(env={"SYNC_REFRESH_COOLDOWN": "0"}).refresh_cooldown == 0.0
    assert Settings.from_env(env={"SYNC_REFRESH_COOLDOWN": "120"}).refresh_cooldown == 120.0
    for bad in ("-1", "3601", "soon"):
        with pytest.raises(SettingsError, match="refresh_cooldown"):
            Settings.from_env(env={"SYNC_REFRESH_COOLDOWN": bad})

"""``Settings.from_env`` reads SYNC_ALLOW_ANONYMOUS as a boolean; flags win over it."""

from __future__ import annotations

import pytest

from broker.settings import Settings, SettingsError


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

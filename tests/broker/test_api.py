"""``broker`` declares its public API: ``__all__`` lists exactly what it re-exports from its modules."""

from __future__ import annotations

import broker


def test_all_lists_every_public_name() -> None:
    """Every public class and function imported into ``broker`` from its modules is in ``__all__``."""
    public = {
        name
        for name, value in vars(broker).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("broker.")
    }
    assert public - set(broker.__all__) == set()
    assert {"Settings", "SettingsError"} <= set(broker.__all__)


def test_all_names_exist() -> None:
    """Every name in ``__all__`` is importable, without duplicates."""
    assert len(broker.__all__) == len(set(broker.__all__))
    assert [name for name in broker.__all__ if not hasattr(broker, name)] == []

"""``python -m syncctl``: the same entry point as the ``syncctl`` script."""

from __future__ import annotations

from syncctl.main import main

if __name__ == "__main__":
    raise SystemExit(main())

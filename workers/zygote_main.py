"""Entry point of the sandbox zygote: ``python -m workers.zygote_main CONTROL_FD PARENT``.

A module of its own so that running it does not re-execute ``workers.zygote``, which the package has already
imported (``runpy`` warns about that); everything is in ``workers.zygote.main``.
"""

from __future__ import annotations

import sys

from workers.zygote import main

if __name__ == "__main__":  # pragma: no cover  (a separate process; tests drive it for real)
    main(sys.argv[1:])

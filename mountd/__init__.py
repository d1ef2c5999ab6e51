"""The WebDAV front end (wsgidav + cheroot) that serves a store of archives as their payloads.

Its contents arrive with the mountd issue; the package exists now so the layout of ARCHITECTURE.md holds
from the start. It must never import ``workers`` or ``wasmtime``.
"""

from __future__ import annotations

__all__: list[str] = []

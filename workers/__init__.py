"""Everything that executes guests: the wasmtime engine and host ABI, the sandbox, and the refresh pipeline.

Its contents arrive with the guest-runtime issue; the package exists now so the layout of ARCHITECTURE.md
holds from the start.
"""

from __future__ import annotations

__all__: list[str] = []

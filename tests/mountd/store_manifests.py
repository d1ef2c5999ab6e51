"""Manifests the mountd tests build archives with: fresh, expired, CSV.

Imported by the tests as ``store_manifests`` (``tests/mountd`` is on ``sys.path``).
"""

from __future__ import annotations

from sync_format import Manifest
from sync_format.testing import make_manifest

#: A manifest whose payload never expires (its TTL saturates), for archives that must stay fresh.
NEVER_EXPIRES = make_manifest(created_at="2026-01-01T00:00:00Z", ttl=2**62)
#: A manifest whose payload expired long ago; its refresh budget is 42 s.
EXPIRED = make_manifest(created_at="2020-01-01T00:00:00Z", ttl=60, timeout=42)


def csv_manifest(*, ttl: int = 2**62, created_at: str = "2026-01-01T00:00:00Z") -> Manifest:
    """A CSV manifest (``report.csv.sync`` shows as ``report.csv``), fresh unless told otherwise."""
    return make_manifest(content_type="text/csv", display_ext="csv", ttl=ttl, created_at=created_at)

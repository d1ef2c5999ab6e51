"""The WebDAV front end (wsgidav + cheroot) that serves a store of archives as their payloads.

A client sees each archive as one file, named by its display name (``report.csv.sync`` → ``report.csv``),
whose bytes are the payload, answered from one snapshot per request (``resources``); directories list
through a cache keyed by file identity (``index``); reads of expired archives ask the broker for a refresh
without waiting for it (``freshness``); health and Prometheus metrics are answered under
``/.well-known/sync/`` (``ops``, ``metrics``). ``server`` assembles the WSGI application and runs cheroot.

It must never import ``workers`` or ``wasmtime`` (a test checks it): refreshes are sent by task name.
"""

from __future__ import annotations

from mountd.errors import dav_error, read_only
from mountd.facts import ArchiveFacts, derive_etag
from mountd.freshness import BrokerFreshness, FreshnessCounts, NullFreshness
from mountd.index import ArchiveIndex, DirectoryListing, IndexStats, ListedArchive, Unreadable
from mountd.metrics import CountingFreshness, MountdMetrics, record_bytes
from mountd.middleware import RequestGuard, RequestScope, host_names, on_request_end
from mountd.ops import HEALTH_PATH, METRICS_PATH, Health, OpsEndpoints, check_health
from mountd.provider import FreshnessHook, SyncProvider
from mountd.resources import (
    PROP_EXPIRED,
    PROP_EXPIRES_AT,
    PROP_GENERATION,
    PROP_LAST_REFRESH,
    PROP_TTL,
    SYNC_NAMESPACE,
    ArchiveResource,
    IndexedArchiveResource,
    SingleArchiveCollection,
    StoreCollection,
)
from mountd.server import BLOCK_SIZE, ServerHandle, build_app, serve, serve_background

__all__ = [
    "BLOCK_SIZE",
    "HEALTH_PATH",
    "METRICS_PATH",
    "PROP_EXPIRED",
    "PROP_EXPIRES_AT",
    "PROP_GENERATION",
    "PROP_LAST_REFRESH",
    "PROP_TTL",
    "SYNC_NAMESPACE",
    "ArchiveFacts",
    "ArchiveIndex",
    "ArchiveResource",
    "BrokerFreshness",
    "CountingFreshness",
    "DirectoryListing",
    "FreshnessCounts",
    "FreshnessHook",
    "Health",
    "IndexStats",
    "IndexedArchiveResource",
    "ListedArchive",
    "MountdMetrics",
    "NullFreshness",
    "OpsEndpoints",
    "RequestGuard",
    "RequestScope",
    "ServerHandle",
    "SingleArchiveCollection",
    "StoreCollection",
    "SyncProvider",
    "Unreadable",
    "build_app",
    "check_health",
    "dav_error",
    "derive_etag",
    "host_names",
    "on_request_end",
    "read_only",
    "record_bytes",
    "serve",
    "serve_background",
]

"""The WebDAV front end (wsgidav + cheroot) that serves a store of archives as their payloads.

A client sees each archive as one file, named by its display name (``report.csv.sync`` → ``report.csv``),
whose bytes are the payload, answered from one snapshot per request (``resources``); directories list
through a cache keyed by file identity (``index``); reads of expired archives ask the broker for a refresh
without waiting for it (``freshness``). ``server`` assembles the WSGI application and runs cheroot, whose
gateway (``sendfile``) sends payload bodies with ``os.sendfile``.

It must never import ``workers`` or ``wasmtime`` (a test checks it): refreshes are sent by task name.
"""

from __future__ import annotations

from mountd.errors import dav_error, read_only
from mountd.facts import ArchiveFacts, derive_etag
from mountd.freshness import BrokerFreshness, FreshnessCounts, NullFreshness
from mountd.index import ArchiveIndex, DirectoryListing, IndexStats, ListedArchive, Unreadable
from mountd.middleware import RequestGuard, RequestScope, host_names, on_request_end
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
from mountd.sendfile import PayloadGateway, direct_bytes, gateway_class, offer_payload
from mountd.server import BLOCK_SIZE, ServerHandle, build_app, serve, serve_background

__all__ = [
    "BLOCK_SIZE",
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
    "DirectoryListing",
    "FreshnessCounts",
    "FreshnessHook",
    "IndexStats",
    "IndexedArchiveResource",
    "ListedArchive",
    "NullFreshness",
    "PayloadGateway",
    "RequestGuard",
    "RequestScope",
    "ServerHandle",
    "SingleArchiveCollection",
    "StoreCollection",
    "SyncProvider",
    "Unreadable",
    "build_app",
    "dav_error",
    "derive_etag",
    "direct_bytes",
    "gateway_class",
    "host_names",
    "offer_payload",
    "on_request_end",
    "read_only",
    "serve",
    "serve_background",
]

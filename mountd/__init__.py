"""The WebDAV front end (wsgidav + cheroot) that serves a store of archives as their payloads.

A client sees each archive as one file, named by its display name (``report.csv.sync`` → ``report.csv``),
whose bytes are the payload, answered from one snapshot per request (``resources``); directories list
through a cache keyed by file identity (``index``); reads of expired archives ask the broker for a refresh
without waiting for it (``freshness``). In writable mode (``writable``) uploads become archives through
``uploads`` (complete bodies only), and WebDAV locks can be shared through Redis (``locks``). ``server``
assembles the WSGI application and runs cheroot, whose gateway (``sendfile``) sends payload bodies with
``os.sendfile``. Archives about to expire are asked for before a reader sees them stale (``scheduler``); a
web browser gets each folder as a table with every archive's freshness (``browser``). Who may connect, and
whether a request may write, is decided by ``auth`` over a users file (``users``). Health and Prometheus
metrics are answered under ``/.well-known/sync/`` (``ops``, ``metrics``).

It must never import ``workers`` or ``wasmtime`` (a test checks it): refreshes are sent by task name.
"""

from __future__ import annotations

from mountd.auth.access import (
    AccessPolicy,
    UsersDomainController,
    access_policy,
    auth_config,
    is_loopback,
    may_write,
    role_of,
)
from mountd.auth.users import (
    PasswordHash,
    Role,
    User,
    UserTable,
    add_user,
    digest_ha1,
    load_users,
    parse_users,
    remove_user,
)
from mountd.dav.facts import ArchiveFacts, derive_etag
from mountd.dav.index import (
    ArchiveIndex,
    DirectoryEntries,
    DirectoryListing,
    IndexStats,
    ListedArchive,
    Unreadable,
)
from mountd.dav.provider import FreshnessHook, SyncProvider
from mountd.dav.resources import (
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
from mountd.errors import (
    IncompleteUpload,
    UploadTooLarge,
    UsersFileError,
    WriteError,
    WriteRefused,
    dav_error,
    read_only,
)
from mountd.http.browser import BrowserView
from mountd.http.middleware import RequestGuard, RequestScope, host_names, on_request_end
from mountd.http.sendfile import PayloadGateway, direct_bytes, gateway_class, offer_payload
from mountd.ops.endpoints import HEALTH_PATH, METRICS_PATH, Health, OpsEndpoints, check_health
from mountd.ops.metrics import CountingFreshness, MountdMetrics, record_bytes
from mountd.refresh.hooks import BrokerFreshness, FreshnessCounts, NullFreshness
from mountd.refresh.scheduler import RefreshScheduler, ScanReport, SchedulerStats
from mountd.server import BLOCK_SIZE, ServerHandle, build_app, serve, serve_background, serve_writable
from mountd.writable.archives import WritableArchiveResource
from mountd.writable.folders import WritableCollection
from mountd.writable.locks import RedisLockStorage
from mountd.writable.policy import DEFAULT_MAX_UPLOAD, WritePolicy
from mountd.writable.uploads import UploadSink

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_MAX_UPLOAD",
    "HEALTH_PATH",
    "METRICS_PATH",
    "PROP_EXPIRED",
    "PROP_EXPIRES_AT",
    "PROP_GENERATION",
    "PROP_LAST_REFRESH",
    "PROP_TTL",
    "SYNC_NAMESPACE",
    "AccessPolicy",
    "ArchiveFacts",
    "ArchiveIndex",
    "ArchiveResource",
    "BrokerFreshness",
    "BrowserView",
    "CountingFreshness",
    "DirectoryEntries",
    "DirectoryListing",
    "FreshnessCounts",
    "FreshnessHook",
    "Health",
    "IncompleteUpload",
    "IndexStats",
    "IndexedArchiveResource",
    "ListedArchive",
    "MountdMetrics",
    "NullFreshness",
    "OpsEndpoints",
    "PasswordHash",
    "PayloadGateway",
    "RedisLockStorage",
    "RefreshScheduler",
    "RequestGuard",
    "RequestScope",
    "Role",
    "ScanReport",
    "SchedulerStats",
    "ServerHandle",
    "SingleArchiveCollection",
    "StoreCollection",
    "SyncProvider",
    "Unreadable",
    "UploadSink",
    "UploadTooLarge",
    "User",
    "UserTable",
    "UsersDomainController",
    "UsersFileError",
    "WritableArchiveResource",
    "WritableCollection",
    "WriteError",
    "WritePolicy",
    "WriteRefused",
    "access_policy",
    "add_user",
    "auth_config",
    "build_app",
    "check_health",
    "dav_error",
    "derive_etag",
    "digest_ha1",
    "direct_bytes",
    "gateway_class",
    "host_names",
    "is_loopback",
    "load_users",
    "may_write",
    "offer_payload",
    "on_request_end",
    "parse_users",
    "read_only",
    "record_bytes",
    "remove_user",
    "role_of",
    "serve",
    "serve_background",
    "serve_writable",
]

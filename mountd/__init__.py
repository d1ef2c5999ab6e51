"""The WebDAV front end (wsgidav + cheroot) that serves a store of archives as their payloads.

A client sees each archive as one file, named by its display name (``report.csv.sync`` → ``report.csv``),
whose bytes are the payload, answered from one snapshot per request (``resources``); directories list
through a cache keyed by file identity (``index``); reads of expired archives ask the broker for a refresh
without waiting for it (``freshness``). ``server`` assembles the WSGI application and runs cheroot.
Who may connect, and whether a request may write, is decided by ``auth`` over a users file (``users``).

It must never import ``workers`` or ``wasmtime`` (a test checks it): refreshes are sent by task name.
"""

from __future__ import annotations

from mountd.auth import (
    AccessPolicy,
    UsersDomainController,
    access_policy,
    auth_config,
    is_loopback,
    may_write,
    role_of,
)
from mountd.errors import UsersFileError, dav_error, read_only
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
from mountd.server import BLOCK_SIZE, ServerHandle, build_app, serve, serve_background
from mountd.users import (
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

__all__ = [
    "BLOCK_SIZE",
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
    "DirectoryListing",
    "FreshnessCounts",
    "FreshnessHook",
    "IndexStats",
    "IndexedArchiveResource",
    "ListedArchive",
    "NullFreshness",
    "PasswordHash",
    "RequestGuard",
    "RequestScope",
    "Role",
    "ServerHandle",
    "SingleArchiveCollection",
    "StoreCollection",
    "SyncProvider",
    "Unreadable",
    "User",
    "UserTable",
    "UsersDomainController",
    "UsersFileError",
    "access_policy",
    "add_user",
    "auth_config",
    "build_app",
    "dav_error",
    "derive_etag",
    "digest_ha1",
    "host_names",
    "is_loopback",
    "load_users",
    "may_write",
    "on_request_end",
    "parse_users",
    "read_only",
    "remove_user",
    "role_of",
    "serve",
    "serve_background",
]

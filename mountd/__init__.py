"""The WebDAV front end (wsgidav + cheroot) that serves a store of archives as their payloads.

A client sees each archive as one file, named by its display name (``report.csv.sync`` → ``report.csv``),
whose bytes are the payload. The parts:

* ``dav/`` — the read path: ``provider`` maps request paths to resources made by a resource factory
  (``factory``), ``resources`` are the read-only archives and folders (one snapshot per request), ``facts``
  and ``index`` cache what an archive version is and what a directory lists, ``integrity`` checks payload
  CRCs once per version.
* ``writable/`` — the writable store: its resource factory, ``archives`` and ``folders`` that take writes,
  ``policy`` (who may write what), ``uploads`` (complete bodies only), ``locks`` and ``properties`` shared
  through Redis.
* ``http/`` — middleware and fast paths around wsgidav: request guards, connection and XML-body limits, the
  fast GET and PROPFIND paths, byte ranges, payload and freshness headers, the browser view, and cheroot's
  ``sendfile`` gateway.
* ``refresh/`` — freshness hooks (reads of expired archives ask the broker for a refresh without waiting),
  the refresh scheduler and the "swapped" listener.
* ``auth/`` — who may connect and write: access policy, users file, digest nonces, lock policy.
* ``ops/`` — health and Prometheus metrics under ``/.well-known/sync/``.
* ``app`` assembles a server from a frozen ``MountdConfig``; ``server`` runs cheroot; ``processes`` runs
  several server processes on one listening socket under a supervisor (``--processes``).

It must never import ``workers`` or ``wasmtime`` (a test checks it): refreshes are sent by task name.
"""

from __future__ import annotations

from mountd.app import (
    BLOCK_SIZE,
    MountdConfig,
    build_app,
    serve,
    serve_background,
    serve_with_broker,
    start,
    writable_root,
)
from mountd.auth.users import PasswordHash, Role, User, UserTable, add_user, load_users, remove_user
from mountd.dav.facts import ArchiveFacts, derive_etag
from mountd.dav.index import ArchiveIndex
from mountd.dav.provider import FreshnessHook
from mountd.dav.resources import (
    PROP_EXPIRED,
    PROP_EXPIRES_AT,
    PROP_GENERATION,
    PROP_TTL,
)
from mountd.errors import UsersFileError
from mountd.ops.endpoints import HEALTH_PATH, METRICS_PATH
from mountd.refresh.hooks import BrokerFreshness, NullFreshness
from mountd.server import ServerHandle
from mountd.writable.locks import RedisLockStorage
from mountd.writable.policy import DEFAULT_MAX_UPLOAD, WritePolicy
from mountd.writable.properties import RedisPropertyManager

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_MAX_UPLOAD",
    "HEALTH_PATH",
    "METRICS_PATH",
    "PROP_EXPIRED",
    "PROP_EXPIRES_AT",
    "PROP_GENERATION",
    "PROP_TTL",
    "ArchiveFacts",
    "ArchiveIndex",
    "BrokerFreshness",
    "FreshnessHook",
    "MountdConfig",
    "NullFreshness",
    "PasswordHash",
    "RedisLockStorage",
    "RedisPropertyManager",
    "Role",
    "ServerHandle",
    "User",
    "UserTable",
    "UsersFileError",
    "WritePolicy",
    "add_user",
    "build_app",
    "derive_etag",
    "load_users",
    "remove_user",
    "serve",
    "serve_background",
    "serve_with_broker",
    "start",
    "writable_root",
]

"""Who may lock, for how long, and owners breaking other users' locks (WebDAV locks as a denial of service).

Why: a lock blocks every other writer (423) until it expires, so handing one out is a write. Without rules a
consumer (or an anonymous client) could LOCK a folder with ``Depth: infinity`` and ``Timeout: Infinite``
and keep the owners out of their store for weeks, across restarts (locks live in Redis). ``LockPolicy``
sits in wsgidav's stack after authentication:

* ``LOCK`` needs the role that may write (an owner, ``mountd.auth.access.may_write``); a consumer, including
  an anonymous one under ``--allow-anonymous``, gets 403. In a writable store an archive whose manifest
  refuses writes (``ownership.write_allowed = false``) cannot be locked either (nobody may write it).
* A resource holds at most ``MAX_LOCKS_PER_RESOURCE`` locks (16; a LOCK body, its owner, is at most 4 KiB:
  ``mountd.http.xml_limits``), so that what locks keep, and every LOCK answer that lists them, stays small.
* Every ``LOCK`` (new or refresh) gets at most ``max_lock_timeout`` seconds (``SYNC_MAX_LOCK_TIMEOUT``,
  default 3600): a missing, larger or ``Infinite`` ``Timeout`` header is rewritten to that, so the cap holds
  for whichever lock storage is configured.
* ``UNLOCK`` by an owner removes the lock whatever user took it (wsgidav alone answers 403 "created by
  another user"); the break is logged. ``syncctl locks list|break`` does the same from the command line
  against the Redis lock storage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from wsgidav import util as dav_util  # type: ignore[import-untyped]
from wsgidav.mw.base_mw import BaseMiddleware  # type: ignore[import-untyped]

from mountd.auth.access import USER_KEY, role_of
from mountd.auth.users import Role
from mountd.http.middleware import StartResponse, WSGIEnviron
from mountd.http.payload_headers import SETTINGS_CONFIG_KEY
from mountd.writable.policy import is_protected

log = logging.getLogger(__name__)

#: Longest lock lifetime when no settings are configured (seconds).
DEFAULT_MAX_LOCK_TIMEOUT = 3600
#: Locks one resource may hold (shared ones pile up; exclusive ones are one anyway): each is stored until it
#: expires and is sent back, owner and all, in every LOCK answer and lock discovery of the resource.
MAX_LOCKS_PER_RESOURCE = 16


def capped_timeout(header: str | None, cap: int) -> str:
    """The ``Timeout`` header to hand wsgidav: the client's first ``Second-N`` choice, at most ``cap``."""
    for item in (header or "").split(","):
        value = item.strip()
        if value.lower().startswith("second-"):
            try:
                seconds = int(value[len("second-") :])
            except ValueError:
                continue
            return f"Second-{max(1, min(seconds, cap))}"
    return f"Second-{cap}"


class LockPolicy(BaseMiddleware):  # type: ignore[misc]  # wsgidav is untyped
    """Apply the lock rules of the module docstring.

    Args:
        wsgidav_app: The ``WsgiDAVApp`` (its lock manager breaks locks).
        next_app: The next member of the stack.
        config: wsgidav's config (``SETTINGS_CONFIG_KEY`` holds the settings).
    """

    def __init__(self, wsgidav_app: Any, next_app: Any, config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, next_app, config)
        settings = config.get(SETTINGS_CONFIG_KEY)
        self.max_timeout = int(getattr(settings, "max_lock_timeout", DEFAULT_MAX_LOCK_TIMEOUT))

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        if method == "LOCK":
            refusal = self._lock_refusal(environ)
            if refusal is not None:
                log.info(
                    "lock refused reason=%s path=%s user=%s remote=%s",
                    refusal,
                    environ.get("PATH_INFO"),
                    environ.get(USER_KEY) or "-",
                    environ.get("REMOTE_ADDR"),
                )
                return _answer(start_response, "403 Forbidden", f"LOCK refused: {refusal}")
            environ["HTTP_TIMEOUT"] = capped_timeout(environ.get("HTTP_TIMEOUT"), self.max_timeout)
        elif method == "UNLOCK" and role_of(environ) is Role.OWNER:
            broken = self._break(environ)
            if broken:
                start_response("204 No Content", [("Content-Length", "0")])
                return [b""]
        return self.next_app(environ, start_response)  # type: ignore[no-any-return]

    def _lock_refusal(self, environ: WSGIEnviron) -> str | None:
        if role_of(environ) is not Role.OWNER:
            return "your role may not write here, so it may not lock"
        provider = environ.get("wsgidav.provider")
        if provider is None or not getattr(provider, "writable", False):
            return None
        resource = provider.get_resource_inst(environ["PATH_INFO"], environ)
        archive = getattr(resource, "archive", None)
        if archive is not None and is_protected(archive):
            return "this archive does not allow writes (ownership.write_allowed)"
        manager = getattr(provider, "lock_manager", None)
        refresh = dav_util.get_content_length(environ) == 0  # a refresh names its lock and adds none
        if (
            resource is not None
            and manager is not None
            and not refresh
            and len(manager.get_url_lock_list(resource.get_ref_url())) >= MAX_LOCKS_PER_RESOURCE
        ):
            return f"this resource holds {MAX_LOCKS_PER_RESOURCE} locks already"
        return None

    def _break(self, environ: WSGIEnviron) -> bool:
        """Release another user's lock for an owner; False when wsgidav should answer (its checks, 4xx)."""
        provider: Any = environ.get("wsgidav.provider")
        manager = getattr(provider, "lock_manager", None)
        token = str(environ.get("HTTP_LOCK_TOKEN", "")).strip().strip("<>")
        if manager is None or not token or dav_util.get_content_length(environ) != 0:
            return False
        lock = manager.get_lock(token)
        user = environ.get(USER_KEY, "anonymous")  # the principal wsgidav records on a lock
        if lock is None or lock.get("principal") == user:
            return False
        resource = provider.get_resource_inst(environ["PATH_INFO"], environ)
        if resource is None or not manager.is_url_locked_by_token(resource.get_ref_url(), token):
            return False
        manager.release(token)
        log.warning(
            "lock broken by owner user=%s holder=%s root=%s",
            user or "-",
            lock.get("principal"),
            lock.get("root"),
        )
        return True


def _answer(start_response: StartResponse, status: str, message: str) -> list[bytes]:
    body = f"{status}: {message}\n".encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return [body]

"""Digest authentication that only accepts nonces this server issued, before they expire, without replays.

Why: wsgidav's authenticator makes a fresh random nonce for each challenge but never checks the nonce a
client sends back, nor its ``nc`` counter: a nonce the server never issued authenticated, and a captured
``Authorization`` header could be replayed at will. ``NonceCheckingAuthenticator`` replaces it in the
middleware stack (``mountd.http.browser.middleware_stack``) and, before wsgidav checks the digest itself:

* issues nonces ``base64("<time>:<random>:<origin>:<hmac>")`` where the HMAC-SHA256 is keyed by the
  server's secret over the rest, so a nonce is verified without storing it; ``origin`` names the process
  that issued it (random per process);
* refuses (401 with a new challenge) a nonce whose HMAC does not verify, and one older than
  ``NONCE_LIFETIME`` seconds or issued by another process of the same server (then with ``stale=true``, so
  clients retry with the new nonce without asking the user again);
* requires ``qop=auth`` (which carries ``nc``) and an ``nc`` strictly greater than any ``nc`` already
  accepted for that nonce (RFC 7616 §3.3/§5.10): the same header twice is a replay and gets 401 (stale).
  The counters live in memory, at most ``MAX_TRACKED_NONCES`` (the oldest are forgotten; their clients get
  a stale challenge).

The secret is random per process unless the server is given one (``DIGEST_KEY_CONFIG_KEY`` in wsgidav's
config): the server processes sharing one socket (``mountd.processes``) get the same key from their
supervisor, so a nonce another process issued verifies and gets a ``stale=true`` challenge (a silent retry)
instead of a plain 401 (a password prompt) when a client's next connection lands on another process. Each
process accepts only its own nonces because the ``nc`` counters live in its memory: a nonce accepted by
several processes could be replayed once per process.

Invariants:
    * A replayed or forged digest never reaches wsgidav's digest check, so never the application.
    * A process accepts only the nonces it issued itself; those of the other processes of the same server
      get a stale challenge; those of another server (another secret) a plain one. Behind a load balancer
      a client re-authenticates once per replica, which clients do silently (stale) only between the
      processes of one server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from wsgidav import util as dav_util  # type: ignore[import-untyped]
from wsgidav.http_authenticator import HTTPAuthenticator  # type: ignore[import-untyped]

from mountd.http.middleware import StartResponse, WSGIEnviron

log = logging.getLogger(__name__)

#: Seconds a nonce is accepted after it was issued.
NONCE_LIFETIME = 3600
#: Nonces whose last ``nc`` is remembered; past this the oldest are forgotten.
MAX_TRACKED_NONCES = 100_000
#: wsgidav config key of the secret nonces are signed with (bytes); a random one per process when absent.
DIGEST_KEY_CONFIG_KEY = "sync.digest_key"
#: Bytes of a nonce secret.
DIGEST_KEY_BYTES = 32
_STALE_KEY = "sync.digest.stale"


class NonceCheckingAuthenticator(HTTPAuthenticator):  # type: ignore[misc]  # wsgidav is untyped
    """wsgidav's authenticator with verified, expiring, non-replayable digest nonces (module docstring)."""

    def __init__(self, wsgidav_app: Any, next_app: Any, config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, next_app, config)
        key = config.get(DIGEST_KEY_CONFIG_KEY)
        self._secret = key if isinstance(key, bytes) and key else secrets.token_bytes(DIGEST_KEY_BYTES)
        # Made when the first nonce is issued or checked, so that a server built before a fork
        # (``mountd.processes``) still gets one origin per process.
        self._origin: tuple[int, str] | None = None
        self._counters: OrderedDict[str, int] = OrderedDict()
        self._counters_lock = threading.Lock()

    @property
    def origin(self) -> str:
        """This process's name in the nonces it issues (random, made once per process)."""
        pid = os.getpid()
        if self._origin is None or self._origin[0] != pid:
            self._origin = (pid, secrets.token_hex(8))
        return self._origin[1]

    def make_nonce(self, now: float | None = None) -> str:
        """A new nonce for a challenge."""
        stamp = f"{int(time.time() if now is None else now)}:{secrets.token_hex(8)}:{self.origin}"
        mac = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()
        return base64.b64encode(f"{stamp}:{mac}".encode()).decode()

    def nonce_age(self, nonce: str) -> float | None:
        """Seconds since this server issued ``nonce``, or None when it did not issue it."""
        issued = self._verified(nonce)
        return None if issued is None else time.time() - issued[0]

    def _verified(self, nonce: str) -> tuple[int, str] | None:
        """``(issue time, origin)`` of a nonce signed with our secret; None for any other text."""
        try:
            stamp, _, mac = base64.b64decode(nonce, validate=True).decode().rpartition(":")
            issued, _, origin = stamp.split(":", 2)
            when = int(issued)
        except (ValueError, UnicodeDecodeError):
            return None
        expected = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, mac):
            return None
        return when, origin

    def send_digest_auth_response(
        self, environ: WSGIEnviron, start_response: StartResponse
    ) -> Iterable[bytes]:
        """401 with a Digest challenge carrying one of our nonces (``stale=true`` when asked)."""
        realm = self.domain_controller.get_domain_realm(environ["PATH_INFO"], environ)
        stale = ", stale=true" if environ.get(_STALE_KEY) else ""
        challenge = f'Digest realm="{realm}", nonce="{self.make_nonce()}", algorithm=MD5, qop="auth"{stale}'
        body = dav_util.to_bytes(self.error_message_401)
        start_response(
            "401 Not Authorized",
            [
                ("WWW-Authenticate", challenge),
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Date", dav_util.get_rfc1123_time()),
            ],
        )
        return [body]

    def handle_digest_auth_request(
        self, environ: WSGIEnviron, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Check nonce and ``nc`` first; then wsgidav's digest check."""
        fields = {
            key: value.strip().strip('"')
            for key, value in self._header_parser.findall(environ.get("HTTP_AUTHORIZATION", "") + ",")
        }
        nonce = fields.get("nonce", "")
        issued = self._verified(nonce)
        age = None if issued is None else time.time() - issued[0]
        problem = None
        if issued is None or age is None:
            problem = "unknown-nonce"
        elif issued[1] != self.origin:
            problem = "other-process-nonce"  # its nc counter lives in the other process's memory
            environ[_STALE_KEY] = True
        elif age > NONCE_LIFETIME or age < -60:
            problem = "expired-nonce"
            environ[_STALE_KEY] = True
        elif fields.get("qop", "").lower() != "auth":
            problem = "no-qop"
        else:
            try:
                count = int(fields.get("nc", ""), 16)
            except ValueError:
                count = -1
            if not self._advance(nonce, count):
                problem = "replayed-nc"
                environ[_STALE_KEY] = True
        if problem is not None:
            log.info(
                "login refused scheme=digest reason=%s user=%s remote=%s",
                problem,
                fields.get("username", "-"),
                environ.get("REMOTE_ADDR"),
            )
            return self.send_digest_auth_response(environ, start_response)
        return super().handle_digest_auth_request(environ, start_response)  # type: ignore[no-any-return]

    def _advance(self, nonce: str, count: int) -> bool:
        """Record ``count`` as the nonce's last ``nc``; False when it is not greater than the last one."""
        if count <= 0:
            return False
        with self._counters_lock:
            last = self._counters.get(nonce, 0)
            if count <= last:
                return False
            self._counters[nonce] = count
            self._counters.move_to_end(nonce)
            while len(self._counters) > MAX_TRACKED_NONCES:
                self._counters.popitem(last=False)
        return True

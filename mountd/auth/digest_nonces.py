"""Digest authentication that only accepts nonces this server issued, before they expire, without replays.

Why: wsgidav's authenticator makes a fresh random nonce for each challenge but never checks the nonce a
client sends back, nor its ``nc`` counter: a nonce the server never issued authenticated, and a captured
``Authorization`` header could be replayed at will. ``NonceCheckingAuthenticator`` replaces it in the
middleware stack (``mountd.http.browser.middleware_stack``) and, before wsgidav checks the digest itself:

* issues nonces ``base64("<time>:<random>:<hmac>")`` where the HMAC-SHA256 is keyed by a per-process secret
  over time and random part, so a nonce is verified without storing it;
* refuses (401 with a new challenge) a nonce whose HMAC does not verify, and one older than
  ``NONCE_LIFETIME`` seconds (then with ``stale=true``, so clients retry with the new nonce without asking
  the user again);
* requires ``qop=auth`` (which carries ``nc``) and an ``nc`` strictly greater than any ``nc`` already
  accepted for that nonce (RFC 7616 §3.3/§5.10): the same header twice is a replay and gets 401 (stale).
  The counters live in memory, at most ``MAX_TRACKED_NONCES`` (the oldest are forgotten; their clients get
  a stale challenge).

Invariants:
    * A replayed or forged digest never reaches wsgidav's digest check, so never the application.
    * Nonces of one mountd process are not accepted by another (each has its own secret): behind a load
      balancer a client re-authenticates once per replica (stale challenge), which clients do silently.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
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
_STALE_KEY = "sync.digest.stale"


class NonceCheckingAuthenticator(HTTPAuthenticator):  # type: ignore[misc]  # wsgidav is untyped
    """wsgidav's authenticator with verified, expiring, non-replayable digest nonces (module docstring)."""

    def __init__(self, wsgidav_app: Any, next_app: Any, config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, next_app, config)
        self._secret = secrets.token_bytes(32)
        self._counters: OrderedDict[str, int] = OrderedDict()
        self._counters_lock = threading.Lock()

    def make_nonce(self, now: float | None = None) -> str:
        """A new nonce for a challenge."""
        stamp = f"{int(time.time() if now is None else now)}:{secrets.token_hex(8)}"
        mac = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()
        return base64.b64encode(f"{stamp}:{mac}".encode()).decode()

    def nonce_age(self, nonce: str) -> float | None:
        """Seconds since this server issued ``nonce``, or None when it did not issue it."""
        try:
            stamp, _, mac = base64.b64decode(nonce, validate=True).decode().rpartition(":")
            issued = int(stamp.split(":", 1)[0])
        except (ValueError, UnicodeDecodeError):
            return None
        expected = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, mac):
            return None
        return time.time() - issued

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
        age = self.nonce_age(nonce)
        problem = None
        if age is None:
            problem = "unknown-nonce"
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

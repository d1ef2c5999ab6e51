"""Who may use mountd and with which role: the access policy, a wsgidav domain controller, role checks.

``auth_config`` decides the policy once, at startup, and gives ``build_app`` wsgidav's authenticator
settings with ``UsersDomainController`` over the users file (``mountd.auth.users``). Per request, wsgidav's
``HTTPAuthenticator`` asks the controller and leaves the user's role in ``environ["wsgidav.auth.roles"]``;
``role_of`` and ``may_write`` read it for the resources that write.

The policy (``docs/security.md``, "Access control"):

============  ==============  ===================  ==========================================================
users file    bound address   ``allow_anonymous``  anonymous requests
============  ==============  ===================  ==========================================================
none          loopback        either               OWNER: one-machine use, as the reference's ``sync-mount``
none          other           no                   refused at startup (``SettingsError``)
none          other           yes                  CONSUMER (read-only); writes need a users file
given         any             no                   401 with a challenge; users get their file's role
given         any             yes                  CONSUMER when the request has no ``Authorization``
                                                   header; a client must send its credentials unasked
                                                   (rclone, curl ``-u``) to act as its user
============  ==============  ===================  ==========================================================

Invariants:
    * GET and HEAD of paths under ``/.well-known/sync/`` (health and metrics) never need credentials; they
      run as CONSUMER.
    * Deny by default: a request that did not pass through the controller (no role in the environ) is a
      CONSUMER; a Consumer never writes; an Owner writes only where the archive's manifest says
      ``ownership.write_allowed`` (spec §6.2, which the reference itself does not check).
    * Basic authentication checks the slow scrypt hash once per user and password: a success is remembered
      as an HMAC of the password under a per-process random key, so a client that sends its credentials
      with every request (they all do) pays the hash once, while wrong passwords pay it every time. At most
      ``VERIFY_CONCURRENCY`` hashes run at once (each takes 32 MiB). An unknown user costs the same hash as
      a known one, so response times do not tell which names exist.
    * Digest is offered only when the file has ``digest_ha1`` values; the challenge is then Digest (basic
      credentials sent unasked are still accepted), otherwise Basic. HA1 values are for the file's realm.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wsgidav.dc.base_dc import BaseDomainController  # type: ignore[import-untyped]

from broker.settings import SettingsError
from mountd.auth.users import DEFAULT_REALM, PasswordHash, Role, UserTable
from mountd.errors import UsersFileError

if TYPE_CHECKING:
    from sync_format import Manifest

log = logging.getLogger(__name__)

#: Environ key where wsgidav 4 keeps the authenticated user's roles (a tuple; ours has one ``Role`` value).
ROLES_KEY = "wsgidav.auth.roles"
#: Environ key of the authenticated user name ("" when anonymous).
USER_KEY = "wsgidav.auth.user_name"
#: Path prefix of the health and metrics endpoints, readable without credentials.
WELL_KNOWN_PREFIX = "/.well-known/sync/"
#: Methods allowed anonymously under ``WELL_KNOWN_PREFIX``.
WELL_KNOWN_METHODS = frozenset({"GET", "HEAD"})
#: Key under which ``auth_config`` hands the policy to the controller through wsgidav's config (wsgidav
#: builds the controller itself, from the class and the config).
POLICY_CONFIG_KEY = "sync_access_policy"
#: scrypt hashes computed at once; more wait. Each needs 32 MiB and a core for ~0.17 s.
VERIFY_CONCURRENCY = 2
#: Host names that mean loopback without being IP literals.
LOOPBACK_HOST_NAMES = frozenset({"localhost"})


@dataclass(frozen=True)
class AccessPolicy:
    """Who may use the server.

    Attributes:
        users: The users file, or None for no logins at all.
        anonymous: The role of requests without credentials, or None when they must authenticate.
    """

    users: UserTable | None
    anonymous: Role | None

    @property
    def realm(self) -> str:
        """The realm of challenges (the users file's)."""
        return self.users.realm if self.users is not None else DEFAULT_REALM

    @property
    def digest(self) -> bool:
        """Whether digest authentication is offered."""
        return self.users is not None and self.users.has_digest


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine.

    Args:
        host: The address or name bound (IPv6 with or without brackets).

    Returns:
        True for ``localhost`` and loopback literals (127.0.0.0/8, ::1); False for wildcards and others.
    """
    bare = host.strip().strip("[]").lower()
    if bare in LOOPBACK_HOST_NAMES:
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def access_policy(users: UserTable | None, *, host: str, allow_anonymous: bool) -> AccessPolicy:
    """Decide who may use a server bound to ``host`` (the table in the module docstring).

    Args:
        users: The users file, or None.
        host: The address the server binds.
        allow_anonymous: The operator's ``--allow-anonymous``.

    Returns:
        The policy.

    Raises:
        SettingsError: No users file, a non-loopback address and no ``allow_anonymous``.
        UsersFileError: The users file has no users (nobody could log in).
    """
    if users is not None:
        if not users.users:
            raise UsersFileError("has no users: add one with `syncctl user add`", path=users.source)
        return AccessPolicy(users, Role.CONSUMER if allow_anonymous else None)
    if is_loopback(host):
        return AccessPolicy(None, Role.OWNER)
    if allow_anonymous:
        return AccessPolicy(None, Role.CONSUMER)
    raise SettingsError(
        f"refusing to serve {host} without authentication: pass --auth FILE (a users file, see "
        "`syncctl user`) or --allow-anonymous (SYNC_ALLOW_ANONYMOUS=1) for read-only anonymous access"
    )


def auth_config(users: UserTable | None, *, host: str, allow_anonymous: bool) -> dict[str, Any]:
    """The wsgidav configuration entries for ``access_policy``'s decision.

    Args:
        users: The users file, or None.
        host: The address the server binds.
        allow_anonymous: The operator's ``--allow-anonymous``.

    Returns:
        ``http_authenticator`` (with ``UsersDomainController``) and the policy for the controller.

    Raises:
        SettingsError: As ``access_policy``.
        UsersFileError: As ``access_policy``.
    """
    policy = access_policy(users, host=host, allow_anonymous=allow_anonymous)
    log.info(
        "access policy users=%d anonymous=%s digest=%s",
        0 if policy.users is None else len(policy.users.users),
        policy.anonymous.value if policy.anonymous is not None else "refused",
        policy.digest,
    )
    return {
        "http_authenticator": {
            "domain_controller": UsersDomainController,
            "accept_basic": True,
            "accept_digest": policy.digest,
            "default_to_digest": policy.digest,
            "trusted_auth_header": None,
        },
        POLICY_CONFIG_KEY: policy,
    }


def role_of(environ: dict[str, Any]) -> Role:
    """The role of the request's user.

    Args:
        environ: The request's environ, after wsgidav's authenticator.

    Returns:
        OWNER only when the controller granted it; CONSUMER otherwise.
    """
    roles = environ.get(ROLES_KEY) or ()
    return Role.OWNER if Role.OWNER.value in roles else Role.CONSUMER


def may_write(environ: dict[str, Any], manifest: Manifest | None = None) -> bool:
    """Whether the request may write (PUT, DELETE, MOVE, COPY, MKCOL, PROPPATCH...).

    Args:
        environ: The request's environ, after wsgidav's authenticator.
        manifest: The manifest of the archive the write changes, when it changes an existing archive;
            its ``ownership.write_allowed`` must then be true as well (spec §6.2).

    Returns:
        True for an Owner, where the archive (if any) allows writes.
    """
    if role_of(environ) is not Role.OWNER:
        return False
    return manifest is None or manifest.write_allowed


def _is_well_known(environ: dict[str, Any]) -> bool:
    method = environ.get("REQUEST_METHOD")
    return method in WELL_KNOWN_METHODS and str(environ.get("PATH_INFO", "")).startswith(WELL_KNOWN_PREFIX)


def _grant(environ: dict[str, Any], role: Role) -> None:
    environ[ROLES_KEY] = (role.value,)


class UsersDomainController(BaseDomainController):  # type: ignore[misc]
    """wsgidav's domain controller over an ``AccessPolicy`` (built by wsgidav from ``auth_config``).

    Args:
        wsgidav_app: The application (unused; wsgidav's contract).
        config: wsgidav's configuration, holding the policy under ``POLICY_CONFIG_KEY``.
    """

    def __init__(self, wsgidav_app: Any, config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, config)
        policy = config[POLICY_CONFIG_KEY]
        assert isinstance(policy, AccessPolicy)
        self.policy = policy
        self._process_key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._hashing = threading.BoundedSemaphore(VERIFY_CONCURRENCY)
        # Checked for unknown users so that they cost as much as known ones (one hash at startup).
        self._decoy = PasswordHash.new(secrets.token_urlsafe(16)) if policy.users is not None else None

    def __str__(self) -> str:
        return f"{self.__class__.__name__}()"

    def get_domain_realm(self, path_info: str, environ: dict[str, Any] | None) -> str:
        """One realm for the whole server: digest HA1 values are made for it."""
        return self.policy.realm

    def require_authentication(self, realm: str, environ: dict[str, Any] | None) -> bool:
        """False (and the anonymous role set) when the request may go on without credentials."""
        if environ is None:  # wsgidav asking at startup whether the share is anonymous
            return self.policy.anonymous is None
        if self.policy.users is None:
            assert self.policy.anonymous is not None
            _grant(environ, self.policy.anonymous)
            return False
        if _is_well_known(environ):
            _grant(environ, Role.CONSUMER)
            return False
        if self.policy.anonymous is not None and not environ.get("HTTP_AUTHORIZATION"):
            _grant(environ, self.policy.anonymous)
            return False
        return True

    def basic_auth_user(self, realm: str, user_name: str, password: str, environ: dict[str, Any]) -> bool:
        """Check a user name and password; on success set the user's role."""
        users = self.policy.users
        user = users.get(user_name) if users is not None else None
        if user is None:
            if self._decoy is not None:
                self._slow_verify(self._decoy, password)
            log.info("login refused scheme=basic reason=unknown-user remote=%s", environ.get("REMOTE_ADDR"))
            return False
        tag = hmac.new(self._process_key, password.encode("utf-8"), hashlib.sha256).digest()
        with self._lock:
            known = self._verified.get(user_name)
        if known is None or not hmac.compare_digest(known, tag):
            if not self._slow_verify(user.password_hash, password):
                log.info(
                    "login refused scheme=basic reason=password user=%s remote=%s",
                    user_name,
                    environ.get("REMOTE_ADDR"),
                )
                return False
            with self._lock:
                self._verified[user_name] = tag
            log.info("login user=%s role=%s scheme=basic", user_name, user.role.value)
        _grant(environ, user.role)
        return True

    def _slow_verify(self, password_hash: PasswordHash, password: str) -> bool:
        with self._hashing:
            return password_hash.verify(password)

    def supports_http_digest_auth(self) -> bool:
        """Whether any user has a digest HA1."""
        return self.policy.digest

    def digest_auth_user(self, realm: str, user_name: str, environ: dict[str, Any]) -> str | bool:
        """The user's stored HA1 (and the user's role set), or False when digest is not possible."""
        users = self.policy.users
        user = users.get(user_name) if users is not None else None
        if user is None or user.digest_ha1 is None or realm != self.policy.realm:
            log.info(
                "login refused scheme=digest reason=no-digest-credentials user=%s remote=%s",
                user_name,
                environ.get("REMOTE_ADDR"),
            )
            return False
        _grant(environ, user.role)
        return user.digest_ha1

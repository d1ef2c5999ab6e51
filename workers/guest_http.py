"""Request headers of ABI v2 ``http_send``: parse the guest's header block, apply the rules, fill in secrets.

Runs in the parent, which trusts nothing the child sends. A guest passes ``Name: value`` lines (``\\n`` or
``\\r\\n``). Invariants:

* At most ``MAX_HEADERS`` headers; names are HTTP tokens, values carry no control characters and nothing
  beyond Latin-1 (what HTTP/1.1 can carry; the client cannot encode the rest).
* Headers the client owns (``Host``, ``Content-Length``, ``Transfer-Encoding``, ``Connection``, ...) are
  refused: the guest cannot smuggle a second request or confuse framing.
* Secrets: a value may hold ``${NAME}`` references. NAME must be listed in the manifest's
  ``permissions.allow_env`` *and* supplied by the operator (``SYNC_GUEST_SECRET_<NAME>``) *and* bound by the
  operator to the request's destination (``SYNC_GUEST_SECRET_<NAME>_HOSTS``: the URL's host and port match
  one of its patterns) *and* the request is https; otherwise the request is refused. The archive only asks;
  the operator decides where a secret may go, so an archive listing its own host cannot collect the secret.
  A secret without a binding is never sent. A binding names host and port, never a scheme, so without the
  https rule the archive would choose whether the operator's credential crosses the network in clear text
  (``http://api.example.com:443/``); there is deliberately no setting to allow plain http for a secret.
  The value is substituted here, after the child is done with the header block, so a guest never reads a
  secret.
* Credential headers (``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``X-Api-Key``,
  ``X-Auth-Token``) are refused unless their value references a secret: credentials come from the operator,
  never from the archive. Headers that carried a secret are reported, with the bindings of the secrets
  used, so egress sends them only where every one of those bindings allows (and never to another origin on
  a redirect).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from sync_format.hosts import host_allowed, parse_url

#: Most request headers a guest may send.
MAX_HEADERS = 32
#: Headers the HTTP client sets itself; a guest may not.
FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
        "expect",
        "proxy-connection",
    }
)
#: Headers that carry credentials: only from operator secrets.
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token"}
)

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_SECRET_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Control characters, and anything beyond Latin-1: HTTP/1.1 sends field values as bytes (``http.client``
# encodes them as Latin-1 and raises on the rest, which would end the parent's session with the child).
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")


@dataclass(frozen=True)
class PreparedHeaders:
    """Headers ready to send.

    Attributes:
        headers: ``(name, value)`` pairs with secrets filled in.
        secret_names: Lower-case names of the headers that carry a secret (dropped on a cross-origin hop).
        secrets_used: The secret names referenced (for the log; never their values).
        secret_hosts: The operator's binding of each secret used (host patterns): egress re-checks every
            hop against all of them.
    """

    headers: tuple[tuple[str, str], ...]
    secret_names: frozenset[str]
    secrets_used: tuple[str, ...]
    secret_hosts: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class HeaderRefusal:
    """Why a header block was refused: a stable ``error_code`` and a reason for people."""

    error_code: str
    reason: str


def prepare_headers(
    block: bytes,
    *,
    allow_env: tuple[str, ...],
    secrets: Mapping[str, str],
    url: str = "",
    bindings: Mapping[str, tuple[str, ...]] | None = None,
) -> PreparedHeaders | HeaderRefusal:
    """Parse and check a guest's header block and substitute granted secrets.

    Args:
        block: The guest's raw header block.
        allow_env: The manifest's ``permissions.allow_env`` (secret names the archive may use).
        secrets: Operator-supplied secret values by name.
        url: The request's URL: a secret is used only when its binding matches this host and port.
        bindings: The operator's host patterns by secret name; a secret absent here is never sent.

    Returns:
        The headers to send, or the refusal.
    """
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return HeaderRefusal("bad_header", "header block is not UTF-8")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    lines = [line for line in lines if line]
    if len(lines) > MAX_HEADERS:
        return HeaderRefusal("too_many_headers", f"{len(lines)} headers, at most {MAX_HEADERS}")
    bound = bindings or {}
    headers: list[tuple[str, str]] = []
    secret_names: set[str] = set()
    used: list[str] = []
    for line in lines:
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not _TOKEN.match(name) or _BAD_VALUE.search(value):
            return HeaderRefusal("bad_header", f"malformed header line {line[:60]!a}")
        lower = name.lower()
        if lower in FORBIDDEN_HEADERS or (lower.startswith("proxy-") and lower != "proxy-authorization"):
            return HeaderRefusal("forbidden_header", f"header {name} is set by the host")
        refs = _SECRET_REF.findall(value)
        if lower in CREDENTIAL_HEADERS and not refs:
            return HeaderRefusal(
                "credential_header", f"{name} must come from an operator secret (${{NAME}} in allow_env)"
            )
        for ref in refs:
            if ref not in allow_env:
                return HeaderRefusal("secret_not_granted", f"secret {ref} is not in permissions.allow_env")
            if ref not in secrets:
                return HeaderRefusal("secret_missing", f"secret {ref} is not supplied by the operator")
            refusal = _check_binding(ref, url, bound)
            if refusal is not None:
                return refusal
            used.append(ref)
        if refs:
            value = _SECRET_REF.sub(lambda m: secrets[m.group(1)], value)
            if _BAD_VALUE.search(value):
                return HeaderRefusal(
                    "bad_header", f"secret in {name} holds control or non-Latin-1 characters"
                )
            secret_names.add(lower)
        headers.append((name, value))
    names = tuple(dict.fromkeys(used))
    return PreparedHeaders(
        tuple(headers), frozenset(secret_names), names, tuple(tuple(bound[n]) for n in names)
    )


def _check_binding(name: str, url: str, bindings: Mapping[str, tuple[str, ...]]) -> HeaderRefusal | None:
    """Refuse a secret the operator did not bind to this request's destination (fail-closed: no binding,
    or a URL without a host a binding could match, refuses)."""
    patterns = bindings.get(name)
    if not patterns:
        return HeaderRefusal(
            "secret_not_bound", f"secret {name} is bound to no host (SYNC_GUEST_SECRET_{name}_HOSTS)"
        )
    target = parse_url(url)
    if target is None or not host_allowed(target.host, patterns, target.port):
        where = "this URL" if target is None else f"{target.host}:{target.port}"
        return HeaderRefusal("secret_not_bound", f"secret {name} is not bound to {where}")
    if target.scheme != "https":
        return HeaderRefusal(
            "secret_needs_https", f"secret {name} is sent over https only, not {target.scheme}"
        )
    return None


def bound_everywhere(secret_hosts: tuple[tuple[str, ...], ...], host: str, port: int | None) -> bool:
    """Whether ``host:port`` is matched by every binding in ``secret_hosts`` (none at all matches nothing).

    Args:
        secret_hosts: The bindings (host patterns) of the secrets a request carries.
        host: The hop's host.
        port: The hop's port.

    Returns:
        True when the secret headers may go there.
    """
    return bool(secret_hosts) and all(host_allowed(host, patterns, port) for patterns in secret_hosts)

"""The one host allow-list rule, used by every component that decides where a guest may connect (spec §2.5).

An entry is either an exact host (``api.example.com``) or a wildcard (``*.example.com``) that matches hosts
*below* the suffix at a dot boundary and never the apex. Hosts and entries are compared case-insensitively
after IDNA encoding with a trailing dot removed. An entry may pin a port (``example.com:8443``); without one,
any port matches. An empty list allows nothing, and an empty entry, a bare ``*`` or a ``*`` anywhere but a
leading ``*.`` label matches nothing. URLs are parsed with a real URL parser: only http/https, userinfo is
refused (``https://allowed:443@evil/``), and the host compared is the one the request would go to. This
replaces the reference's three different and bypassable rules (§9 D1, D2, D16).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class HostPattern:
    """One parsed allow-list entry.

    Attributes:
        host: Normalised host, or the suffix (without ``*.``) for a wildcard.
        wildcard: True for ``*.suffix`` entries.
        port: The pinned port, or None for any port.
    """

    host: str
    wildcard: bool
    port: int | None

    def matches(self, host: str, port: int | None) -> bool:
        """Tell whether a normalised host (and port) is allowed by this entry.

        Args:
            host: A host from ``normalize_host``.
            port: The request's port, or None when unknown.

        Returns:
            True when allowed.
        """
        if self.port is not None and port != self.port:
            return False
        if self.wildcard:
            # A wildcard names DNS labels: it never matches an IP literal, nor a numeric last label that
            # resolvers read as IPv4 shorthand (``*.0.0.1`` must not admit ``127.0.0.1`` or ``127.0.1``).
            if ":" in host or host.rsplit(".", 1)[-1].isdigit():
                return False
            return host.endswith("." + self.host) and len(host) > len(self.host) + 1
        return host == self.host


def normalize_host(host: str) -> str | None:
    """Lower-case, IDNA-encode and strip one trailing dot; IP literals are normalised.

    Args:
        host: A host name or IP literal (IPv6 with or without brackets).

    Returns:
        The normalised host, or None when it is not a valid host.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text.endswith("."):
        text = text[:-1]
    if not text or "*" in text or "/" in text or "@" in text or any(c.isspace() for c in text):
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        encoded = text.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    labels = encoded.split(".")
    if any(not label or len(label) > 63 for label in labels) or len(encoded) > 253:
        return None
    return encoded


def parse_pattern(entry: str) -> HostPattern | None:
    """Parse one ``allow_hosts`` entry.

    Args:
        entry: ``host``, ``*.suffix``, optionally followed by ``:port``; IPv6 in brackets.

    Returns:
        The pattern, or None when the entry can never match (empty, bare ``*``, malformed).
    """
    text = entry.strip()
    port: int | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None
        rest = text[close + 1 :]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
        text = text[: close + 1]
    elif text.count(":") == 1:
        text, _, port_text = text.partition(":")
        if not port_text.isdigit():
            return None
        port = int(port_text)
    if port is not None and not 0 < port < 65536:
        return None
    wildcard = text.startswith("*.")
    host = normalize_host(text[2:] if wildcard else text)
    if host is None:
        return None
    if wildcard and _is_ip(host):
        return None
    return HostPattern(host=host, wildcard=wildcard, port=port)


def invalid_entries(allow_hosts: Sequence[str]) -> list[str]:
    """Entries of an allow-list that can never match (for warnings when packing or inspecting).

    Args:
        allow_hosts: The manifest's ``permissions.allow_hosts``.

    Returns:
        The entries that parse to nothing.
    """
    return [entry for entry in allow_hosts if parse_pattern(entry) is None]


def host_allowed(host: str, allow_hosts: Sequence[str], port: int | None = None) -> bool:
    """Apply the allow-list rule to a host.

    Args:
        host: The host the request goes to.
        allow_hosts: The manifest's ``permissions.allow_hosts``.
        port: The request's port, checked only against entries that pin one.

    Returns:
        True when some entry allows the host.
    """
    normalized = normalize_host(host)
    if normalized is None:
        return False
    for entry in allow_hosts:
        pattern = parse_pattern(entry)
        if pattern is not None and pattern.matches(normalized, port):
            return True
    return False


@dataclass(frozen=True)
class UrlTarget:
    """Where a URL would send a request.

    Attributes:
        scheme: ``http`` or ``https``.
        host: The normalised host.
        port: The explicit or default port.
    """

    scheme: str
    host: str
    port: int


def parse_url(url: str) -> UrlTarget | None:
    """Parse a guest-supplied URL strictly.

    Args:
        url: Absolute http(s) URL.

    Returns:
        Its target, or None when the URL is not an acceptable request target (other scheme, userinfo,
        no host, bad port, control characters).
    """
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES or "@" in parts.netloc or parts.hostname is None:
        return None
    host = normalize_host(parts.hostname)
    if host is None:
        return None
    return UrlTarget(scheme, host, port if port is not None else (443 if scheme == "https" else 80))


def url_allowed(url: str, allow_hosts: Sequence[str]) -> bool:
    """Tell whether a guest may request ``url``.

    Args:
        url: The URL (every redirect hop must be checked again by the caller).
        allow_hosts: The manifest's ``permissions.allow_hosts``.

    Returns:
        True when the URL parses strictly and its host is allowed.
    """
    target = parse_url(url)
    return target is not None and host_allowed(target.host, allow_hosts, target.port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class PrivateEntry:
    """One entry of the operator's ``SYNC_EGRESS_ALLOW_PRIVATE``: a non-public destination it opens.

    The manifest alone never reaches a loopback, private, link-local, CGNAT, multicast, unspecified or
    reserved address; an operator entry opens one such destination, and the manifest must still list the
    host. Metadata addresses stay closed whatever the entries say (``workers.addresses``).

    Attributes:
        text: The entry as written (for messages).
        host: A normalised host name when the entry names one (it opens that name, whatever it resolves to).
        network: The network an address must fall in when the entry is an address or a CIDR.
        port: The port it opens, or None for ``*`` (every port).
    """

    text: str
    host: str | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    port: int | None

    def opens(self, host: str, address: str, port: int) -> bool:
        """Tell whether this entry opens a request to ``host`` at ``address``:``port``.

        Args:
            host: The request's normalised host (a name or an IP literal).
            address: The address the connection goes to.
            port: The destination port.

        Returns:
            True when the port matches and the host name or the address is covered.
        """
        if self.port is not None and port != self.port:
            return False
        if self.host is not None:
            return host == self.host
        assert self.network is not None  # one of host and network is set
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.version == self.network.version and ip in self.network


def parse_private_entry(entry: str) -> PrivateEntry:
    """Parse one ``SYNC_EGRESS_ALLOW_PRIVATE`` entry: ``HOST:PORT`` or ``CIDR:PORT``, PORT a number or ``*``.

    IPv6 addresses and networks go in brackets (``[::1]:8080``, ``[fd00::/8]:*``).

    Args:
        entry: The entry.

    Returns:
        The parsed entry.

    Raises:
        ValueError: The entry is malformed (the message says how).
    """
    text = entry.strip()
    where, sep, port_text = text.rpartition(":")
    if not sep or not where:
        raise ValueError(f"egress allow-private entry {entry!r} must be HOST:PORT or CIDR:PORT (PORT or *)")
    port: int | None = None
    if port_text != "*":
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"egress allow-private entry {entry!r}: port must be 1-65535 or *")
        port = int(port_text)
    if where.startswith("[") and where.endswith("]"):
        where = where[1:-1]
    elif ":" in where:
        raise ValueError(f"egress allow-private entry {entry!r}: put IPv6 addresses in brackets")
    if "/" in where:
        try:
            network = ipaddress.ip_network(where, strict=False)
        except ValueError as exc:
            raise ValueError(f"egress allow-private entry {entry!r}: {exc}") from exc
        return PrivateEntry(text, None, network, port)
    host = normalize_host(where)
    if host is None:
        raise ValueError(f"egress allow-private entry {entry!r}: {where!r} is not a host")
    if _is_ip(host):
        return PrivateEntry(text, None, ipaddress.ip_network(host), port)
    return PrivateEntry(text, host, None, port)

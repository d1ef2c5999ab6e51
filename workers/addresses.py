"""Where a guest's request may go at the address level: name resolution and the private-address rule.

``system_resolver`` resolves with a timeout (``getaddrinfo`` has none of its own). ``is_restricted_address``
is the rule ``workers.egress`` applies to every resolved address: loopback, private, ULA, link-local,
CGNAT, multicast, unspecified, reserved and cloud-metadata addresses are outside the public internet, with
IPv4 embedded in mapped, IPv4-compatible, NAT64 (``64:ff9b::/96``, ``64:ff9b:1::/48``), 6to4 and Teredo
IPv6 addresses judged as IPv4. ``is_metadata_address`` is the stricter rule nothing overrides: metadata
addresses in any of those forms.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Sequence
from typing import Protocol

#: Addresses that hand out cloud credentials or control a cloud VM; never reachable, not even through the
#: operator's ``SYNC_EGRESS_ALLOW_PRIVATE``: AWS/GCP/Azure/OpenStack IMDS (169.254.169.254 and AWS's IPv6
#: fd00:ec2::254), ECS task metadata (169.254.170.2), EKS pod identity (169.254.170.23, fd00:ec2::23),
#: Alibaba (100.100.100.200), Oracle (192.0.0.192) and the Azure wire server (168.63.129.16, a *global*
#: address, so only this list stops it).
METADATA_ADDRESSES: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "169.254.170.23",
        "100.100.100.200",
        "192.0.0.192",
        "168.63.129.16",
        "fd00:ec2::254",
        "fd00:ec2::23",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: RFC 8215 local-use NAT64: the IPv4 address sits where the operator's prefix length puts it, so the whole
#: block is treated as restricted, and every RFC 6052 position is checked against the metadata set.
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_TEREDO = ipaddress.ip_network("2001::/32")
#: IPv4-compatible IPv6 (deprecated ``::a.b.c.d``); ``::`` and ``::1`` are judged as themselves.
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
#: Blocks Python's ``is_global`` (3.11) still calls global but which no archive may reach.
_NOT_PUBLIC = (_NAT64_LOCAL, ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("192.0.0.0/24"))
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Resolver(Protocol):
    """Turns a host name into addresses; the seam tests use to point names at their own servers."""

    def __call__(self, host: str, port: int, timeout: float) -> Sequence[str]:
        """Resolve ``host``.

        Args:
            host: A normalised host name (never an IP literal).
            port: The port the request goes to.
            timeout: Seconds left; raise ``TimeoutError`` when they run out.

        Returns:
            Address strings, IPv4 or IPv6.

        Raises:
            OSError: The name does not resolve (``TimeoutError`` when out of time).
        """
        ...


def system_resolver(host: str, port: int, timeout: float) -> list[str]:
    """Resolve with ``socket.getaddrinfo``, giving up after ``timeout`` seconds.

    The lookup runs in a daemon thread because ``getaddrinfo`` has no timeout of its own; an abandoned lookup
    finishes in the background and its answer is dropped.

    Args:
        host: Host name.
        port: Destination port.
        timeout: Seconds to wait.

    Returns:
        The distinct addresses, in resolver order.

    Raises:
        OSError: Resolution failed; ``TimeoutError`` when it took too long.
    """
    answers: list[list[str]] = []
    errors: list[OSError] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            errors.append(exc)
            return
        answers.append(list(dict.fromkeys(str(info[4][0]) for info in infos)))

    thread = threading.Thread(target=lookup, name="egress-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"resolving {host} took longer than {timeout:.3f}s")
    if errors:
        raise errors[0]
    return answers[0]


def is_restricted_address(address: str) -> bool:
    """Tell whether an address is outside the public internet (the private-address rule).

    Args:
        address: An IPv4 or IPv6 address (a zone id is ignored).

    Returns:
        True for loopback, private, ULA, link-local, CGNAT, multicast, unspecified, reserved and metadata
        addresses, judging IPv4 embedded in mapped, IPv4-compatible, NAT64, 6to4 and Teredo (server and
        client) IPv6 addresses as IPv4.
    """
    ip = _plain(ipaddress.ip_address(address))
    if is_metadata_address(str(ip)):
        return True
    embedded = embedded_ipv4(ip)
    if not embedded or isinstance(ip, ipaddress.IPv4Address):
        return _not_public(ip)
    if any(_not_public(v4) for v4 in embedded) or ip in _NAT64_LOCAL:
        return True
    # Mapped, compatible and NAT64 addresses are only the IPv4 they carry (their IPv6 forms count as
    # "reserved"); 6to4 and Teredo addresses are judged both ways.
    judged_as_ipv4 = ip.ipv4_mapped is not None or ip in _V4_COMPATIBLE or ip in _NAT64
    return not judged_as_ipv4 and _not_public(ip)


def is_metadata_address(address: str) -> bool:
    """Tell whether an address is a cloud metadata address in any form (never reachable).

    Args:
        address: An IPv4 or IPv6 address.

    Returns:
        True when the address, or an IPv4 address embedded in it (every form of ``embedded_ipv4``), is in
        ``METADATA_ADDRESSES``.
    """
    ip = _plain(ipaddress.ip_address(address))
    return ip in METADATA_ADDRESSES or any(v4 in METADATA_ADDRESSES for v4 in embedded_ipv4(ip))


def embedded_ipv4(ip: _IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries, by the transition mechanism that would reach them.

    Args:
        ip: An address (IPv4 addresses carry none).

    Returns:
        The embedded IPv4 addresses: mapped ``::ffff:0:0/96``, IPv4-compatible ``::/96``, NAT64
        ``64:ff9b::/96``, every RFC 6052 position in ``64:ff9b:1::/48``, 6to4 ``2002::/16``, and both the
        Teredo server and the (de-obfuscated) client of ``2001::/32``; empty for other addresses.
    """
    if isinstance(ip, ipaddress.IPv4Address):
        return ()
    value = int(ip)
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    if ip in _V4_COMPATIBLE and value > 1:
        return (ipaddress.IPv4Address(value & 0xFFFFFFFF),)
    if ip in _NAT64:
        return (ipaddress.IPv4Address(value & 0xFFFFFFFF),)
    if ip in _NAT64_LOCAL:
        return tuple(ipaddress.IPv4Address(v) for v in _rfc6052_candidates(value))
    if ip.sixtofour is not None:
        return (ip.sixtofour,)
    if ip in _TEREDO and ip.teredo is not None:
        server, client = ip.teredo
        return (server, client)
    return ()


def _rfc6052_candidates(value: int) -> list[int]:
    """The IPv4 address at each RFC 6052 prefix length (32..96; bits 64..71, the u octet, are skipped)."""
    bits = f"{value:0128b}"
    found = []
    for prefix in (32, 40, 48, 56, 64, 96):
        spread = [i for i in range(prefix, 128) if not 64 <= i < 72][:32]
        found.append(int("".join(bits[i] for i in spread), 2))
    return found


def _plain(ip: _IPAddress) -> _IPAddress:
    """The address without an IPv6 zone id (``fd00:ec2::254%eth0`` is ``fd00:ec2::254``)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return ipaddress.IPv6Address(int(ip))
    return ip


def _not_public(ip: _IPAddress) -> bool:
    return (
        ip in METADATA_ADDRESSES
        or not ip.is_global
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_link_local
        or ip.is_loopback
        or ip.is_unspecified
        or any(ip in net for net in _NOT_PUBLIC)
    )

"""Where a guest's request may go at the address level: name resolution and the private-address rule.

``system_resolver`` resolves with a timeout (``getaddrinfo`` has none of its own). ``is_restricted_address``
is the rule ``workers.egress`` applies to every resolved address: loopback, private, ULA, link-local,
CGNAT, multicast, unspecified, reserved and cloud-metadata addresses are outside the public internet, with
IPv4 embedded in mapped, NAT64 and 6to4 IPv6 addresses judged as IPv4.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Sequence
from typing import Protocol

#: Addresses that hand out cloud credentials; never reachable, even when listed exactly.
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
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
        address: An IPv4 or IPv6 address.

    Returns:
        True for loopback, private, ULA, link-local, CGNAT, multicast, unspecified, reserved and metadata
        addresses, judging IPv4 embedded in mapped, NAT64 and 6to4 IPv6 addresses as IPv4.
    """
    ip = _embedded_ipv4(ipaddress.ip_address(address))
    return (
        ip in METADATA_ADDRESSES
        or not ip.is_global
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_link_local
        or ip.is_loopback
        or ip.is_unspecified
    )


def _embedded_ipv4(ip: _IPAddress) -> _IPAddress:
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip

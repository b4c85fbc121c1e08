"""Caller addresses as the limits and allowlists must see them."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(address: str | None) -> IPAddress | None:
    """The address, with an IPv4-mapped IPv6 one (``::ffff:a.b.c.d``) as its IPv4 self.

    A dual-stack listener reports every IPv4 caller in mapped form: read as IPv6 they
    would all share one /64, and match no IPv4 network of an allowlist.
    """
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip

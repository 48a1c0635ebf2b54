"""IPv6 address scope (RFC 4291 §2.4): which addresses may cross the IPv6 Internet at all.

A Teredo server or relay forwards between the Internet and Teredo clients; a packet
whose source or destination is not global unicast has no business crossing it, and
forwarding one lets a remote host speak as a neighbour (link-local) or reach a site's
private space.
"""

from __future__ import annotations

from ipaddress import IPv6Network

# The same classes as networks, for prefix filters (the relay's never-served list).
NOT_GLOBAL_UNICAST = tuple(
    IPv6Network(prefix)
    for prefix in (
        "ff00::/8",  # multicast (RFC 4291 §2.7)
        "fe80::/10",  # link-local (RFC 4291 §2.5.6)
        "fec0::/10",  # site-local, deprecated (RFC 3879)
        "fc00::/7",  # unique local (RFC 4193)
        "::/96",  # unspecified, loopback and IPv4-compatible (RFC 4291 §2.5.2, §2.5.3, §2.5.5.1)
        "::ffff:0:0/96",  # IPv4-mapped (RFC 4291 §2.5.5.2)
    )
)
_EMBEDDED_IPV4 = bytes(10)  # first 80 bits of ::/96 and ::ffff:0:0/96 (RFC 4291 §2.5.5)
_COMPATIBLE, _MAPPED = b"\x00\x00", b"\xff\xff"  # bits 80-95 of each


def is_global_unicast(address: bytes) -> bool:
    """False for multicast ff00::/8, link-local fe80::/10, site-local fec0::/10 (RFC 3879),
    unique local fc00::/7 (RFC 4193), ::/96 (unspecified, loopback, IPv4-compatible) and
    IPv4-mapped ::ffff:0:0/96; true for every other 16-byte address."""
    first = address[0]
    if first == 0xFF or first & 0xFE == 0xFC:
        return False
    if first == 0xFE:
        return address[1] & 0x80 == 0  # fe80::/10 and fec0::/10 make fe80::/9
    if first == 0 and address[:10] == _EMBEDDED_IPV4:
        return address[10:12] not in (_COMPATIBLE, _MAPPED)
    return True

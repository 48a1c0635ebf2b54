"""Every protocol constant the appliance uses, written once, named after where it comes from.

The wire parsers, the role machines, the config checks, the TUN code and the lab read them
from here, so a value cannot drift between two copies.
"""

from __future__ import annotations

from ipaddress import IPv6Network

TEREDO_PORT = 3544  # RFC 4380 §4: the IANA-assigned Teredo UDP port, where servers listen
TEREDO_PREFIX = bytes.fromhex("20010000")  # RFC 4380 §2.6: 2001:0000::/32
TEREDO_PREFIX_LENGTH = 32  # RFC 4380 §2.6: the Teredo service prefix is a /32
DEFAULT_PREFIX = IPv6Network("2001::/32")  # RFC 4380 §2.6, as a network
IPV6_HEADER_LENGTH = 40  # RFC 8200 §3
MIN_MTU = 1280  # RFC 8200 §5: the IPv6 minimum MTU, also the Teredo MTU (RFC 4380 §5.1.2)
MAX_MTU = 65535  # RFC 8200 §3: the payload length field is 16 bits; no larger MTU can be named

# RFC 4380 §5.2.1: the link-local source of a client's Router Solicitation, and the
# link-local our client and relay put on their TUN (Miredo's LLADDRESS too).
LINK_LOCAL = bytes.fromhex("fe800000000000000000ffffffffffff")  # fe80::ffff:ffff:ffff
# RFC 4380 §5.2.1: the source of the "cone" Router Solicitation (the C bit set).
LINK_LOCAL_CONE = bytes.fromhex("fe80000000000000800054455245444f")  # fe80::8000:5445:5245:444f
ALL_ROUTERS = bytes.fromhex("ff020000000000000000000000000002")  # RFC 4291 §2.7.1: ff02::2
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")  # RFC 4291 §2.7.1: ff02::1, where
# RFC 4380 §5.2.8 sends local discovery bubbles
DISCOVERY_ADDRESS = "224.0.0.253"  # RFC 4380 §2.16: the Teredo IPv4 Discovery Address

IFNAMSIZ = 16  # Linux include/uapi/linux/if.h: a name buffer, so at most 15 bytes and a NUL

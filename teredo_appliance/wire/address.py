"""Teredo addresses (RFC 4380 §4, RFC 5991 §4) and the IPv4 helpers they need.

IPv4 addresses are plain ints in host order throughout `wire/`: the roles compare and
hash them per packet, and ints are the cheapest thing Python has for that.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv6Address

from teredo_appliance.wire.constants import TEREDO_PREFIX
from teredo_appliance.wire.errors import ParseError

FLAG_CONE = 0x8000  # RFC 4380 §4: C bit
FLAG_RANDOM_MASK = 0x3CFF  # RFC 5991 §4: 12 random bits; R (0x4000) and U/G (0x0300) stay zero

_ADDRESS = struct.Struct("!4sIHHI")


def ipv4_to_int(text: str) -> int:
    """'198.18.0.1' -> int; raises OSError on anything but a dotted quad (never resolves names)."""
    return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")


def int_to_ipv4(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))


# RFC 4380 §5.2.9 / Miredo: addresses that may never be a Teredo server or mapped address.
_NON_GLOBAL_IPV4 = (
    (0x00000000, 8),  # "this" network
    (0x0A000000, 8),  # RFC 1918
    (0x7F000000, 8),  # loopback
    (0xA9FE0000, 16),  # link local
    (0xAC100000, 12),  # RFC 1918
    (0xC0A80000, 16),  # RFC 1918
    (0xC0586300, 24),  # 6to4 relay anycast
    (0xE0000000, 4),  # multicast
    (0xF0000000, 4),  # class E reserved, includes the limited broadcast 255.255.255.255
)
NON_GLOBAL_IPV4_MASKED = tuple((net, (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF) for net, bits in _NON_GLOBAL_IPV4)


def is_global_ipv4(ip: int) -> bool:
    """True unless `ip` lies in a range that cannot be reached across the IPv4 Internet."""
    return all(ip & mask != net for net, mask in NON_GLOBAL_IPV4_MASKED)


def random_flags(random_bits: int) -> int:
    """RFC 5991 §4 flags from a random number: only the 12 bits of mask 0x3CFF, C = 0."""
    return random_bits & FLAG_RANDOM_MASK


@dataclass(frozen=True, slots=True)
class TeredoAddress:
    """The decoded fields of a Teredo IPv6 address; `mapped_*` are already de-obfuscated."""

    server: int
    flags: int
    mapped_port: int
    mapped_ip: int
    prefix: bytes = TEREDO_PREFIX

    @property
    def cone(self) -> bool:
        return bool(self.flags & FLAG_CONE)

    def pack(self) -> bytes:
        return _ADDRESS.pack(
            self.prefix, self.server, self.flags, self.mapped_port ^ 0xFFFF, self.mapped_ip ^ 0xFFFFFFFF
        )

    @classmethod
    def unpack(cls, address: bytes) -> TeredoAddress:
        if len(address) != 16:
            raise ParseError("address-length")
        prefix, server, flags, port, ip = _ADDRESS.unpack(address)
        return cls(server, flags, port ^ 0xFFFF, ip ^ 0xFFFFFFFF, prefix)

    def __str__(self) -> str:
        return str(IPv6Address(self.pack()))


def teredo_mapping(address: bytes) -> tuple[int, int]:
    """The (mapped IPv4, mapped port) embedded in a Teredo address: the hot-path shortcut."""
    port, ip = struct.unpack_from("!HI", address, 10)
    return ip ^ 0xFFFFFFFF, port ^ 0xFFFF


def teredo_server(address: bytes) -> int:
    """The server IPv4 embedded in a Teredo address."""
    return int.from_bytes(address[4:8], "big")

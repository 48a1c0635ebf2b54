"""RFC 6081 trailers: type-length-value options after the IPv6 packet of a Teredo datagram.

RFC 6081 §4.1 puts them in the UDP payload behind the IPv6 packet (whose end the IPv6
payload length gives), each `type (1) | length of the value (1) | value`. A receiver
skips types it does not know (that is what keeps the extensions compatible with RFC 4380
peers); a trailer whose length is wrong for its known type, or that runs past the end of
the datagram, makes the whole sequence a ParseError, so a caller counts one drop.

Citations: RFC 6081 §4.2-§4.5 give each trailer's layout (the same as MS-TERE §2.2.1-§2.2.4);
§5.x give the processing of the extension that uses it (§5.2 Symmetric NAT Support, §5.3
UPnP, §5.5 Sequential Port-Symmetric, §5.6 Hairpinning, §5.7 Server Load Reduction).

What was verified against text, and what was not (checked by search of the stored public
copies; the RFC 6081 text itself was reachable only as title pages and its §6 examples):
- Alternate Address (0x03): verified against MS-TERE §2.2.2 ("2.2.2 Alternate Address
  Trailer", MSDN cc213597): type 0x03, length 8-26 in steps of 6, reserved 0x0000 ignored
  on receipt, ports never zero.
- Nonce (0x01, length 4), Neighbor Discovery Option (0x04) and Random Port (0x05, length 2):
  NOT verified against any text; the values are those of the project's extension notes and
  of two independent recollections of RFC 6081 §4.2, §4.4 and §4.5, which agree.
- The ND Option's length: recalled as 4 (DiscoveryType, then 3 bytes of padding sent as
  zero and ignored on receipt), which is what we send. Unverified, so on receipt we also
  take the 1-byte value (DiscoveryType alone) that this module used to build: either way a
  bubble carrying it is never dropped for the padding. Any other length is malformed.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from teredo_appliance.wire.errors import ParseError

TRAILER_HEADER_LENGTH = 2  # RFC 6081 §4.1: type(1) + length(1)

NONCE_TYPE = 0x01  # RFC 6081 §4.2, used by §5.2 (Symmetric NAT Support) and §5.5 (Sequential)
NONCE_LENGTH = 4
ALTERNATE_ADDRESS_TYPE = 0x03  # RFC 6081 §4.3, used by §5.6 (Hairpinning Extension)
ALTERNATE_ADDRESS_RESERVED_LENGTH = 2
ALTERNATE_ADDRESS_ENTRY_LENGTH = 6  # IPv4 address(4) + port(2)
ALTERNATE_ADDRESS_MAX_ENTRIES = 4  # RFC 6081 §4.3: length 8 to 26, so 1 to 4 entries
ND_OPTION_TYPE = 0x04  # RFC 6081 §4.4, used by §5.7 (Server Load Reduction Extension)
ND_OPTION_LENGTH = 4  # RFC 6081 §4.4 (recalled, see above): DiscoveryType(1) + padding(3)
ND_OPTION_LENGTHS = (1, ND_OPTION_LENGTH)  # accepted on receipt: without or with the padding
ND_SOLICITATION = 0x00  # RFC 6081 §4.4: TeredoDiscoverySolicitation
ND_ADVERTISEMENT = 0x01  # RFC 6081 §4.4: TeredoDiscoveryAdvertisement
RANDOM_PORT_TYPE = 0x05  # RFC 6081 §4.5, used by §5.5 (Sequential Port-Symmetric NAT Extension)
RANDOM_PORT_LENGTH = 2

_ENTRY = struct.Struct("!IH")
_PORT = struct.Struct("!H")


class NonceTrailer(NamedTuple):
    """RFC 6081 §4.2: a 4-byte nonce that ties a bubble to the one it answers."""

    nonce: bytes

    def pack(self) -> bytes:
        if len(self.nonce) != NONCE_LENGTH:
            raise ValueError(f"a nonce trailer carries {NONCE_LENGTH} bytes, not {len(self.nonce)}")
        return bytes((NONCE_TYPE, NONCE_LENGTH)) + self.nonce


class AlternateAddressTrailer(NamedTuple):
    """RFC 6081 §4.3: 1-4 more (IPv4 as int, port) a peer behind the same NAT can try.

    The 2 reserved bytes are sent as zero and ignored on receipt, but kept so a parsed
    trailer rebuilds to the same bytes.
    """

    entries: tuple[tuple[int, int], ...]
    reserved: int = 0

    def pack(self) -> bytes:
        if not 1 <= len(self.entries) <= ALTERNATE_ADDRESS_MAX_ENTRIES:
            raise ValueError(f"an alternate address trailer has 1 to {ALTERNATE_ADDRESS_MAX_ENTRIES} entries")
        length = ALTERNATE_ADDRESS_RESERVED_LENGTH + ALTERNATE_ADDRESS_ENTRY_LENGTH * len(self.entries)
        body = b"".join(_ENTRY.pack(ip, port) for ip, port in self.entries)
        return bytes((ALTERNATE_ADDRESS_TYPE, length)) + _PORT.pack(self.reserved) + body


class NeighborDiscoveryTrailer(NamedTuple):
    """RFC 6081 §4.4: whether a bubble solicits or advertises (ND_SOLICITATION / ND_ADVERTISEMENT)."""

    discovery_type: int

    def pack(self) -> bytes:
        padding = bytes(ND_OPTION_LENGTH - 1)
        return bytes((ND_OPTION_TYPE, ND_OPTION_LENGTH, self.discovery_type)) + padding


class RandomPortTrailer(NamedTuple):
    """RFC 6081 §4.5: the port the sender's sequential port-symmetric NAT is predicted to use."""

    port: int

    def pack(self) -> bytes:
        return bytes((RANDOM_PORT_TYPE, RANDOM_PORT_LENGTH)) + _PORT.pack(self.port)


Trailer = NonceTrailer | AlternateAddressTrailer | NeighborDiscoveryTrailer | RandomPortTrailer


def parse_trailers(data: bytes) -> list[Trailer]:
    """The known trailers in `data` (the bytes after the IPv6 packet), unknown types skipped.

    Raises ParseError("trailer-truncated" or "<name>-length" or a field's reason).
    """
    found: list[Trailer] = []
    offset = 0
    while offset < len(data):
        if offset + TRAILER_HEADER_LENGTH > len(data):
            raise ParseError("trailer-truncated")
        kind, length = data[offset], data[offset + 1]
        start = offset + TRAILER_HEADER_LENGTH
        end = start + length
        if end > len(data):
            raise ParseError("trailer-truncated")
        parser = _PARSERS.get(kind)
        if parser is not None:
            found.append(parser(data[start:end]))
        offset = end
    return found


def build_trailers(trailers: list[Trailer]) -> bytes:
    """The bytes to append after the IPv6 packet for these trailers, in order."""
    return b"".join(trailer.pack() for trailer in trailers)


def _parse_nonce(value: bytes) -> NonceTrailer:
    if len(value) != NONCE_LENGTH:
        raise ParseError("nonce-trailer-length")
    return NonceTrailer(value)


def _parse_alternate_address(value: bytes) -> AlternateAddressTrailer:
    count, rest = divmod(len(value) - ALTERNATE_ADDRESS_RESERVED_LENGTH, ALTERNATE_ADDRESS_ENTRY_LENGTH)
    if rest or not 1 <= count <= ALTERNATE_ADDRESS_MAX_ENTRIES:
        raise ParseError("alternate-address-trailer-length")
    entries = tuple(
        _ENTRY.unpack_from(value, ALTERNATE_ADDRESS_RESERVED_LENGTH + i * ALTERNATE_ADDRESS_ENTRY_LENGTH)
        for i in range(count)
    )
    if any(port == 0 for _, port in entries):  # RFC 6081 §4.3: the port MUST NOT be zero
        raise ParseError("alternate-address-port-zero")
    (reserved,) = _PORT.unpack_from(value)
    return AlternateAddressTrailer(entries, reserved)


def _parse_nd_option(value: bytes) -> NeighborDiscoveryTrailer:
    if len(value) not in ND_OPTION_LENGTHS:
        raise ParseError("nd-option-trailer-length")
    if value[0] not in (ND_SOLICITATION, ND_ADVERTISEMENT):
        raise ParseError("nd-option-trailer-type")
    return NeighborDiscoveryTrailer(value[0])


def _parse_random_port(value: bytes) -> RandomPortTrailer:
    if len(value) != RANDOM_PORT_LENGTH:
        raise ParseError("random-port-trailer-length")
    return RandomPortTrailer(_PORT.unpack(value)[0])


_PARSERS = {
    NONCE_TYPE: _parse_nonce,
    ALTERNATE_ADDRESS_TYPE: _parse_alternate_address,
    ND_OPTION_TYPE: _parse_nd_option,
    RANDOM_PORT_TYPE: _parse_random_port,
}

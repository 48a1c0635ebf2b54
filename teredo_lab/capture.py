"""Packet capture in a lab namespace, and the decoding the checks read it with.

Why not tcpdump: the checks must decode Teredo payloads (is this UDP datagram a bubble,
to which Teredo address?) with the project's own `wire` parsers, and tcpdump's text is
not meant for that. An AF_PACKET socket of type SOCK_DGRAM sees every frame of every
interface of its namespace, both directions, with the link layer already removed, which
is the same on a veth and on a TUN. So the capture is this small stdlib-only script,
run with `ip netns exec NS python capture.py OUT` (it prints "ready" once the socket is
bound, stops on SIGTERM), writing one JSON line per frame; `read_frames` loads it.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4  # sll_pkttype of a frame this namespace sent
IPPROTO_UDP = 17
SNAPLEN = 2048  # Teredo packets are at most 1280 bytes of IPv6 plus headers


@dataclass(frozen=True)
class Frame:
    """One captured frame: when, on which interface, which direction, the network packet."""

    time: float
    interface: str
    outgoing: bool
    protocol: int  # ethertype: ETH_P_IP or ETH_P_IPV6
    packet: bytes


@dataclass(frozen=True)
class UDPDatagram:
    """An IPv4 UDP datagram as captured (fragments and options are not expected in the lab)."""

    frame: Frame
    source: ipaddress.IPv4Address
    source_port: int
    destination: ipaddress.IPv4Address
    destination_port: int
    payload: bytes


def read_frames(path: str | Path) -> list[Frame]:
    """The frames a capture wrote; a torn last line (capture killed mid-write) is ignored."""
    frames = []
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        frames.append(Frame(row["t"], row["if"], row["out"], row["proto"], bytes.fromhex(row["hex"])))
    return frames


def udp_datagrams(frames: Iterable[Frame]) -> Iterator[UDPDatagram]:
    """The IPv4 UDP datagrams among `frames` (first fragments only), payload trimmed to length."""
    for frame in frames:
        packet = frame.packet
        if frame.protocol != ETH_P_IP or len(packet) < 20 or packet[0] >> 4 != 4:
            continue
        header_length = (packet[0] & 0x0F) * 4
        total_length = struct.unpack_from("!H", packet, 2)[0]
        fragment_offset = struct.unpack_from("!H", packet, 6)[0] & 0x1FFF
        if packet[9] != IPPROTO_UDP or fragment_offset or len(packet) < header_length + 8:
            continue
        source_port, destination_port, udp_length = struct.unpack_from("!HHH", packet, header_length)
        end = min(total_length, len(packet), header_length + udp_length)
        yield UDPDatagram(
            frame,
            ipaddress.IPv4Address(packet[12:16]),
            source_port,
            ipaddress.IPv4Address(packet[16:20]),
            destination_port,
            packet[header_length + 8 : end],
        )


def ipv6_packets(frames: Iterable[Frame]) -> Iterator[Frame]:
    """The frames carrying an IPv6 packet (by ethertype and version nibble)."""
    return (f for f in frames if f.protocol == ETH_P_IPV6 and f.packet[:1] and f.packet[0] >> 4 == 6)


def _record(data: bytes, address: tuple) -> str:
    interface, protocol, pkttype = address[0], address[1], address[2]
    row = {"t": time.time(), "if": interface, "out": pkttype == PACKET_OUTGOING, "proto": protocol,
           "hex": data.hex()}
    return json.dumps(row)


def main(argv: list[str]) -> int:
    """Capture every IPv4 and IPv6 frame of this namespace to argv[0] until SIGTERM."""
    out_path = argv[0]
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.settimeout(0.1)
    with open(out_path, "w") as out:
        print("ready", flush=True)
        while not stopping:
            try:
                data, address = sock.recvfrom(SNAPLEN)
            except (TimeoutError, InterruptedError):
                continue
            if address[1] in (ETH_P_IP, ETH_P_IPV6):
                out.write(_record(data, address) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

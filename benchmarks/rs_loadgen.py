"""Qualification load: authenticated RSs from many UDP ports, valid RAs counted. No C, no deps.

    (inside a namespace where SOURCE is local)  python benchmarks/rs_loadgen.py SERVER [options]

It must outrun the servers it measures, so the Python work per datagram is nil: every
source port gets its own precomputed RS (its own nonce) and the senders hand the kernel
a batch of them per system call with sendmmsg(2), called through ctypes. A receiver
process takes the RAs back with recvmmsg(2) and counts those equal, byte for byte, to
the RA the port must get (echoed nonce, origin indication of that port, the server's
prefix and link-local source): one bytes.count() per batch, again no per-datagram Python.

Prints one JSON object: datagrams sent and valid RAs received within the measured
window (after a warm-up), their rates, and anything that was not a valid RA.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from teredo_appliance.wire.address import ipv4_to_int
from teredo_appliance.wire.constants import TEREDO_PORT
from teredo_appliance.wire.nd import RS_SOURCE, router_advertisement, router_solicitation, teredo_prefix64
from teredo_appliance.wire.teredo import AuthIndicator, origin_indication

MSG_DONTWAIT = 0x40
SOL_UDP, UDP_SEGMENT = 17, 103  # include/uapi/linux/udp.h: UDP GSO
SLOT = 128  # receive slot: one RA (117 bytes) and too short to hide a stale second one
_libc = ctypes.CDLL(None, use_errno=True)


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_IOVec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


class Batch:
    """`count` message headers, message i in slot i of one buffer of `size`-byte slots."""

    def __init__(self, count: int, size: int, fill: bytes = b"") -> None:
        self.buffer = ctypes.create_string_buffer(fill * count if fill else b"", count * size)
        self.iov = (_IOVec * count)()
        self.msgs = (_MMsgHdr * count)()
        base = ctypes.addressof(self.buffer)
        for i in range(count):
            self.iov[i].base = base + i * size
            self.iov[i].len = size
            self.msgs[i].hdr.iov = ctypes.pointer(self.iov[i])
            self.msgs[i].hdr.iovlen = 1


def expected_ra(server: int, source: int, port: int, nonce: bytes) -> bytes:
    """The RA a conforming server (Miredo's byte layout) sends back to `source:port`."""
    packet = router_advertisement(server, RS_SOURCE, teredo_prefix64(server), 1280)
    return AuthIndicator(nonce).pack() + origin_indication(source, port) + packet


def open_ports(source: str, server: str, count: int) -> list[socket.socket]:
    """`count` UDP sockets on `source`, each connected to server:3544 (so send() needs no address)."""
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
        sock.connect((server, TEREDO_PORT))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: root may exceed rmem_max
        socks.append(sock)
    return socks


def gso_sender(sock: socket.socket, datagram: bytes, batch: int) -> Callable[[], int]:
    """One UDP_SEGMENT send of `batch` copies of `datagram`: the kernel cuts it up past the
    device (on loopback: at the receiving socket), so the load costs its CPU a fraction of
    `batch` full sends and the generator outruns a server that pays full price per RA."""
    payload = [datagram * batch]
    control = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", len(datagram)))]
    send = sock.sendmsg

    def sent() -> int:
        try:
            send(payload, control)
        except BlockingIOError:
            return -1
        return batch

    return sent


def send_loop(socks: list[socket.socket], datagrams: list[bytes], batch: int, start: float, measure: float,
              end: float, result_fd: int, gso: bool = False) -> None:
    """Child process: sendmmsg() (or UDP GSO) batches round-robin over its ports until `end`; report counts."""
    if gso:
        senders = [gso_sender(sock, data, batch) for sock, data in zip(socks, datagrams, strict=True)]
    else:
        # The Batches stay referenced here for the whole loop: sendmmsg reads their buffers.
        plans = [(sock.fileno(), Batch(batch, len(data), data)) for sock, data in zip(socks, datagrams, strict=True)]
        senders = [functools.partial(_libc.sendmmsg, fd, plan.msgs, batch, MSG_DONTWAIT) for fd, plan in plans]
    sent = sent_measured = refused = 0
    while time.monotonic() < start:
        pass
    now = start
    while now < end:
        for send in senders:
            n = send()
            if n > 0:
                sent += n
                if now >= measure:
                    sent_measured += n
            else:
                refused += 1
        now = time.monotonic()
    os.write(result_fd, json.dumps([sent, sent_measured, refused]).encode())
    os.close(result_fd)


def receive_loop(socks: list[socket.socket], expected: list[bytes], batch: int, measure: float,
                 end: float) -> dict[str, int]:
    """Count valid RAs (exact expected bytes for the port) received between `measure` and `end`."""
    recvmmsg = _libc.recvmmsg
    plan = Batch(batch, SLOT)
    poller = select.epoll()
    by_fd = {}
    for sock, ra in zip(socks, expected, strict=True):
        poller.register(sock.fileno(), select.EPOLLIN)
        by_fd[sock.fileno()] = ra
    valid = valid_measured = received = 0
    drain_until = end + 0.3  # RAs already queued at `end` belong to the window
    while True:
        now = time.monotonic()
        if now > drain_until:
            break
        for fd, _ in poller.poll(0.05):
            ra = by_fd[fd]
            while True:
                n = recvmmsg(fd, plan.msgs, batch, MSG_DONTWAIT, None)
                if n <= 0:
                    break
                good = ctypes.string_at(plan.buffer, n * SLOT).count(ra)
                received += n
                valid += good
                if measure <= now <= end:
                    valid_measured += good
                if n < batch:
                    break
    poller.close()
    return {"received": received, "valid": valid, "valid_measured": valid_measured}


def udp_sockets(pid: int | str = "self") -> dict[tuple[str, int], int]:
    """Bound UDP sockets of `pid`'s namespace -> their drop counters (/proc/<pid>/net/udp)."""
    found = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            host = socket.inet_ntoa(struct.pack("=I", int(address, 16)))
            found[(host, int(port, 16))] = found.get((host, int(port, 16)), 0) + int(fields[-1])
    return found


def run(server: str, source: str, ports: int, senders: int, batch: int, warmup: float, duration: float,
        sender_cpus: set[int] | None, gso: bool = False) -> dict[str, float]:
    socks = open_ports(source, server, ports)
    nonces = [os.urandom(8) for _ in socks]
    datagrams = [AuthIndicator(nonce).pack() + router_solicitation() for nonce in nonces]
    expected = [
        expected_ra(ipv4_to_int(server), ipv4_to_int(source), sock.getsockname()[1], nonce)
        for sock, nonce in zip(socks, nonces, strict=True)
    ]
    start = time.monotonic() + 0.3
    measure, end = start + warmup, start + warmup + duration
    children = []
    for index in range(senders):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(read_fd)
            if sender_cpus:
                os.sched_setaffinity(0, sender_cpus)
            share = slice(index, None, senders)
            send_loop(socks[share], datagrams[share], batch, start, measure, end, write_fd, gso)
            os._exit(0)
        os.close(write_fd)
        children.append((pid, read_fd))
    counts = receive_loop(socks, expected, batch, measure, end)
    ours = {sock.getsockname() for sock in socks}
    receiver_drops = sum(drops for address, drops in udp_sockets().items() if address in ours)
    sent = sent_measured = refused = 0
    for pid, read_fd in children:
        with os.fdopen(read_fd, "rb") as pipe:
            child_sent, child_measured, child_refused = json.loads(pipe.read() or b"[0, 0, 0]")
        os.waitpid(pid, 0)
        sent += child_sent
        sent_measured += child_measured
        refused += child_refused
    return {
        "ports": ports,
        "senders": senders,
        "duration": duration,
        "sent": sent,
        "send_rate": round(sent_measured / duration),
        "send_batches_refused": refused,
        "received": counts["received"],
        "valid_ra": counts["valid"],
        "ra_rate": round(counts["valid_measured"] / duration),
        "not_valid": counts["received"] - counts["valid"],
        "receiver_drops": receiver_drops,  # RAs lost in our own socket buffers: would understate the server
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("server", help="the server's primary IPv4 address")
    parser.add_argument("--source", default="198.18.0.100", help="local IPv4 address to send from")
    parser.add_argument("--ports", type=int, default=64, help="source ports (one socket and nonce each)")
    parser.add_argument("--senders", type=int, default=1, help="sending processes")
    parser.add_argument("--batch", type=int, default=64, help="datagrams per sendmmsg/recvmmsg call")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--sender-cpus", default="", help="CPU list for the senders, e.g. 0")
    parser.add_argument("--gso", action="store_true", help="send each batch as one UDP GSO send (cheaper load)")
    args = parser.parse_args(argv)
    cpus = {int(c) for c in args.sender_cpus.split(",") if c} or None
    print(json.dumps(run(args.server, args.source, args.ports, args.senders, args.batch, args.warmup,
                         args.duration, cpus, args.gso)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

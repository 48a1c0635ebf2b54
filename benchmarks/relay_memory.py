"""Relay memory: RSS and CPU per 10,000 peers up to --peers, and RSS under a flood towards distinct destinations.

Run: .venv/bin/python benchmarks/relay_memory.py [--peers 100000] [--flood 1000000]

Figures, not a timed test. Measures the whole relay role, not just its peer table
(benchmarks/peer_memory.py does that): a RelayService whose TUN is
twisted.pair.testing.MemoryIOSystem and whose UDP transport discards, driven by a fake
clock. Packets enter as they would in production, through the TUN read path and the UDP
protocol, and every timer the service schedules runs. RSS is VmRSS from /proc/self/status.
"""

from __future__ import annotations

import argparse
import errno
import gc
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from twisted.internet.address import IPv4Address as TwistedIPv4Address
from twisted.internet.testing import MemoryReactorClock, _FakePort
from twisted.pair import testing
from twisted.pair.tuntap import TuntapPort

from teredo_appliance.config_model import RelayConfig
from teredo_appliance.native_health import Route
from teredo_appliance.roles.relay import RelayService
from teredo_appliance.roles.relay_machine import RELAY_LINK_LOCAL
from teredo_appliance.wire.address import TeredoAddress
from teredo_appliance.wire.ipv6 import build_echo
from teredo_appliance.wire.teredo import build_bubble

NATIVE = bytes.fromhex("20010db8000100000000000000000002")  # the sender behind the relay
SERVER = int(IPv4Address("198.18.0.1"))
FIRST_MAPPED = int(IPv4Address("198.18.0.0"))  # 198.18.0.0/15 is global for Teredo
ATTACK_DATA = bytes(32)  # echo payload: 80-byte packets, a TCP SYN's size
FLOOD_RATE = 50_000  # packets per (simulated) second
BATCH = 500  # packets per TUN read; the clock advances between batches


class _SinkTransport:
    """A UDP transport that sends nowhere (counting), so the harness itself holds nothing."""

    def __init__(self) -> None:
        self.sent = 0

    def write(self, payload: bytes, address: tuple[str, int]) -> None:
        self.sent += 1


class _Reactor(MemoryReactorClock):
    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        protocol.makeConnection(_SinkTransport())
        return _FakePort(TwistedIPv4Address("UDP", interface, port))


class _BigTunnel(testing.Tunnel):
    SEND_BUFFER_SIZE = 1500

    @property
    def nonBlockingExceptionStyle(self) -> OSError:  # type: ignore[override]
        # The stock one raises one shared exception instance, whose traceback grows by a
        # frame chain at every raise: a leak of the harness that would hide the relay's.
        return BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")


class _NoLink:
    """Netlink stand-in: the memory TUN needs no configuration, and the host has a default
    IPv6 route (so the relay's native side counts as up and it announces)."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname

    def ipv6_routes(self) -> list[Route]:
        return [Route(IPv6Network("::/0"), None)]

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: None


def rss_kib() -> int:
    gc.collect()
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class Relay:
    """A started RelayService in memory, with helpers to push packets through it."""

    def __init__(self, max_peers: int) -> None:
        self.reactor = _Reactor()
        system = testing.MemoryIOSystem()
        system.registerSpecialDevice(testing.Tunnel._DEVICE_NAME, _BigTunnel)
        config = RelayConfig(interface="bench", bind_address=IPv4Address("198.18.0.10"), max_peers=max_peers)
        self.service = RelayService(
            config, reactor=self.reactor, tun_system=system, link_factory=_NoLink,
            error_source=lambda destination: RELAY_LINK_LOCAL,
        )
        self.service.privilegedStartService()
        self.service.startService()
        [fd] = system._openFiles
        self.device = system._openFiles[fd]
        # The TUN's reader (the netlink watch of the device is another).
        [self.tun_port] = [reader for reader in self.reactor.getReaders() if isinstance(reader, TuntapPort)]

    def from_kernel(self, packets: Iterator[bytes]) -> None:
        """One TUN read burst, then drop whatever the relay wrote back (ICMPv6 errors)."""
        for packet in packets:
            self.device.addToReadBuffer(packet)
        self.tun_port.doRead()
        self.device.writeBuffer.clear()

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)
        self.device.writeBuffer.clear()


def peer_address(n: int) -> tuple[bytes, tuple[str, int]]:
    """The n-th distinct Teredo peer and its mapping (distinct address and port each)."""
    ip, port = FIRST_MAPPED + (n >> 14), 1024 + (n & 0x3FFF)
    address = TeredoAddress(SERVER, 0x1C6B, port, ip).pack()
    return address, (str(IPv4Address(ip)), port)


def per_peer(count: int, steps: int = 10) -> None:
    """RSS growth for `count` trusted peers, each learned from its bubble on the UDP socket,
    with RSS and CPU per step of count/steps peers (the scale curve: 10,000 at a time)."""
    relay = Relay(max_peers=count)
    before = rss_kib()
    receive = relay.service.udp.datagramReceived
    step = max(1, count // steps)
    print(f"{'peers':>9} {'RSS +MiB':>9} {'bytes/peer':>10} {'CPU ms/step':>11}")
    cpu_total = 0.0
    for first in range(0, count, step):
        cpu = time.process_time()
        for n in range(first, min(first + step, count)):
            address, mapping = peer_address(n)
            receive(build_bubble(address, RELAY_LINK_LOCAL), mapping)
        used = time.process_time() - cpu
        cpu_total += used
        done = min(first + step, count)
        grown = (rss_kib() - before) * 1024
        print(f"{done:>9,} {grown / 2**20:>9.1f} {grown / done:>10.0f} {used * 1000:>11.0f}")
    grown = (rss_kib() - before) * 1024
    stats = relay.service.status()["peers"]
    print(
        f"{stats['count']:,} trusted peers: RSS +{grown / 2**20:.1f} MiB = {grown / count:.0f} bytes/peer "
        f"(target <= 1024), {cpu_total / count * 1e6:.1f} us CPU per new peer"
    )


def flood(packets: int, max_peers: int) -> None:
    """`packets` from the TUN to as many distinct Teredo destinations, at FLOOD_RATE."""
    relay = Relay(max_peers=max_peers)
    service = relay.service
    baseline = rss_kib()
    print(f"flood: {packets:,} packets to distinct destinations at {FLOOD_RATE:,}/s, max_peers {max_peers:,}")
    print(f"{'packets':>10} {'peers':>7} {'queued':>9} {'evicted':>9} {'RSS MiB':>8}")
    checkpoints = sorted({max_peers, max_peers * 2, *range(packets // 10, packets + 1, packets // 10)})
    half: int | None = None
    largest = 0
    start = time.perf_counter()
    sent = 0
    for checkpoint in checkpoints:
        while sent < checkpoint:
            batch = min(BATCH, checkpoint - sent)
            relay.from_kernel(build_echo(NATIVE, peer_address(n)[0], 1, n & 0xFFFF, ATTACK_DATA)
                              for n in range(sent, sent + batch))
            sent += batch
            relay.advance(batch / FLOOD_RATE)
            largest = max(largest, len(service.machine.peers))
        stats = service.status()["peers"]
        rss = rss_kib()
        if sent == packets // 2:
            half = rss
        print(f"{sent:>10,} {stats['count']:>7,} {stats['queued_bytes']:>9,} {stats['evicted']:>9,} {rss / 1024:>8.1f}")
    elapsed = time.perf_counter() - start
    rss = rss_kib()
    counters = service.counters
    print(
        f"largest table {largest:,} (max_peers {max_peers:,}); RSS +{(rss - baseline) / 1024:.1f} MiB over the "
        f"start, {(rss - (half or rss)) / 1024:+.1f} MiB over the second half of the flood (flat = ~0)"
    )
    print(
        f"bubbles sent {counters['bubbles.sent']:,}, queue-full drops {counters['drop.tun.queue-full']:,}, "
        f"ICMPv6 errors {counters['icmp.sent']:,} (+{counters['icmp.rate-limited']:,} rate-limited); "
        f"{packets / elapsed:,.0f} packets/s of CPU time"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=100_000, help="peers for the per-peer cost")
    parser.add_argument("--flood", type=int, default=1_000_000, help="packets in the flood")
    parser.add_argument("--max-peers", type=int, default=RelayConfig.max_peers, help="the flooded relay's max_peers")
    args = parser.parse_args(argv)
    per_peer(args.peers)
    flood(args.flood, args.max_peers)
    return 0


if __name__ == "__main__":
    sys.exit(main())

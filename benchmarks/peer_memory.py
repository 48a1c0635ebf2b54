"""Peer table memory: RSS cost per peer, and RSS under a flood of distinct destinations.

Run: .venv/bin/python benchmarks/peer_memory.py
Figures, not a timed test. RSS is read from /proc/self/status (VmRSS), so it counts
everything the interpreter really holds: entries, keys, mappings, dict slots.
"""

from __future__ import annotations

import gc
import time

from teredo_appliance.peers import PeerTable

PREFIX = bytes.fromhex("20010000c6120001")
PEERS = 100_000
FLOOD = 1_000_000
FLOOD_MAX_PEERS = 65_536
PACKET_SIZE = 80  # an attacker's small IPv6 packet (a TCP SYN)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def mapping(n: int) -> tuple[str, int]:
    """A distinct mapped address per peer, as a fresh object like each datagram's source."""
    return f"198.{18 + (n >> 24 & 1)}.{n >> 8 & 255}.{n & 255}", 1024 + n % 64000


def per_peer(trusted: bool) -> None:
    """RSS growth for PEERS entries: trusted (established) or untrusted in a bubble round."""
    gc.collect()
    table = PeerTable(PEERS)
    before = rss_kib()
    start = time.perf_counter()
    for n in range(PEERS):
        addr = PREFIX + n.to_bytes(8, "big")
        if trusted:
            table.trust(addr, mapping(n), 0.0)
        else:
            table.try_bubble(table.get_or_create(addr, mapping(n), 0.0), 0.0)
    elapsed = time.perf_counter() - start
    grown = (rss_kib() - before) * 1024
    kind = "trusted" if trusted else "untrusted, in a bubble round"
    print(
        f"{PEERS:,} peers ({kind}): RSS +{grown / 2**20:.1f} MiB = {grown / PEERS:.0f} bytes/peer "
        f"(target <= 1024); {elapsed / PEERS * 1e6:.2f} us per insert"
    )


def flood() -> None:
    """FLOOD packets to distinct destinations, handled as the relay would, deadlines included."""
    gc.collect()
    table = PeerTable(FLOOD_MAX_PEERS)
    before = rss_kib()
    print(f"flood of {FLOOD:,} distinct destinations, max_peers={FLOOD_MAX_PEERS:,}, RSS before {before:,} KiB")
    queued = dropped = 0
    start = time.perf_counter()
    for n in range(FLOOD):
        now = n * 1e-5  # 100,000 packets/s: the flood lasts 10 s, so retries and give-ups happen
        peer = table.get_or_create(PREFIX + n.to_bytes(8, "big"), mapping(n), now)
        if table.enqueue(peer, bytes(PACKET_SIZE)):
            queued += 1
        else:
            dropped += 1
        table.try_bubble(peer, now)
        if n % 1000 == 0:  # the service's timer
            for due in table.due_for_retry(now):
                if due.attempts > 3:
                    table.give_up(due)
                else:
                    table.try_bubble(due, now)
            table.expire(now)
        assert len(table) <= FLOOD_MAX_PEERS
        if (n + 1) in (FLOOD_MAX_PEERS, 2 * FLOOD_MAX_PEERS, 3 * FLOOD_MAX_PEERS, 250_000, 500_000, 750_000, FLOOD):
            stats = table.stats()
            print(
                f"  after {n + 1:>9,}: len={len(table):,} queued_bytes={stats['queued_bytes']:,} "
                f"evicted={stats['evicted']:,} RSS={rss_kib():,} KiB (+{rss_kib() - before:,})"
            )
    elapsed = time.perf_counter() - start
    print(
        f"  {FLOOD / elapsed:,.0f} packets/s through get_or_create+enqueue+try_bubble; "
        f"{queued:,} queued, {dropped:,} refused by the byte bounds"
    )


if __name__ == "__main__":
    per_peer(trusted=True)
    per_peer(trusted=False)
    flood()

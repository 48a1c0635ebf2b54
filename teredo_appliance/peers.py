"""The list of recent Teredo peers (RFC 4380 §5.2, §5.4), shared by the relay and the client.

Sans-I/O: no sockets, no timers, no clock. Every call that depends on time takes `now`
(seconds from a clock that does not go backwards); the owning service asks
`next_deadline()` and calls `expire()` / `due_for_retry()` when it is reached.

Memory is bounded three ways: at most `max_peers` entries, at most `queue_bytes` queued
per peer, at most `total_queue_bytes` queued in the whole table. Entries are kept in
insertion-ordered dicts (trusted, untrusted) in order of last reception, so expiry and
eviction pop from the front in O(1) each, and eviction takes an untrusted entry first:
a flood towards millions of unknown destinations churns only untrusted entries and
leaves established (trusted) peers alone. A third dict keeps "spent" entries: untrusted
peers that used their 4 bubbles and went idle, held until their 300 s window closes so
that expiry cannot hand a silent destination a fresh bubble budget (RFC 4380 §5.2.6);
they are the first evicted when the table is full.

A relay's table also keeps at most a few (`ADDRESSES_PER_MAPPING`) trusted addresses
per mapping: a forger on one IPv4:port can mint 2^48 valid-looking Teredo sources that
embed it, and without a cap each would become a trusted entry and push real peers out.
A real mapping rarely has more than one address, but a client restarted on a fixed port
(or moved to another server) has a new one while the old may still be in use; one per
mapping made the two supersede each other at every packet, each switch costing a bubble
round. The least recently heard address gives way. A client's table must not do this:
every native IPv6 host it reaches shares its relay's mapping.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import OrderedDict
from itertools import islice
from operator import attrgetter
from typing import Any

# A peer's mapped address exactly as Twisted's UDP transport gives and takes it, so the
# per-packet paths compare and send without converting: ("198.18.0.100", 52732).
Mapping = tuple[str, int]

# RFC 4380 §5.2.4, §5.4.1: an entry is valid while its last reception is under 30 s old.
IDLE_TIMEOUT = 30.0
# RFC 4380 §5.2.6: no bubble less than 2 s after the previous one.
BUBBLE_INTERVAL = 2.0
# RFC 4380 §5.2.6: no more than 4 unanswered bubbles to a peer in 300 s.
BUBBLE_LIMIT = 4
BUBBLE_WINDOW = 300.0
# RFC 4380 §5.2.4 case 5, §5.4.1 case 3: unanswered bubble repeated every 2 s up to 3 times.
BUBBLE_RETRIES = 3
# Rounds of discovery a waiting packet keeps going: the round in progress (or the one it
# starts) and one retry. More rounds only for more packets, so one packet towards a
# silent peer costs 2 rounds, not 1 + BUBBLE_RETRIES (RFC 4380 §5.2.6: "strike a balance
# between reliability and unnecessary retransmissions"; a TCP or DNS retransmission buys
# the next round).
ROUNDS_PER_PACKET = 2
# Per-peer queue, as Miredo: one full-MTU (1280-byte, RFC 4380 §5.1) packet or a burst of
# small ones (a TCP SYN, a DNS query). A peer answers within one round trip, so more
# only buys an attacker memory: the worst case is max_peers x QUEUE_BYTES.
QUEUE_BYTES = 1280
# Whole-table cap, so that worst case stays small even with a million entries. Peers are
# pending for at most ~8 s; 4 MiB holds thousands of first packets. When it is full the
# packet is dropped but the bubble still goes out, so a retransmission gets through.
TOTAL_QUEUE_BYTES = 4 << 20
# Trusted addresses a relay keeps per mapping (module docstring): room for a restarted
# client's old and new addresses, while a forger's mapping holds no more than this.
ADDRESSES_PER_MAPPING = 4


class Pacing:
    """RFC 4380 §5.2.6 for the bubbles to one destination: 2 s apart, and after 4
    unanswered ones, nothing until 300 s after the last.

    Measuring the 300 s from the last bubble (not from the first) needs only a count and a
    time, and still allows at most 4 in any 300 s window. An answer resets it (the owner
    sets `bubbles` to 0 or drops the object).
    """

    __slots__ = ("bubble_at", "bubbles")

    def __init__(self) -> None:
        self.bubbles = 0  # bubbles sent without a reply
        self.bubble_at = 0.0  # time of the last of them

    def ready(self, now: float) -> bool:
        """Whether a bubble may go now, without counting one."""
        if not self.bubbles:
            return True
        if now < self.bubble_at + BUBBLE_INTERVAL:
            return False
        return self.bubbles < BUBBLE_LIMIT or now >= self.bubble_at + BUBBLE_WINDOW

    def allow(self, now: float) -> bool:
        """Whether a bubble may go now; if so, it is counted."""
        if not self.ready(now):
            return False
        if self.bubbles >= BUBBLE_LIMIT:
            self.bubbles = 0
        self.bubbles += 1
        self.bubble_at = now
        return True


class Peer(Pacing):
    """One entry of the list of peers (RFC 4380 §5.2): constant size, no per-peer dict."""

    __slots__ = (
        "addr",
        "attempts",
        "candidate",
        "last_rx",
        "mapping",
        "nonce",
        "queue",
        "queued",
        "rounds",
        "trusted",
    )

    def __init__(self, addr: bytes, mapping: Mapping | None, now: float) -> None:
        self.addr = addr  # the peer's IPv6 address, 16 bytes
        self.mapping = mapping  # mapped IPv4 address and UDP port; None if not known yet
        self.trusted = False
        self.last_rx = now  # last reception (or creation): drives expiry
        self.queue: list[bytes] | None = None  # allocated on first enqueue
        self.queued = 0  # bytes in queue
        self.bubbles = 0  # Pacing: bubbles sent without a reply (RFC 4380 §5.2.6)
        self.bubble_at = 0.0  # Pacing: time of the last of them
        self.attempts = 0  # rounds (bubbles) so far in the current discovery; 0 = none running
        self.rounds = 0  # rounds the packets waiting for this peer have asked for
        self.nonce: bytes | None = None  # client: payload of the relay-finding echo (§5.2.9)
        self.candidate: Mapping | None = None  # client: a new relay a trusted native peer's packets came through


class PeerTable:
    """Peers keyed by 16-byte IPv6 address, bounded in entries and queued bytes.

    Lifecycle of an unknown Teredo destination (relay, or client to another client):
    `get_or_create`, `enqueue`, `try_bubble` (send the bubbles if True); the peer's
    reply makes the caller `trust` it, which returns the queue in arrival order. An
    unanswered bubble comes back from `due_for_retry`; while `retry_wanted` (each packet
    enqueued buys rounds, `ROUNDS_PER_PACKET`) the caller bubbles again, else it
    `give_up`s, answering the returned packets with ICMPv6 unreachable. The entry stays
    (untrusted, its bubble count kept) until it expires, so after 4 unanswered bubbles
    further packets are refused at once instead of restarting discovery.

    Methods taking a `Peer` expect one that is in the table now: look it up again after
    any call that may have evicted or expired it.
    """

    def __init__(
        self,
        max_peers: int,
        queue_bytes: int = QUEUE_BYTES,
        idle_timeout: float = IDLE_TIMEOUT,
        total_queue_bytes: int = TOTAL_QUEUE_BYTES,
        addresses_per_mapping: int | None = None,
    ) -> None:
        if max_peers < 1:
            raise ValueError(f"max_peers must be at least 1, not {max_peers}")
        self.max_peers = max_peers
        self.queue_bytes = queue_bytes
        self.idle_timeout = idle_timeout
        self.total_queue_bytes = total_queue_bytes
        # Each in order of last reception, oldest first; a peer is in exactly one.
        self._trusted: OrderedDict[bytes, Peer] = OrderedDict()
        self._untrusted: OrderedDict[bytes, Peer] = OrderedDict()
        # Idle untrusted peers whose bubble budget is spent, in the order they went idle
        # (close to the order of their last bubble, so of their window's end).
        self._spent: OrderedDict[bytes, Peer] = OrderedDict()
        # Peers in a discovery round, in order of their last bubble (= retry deadline).
        self._retry: OrderedDict[bytes, Peer] = OrderedDict()
        # mapping -> the trusted addresses at it, at most `addresses_per_mapping` (relay
        # tables only; see the module docstring). None: no cap.
        self.addresses_per_mapping = addresses_per_mapping
        self._by_mapping: dict[Mapping, list[bytes]] | None = {} if addresses_per_mapping else None
        # mapping -> pacing of the bubbles answering ones it sent through our server (client).
        self._replies: OrderedDict[Mapping, Pacing] = OrderedDict()
        self._queued = 0
        self.evicted = 0
        self.expired = 0
        self.superseded = 0

    def __len__(self) -> int:
        return len(self._trusted) + len(self._untrusted) + len(self._spent)

    def get(self, addr: bytes) -> Peer | None:
        return self._trusted.get(addr) or self._untrusted.get(addr) or self._spent.get(addr)

    def get_or_create(self, addr: bytes, mapping: Mapping | None, now: float) -> Peer:
        """The entry for `addr`, or a new untrusted one (evicting one if the table is full)."""
        peer = self.get(addr)
        if peer is None:
            peer = self._untrusted[addr] = self._new(addr, mapping, now)
        return peer

    def trust(self, addr: bytes, mapping: Mapping, now: float) -> list[bytes]:
        """Mark `addr` trusted at `mapping` (a reply arrived from it) and hand back its queue.

        Packets come back in the order they were queued (Miredo flushes them reversed).
        Counts as a reception; ends any discovery round and resets the bubble budget.
        """
        if self._by_mapping is not None:
            self._claim_mapping(addr, mapping)
        if self._replies:
            self._replies.pop(mapping, None)
        peer = self._untrusted.pop(addr, None) or self._spent.pop(addr, None)
        if peer is None:
            peer = self._trusted.get(addr)
            if peer is None:
                peer = self._new(addr, mapping, now)
            else:
                self._trusted.move_to_end(addr)
        self._trusted[addr] = peer
        peer.trusted = True
        peer.mapping = mapping
        peer.last_rx = now
        peer.bubbles = peer.attempts = peer.rounds = 0
        peer.nonce = peer.candidate = None
        self._retry.pop(addr, None)
        return self._take_queue(peer)

    def _claim_mapping(self, addr: bytes, mapping: Mapping) -> None:
        """Add `addr` to the trusted addresses at `mapping`; if that makes one too many, the
        least recently heard of the others gives way."""
        by_mapping = self._by_mapping
        assert by_mapping is not None and self.addresses_per_mapping is not None
        current = self._trusted.get(addr)
        if current is not None:
            if current.mapping == mapping:
                return
            self._unclaim(current)  # the peer moved
        holders = by_mapping.setdefault(mapping, [])
        if len(holders) >= self.addresses_per_mapping:
            trusted = self._trusted
            self._remove(min((trusted[holder] for holder in holders), key=attrgetter("last_rx")))
            self.superseded += 1
            holders = by_mapping.setdefault(mapping, [])
        holders.append(addr)

    def _unclaim(self, peer: Peer) -> None:
        """Take trusted `peer` off its mapping's list of addresses."""
        assert self._by_mapping is not None
        holders = self._by_mapping[peer.mapping]  # type: ignore[index]  # trusted => mapped
        holders.remove(peer.addr)
        if not holders:
            del self._by_mapping[peer.mapping]  # type: ignore[arg-type]

    def enqueue(self, peer: Peer, packet: bytes) -> bool:
        """Queue `packet` for `peer` (which must be in the table); False if over a bound.

        Either way the packet asked for the peer: discovery may run one round past the
        one in progress (`ROUNDS_PER_PACKET` in all for the packet that starts it).
        """
        wanted = max(peer.attempts, 1) + ROUNDS_PER_PACKET - 1
        if wanted > peer.rounds:
            peer.rounds = min(wanted, 1 + BUBBLE_RETRIES)
        size = len(packet)
        if peer.queued + size > self.queue_bytes or self._queued + size > self.total_queue_bytes:
            return False
        if peer.queue is None:
            peer.queue = [packet]
        else:
            peer.queue.append(packet)
        peer.queued += size
        self._queued += size
        return True

    def try_reply_bubble(self, mapping: Mapping, now: float) -> bool:
        """Whether a bubble answering one received through our server (RFC 4380 §5.2.3: the
        origin asks us to open our NAT) may go to `mapping` now; if so, count it.

        Paced as our own bubbles, but per mapping, not per IPv6 source: relays all bubble
        from the same link-local, and the answer to a relay comes from a native host's
        address. A reception from the mapping (`trust`, `touch_rx`) is the answer that
        renews the budget. At most `max_peers` mappings are remembered, oldest forgotten.
        """
        replies = self._replies
        pacing = replies.get(mapping)
        if pacing is None:
            if len(replies) >= self.max_peers:
                replies.popitem(last=False)
            pacing = replies[mapping] = Pacing()
        else:
            replies.move_to_end(mapping)
        return pacing.allow(now)

    def try_bubble(self, peer: Peer, now: float) -> bool:
        """Whether a bubble (or the client's echo probe) may go to `peer` now; if so, count it.

        RFC 4380 §5.2.6 pacing (`Pacing`). An untrusted peer is (re)scheduled for
        `due_for_retry` 2 s from now.
        """
        if not peer.allow(now):
            return False
        if not peer.trusted:
            peer.attempts += 1
            self._retry[peer.addr] = peer
            self._retry.move_to_end(peer.addr)
        return True

    def due_for_retry(self, now: float) -> list[Peer]:
        """Untrusted peers whose last bubble went unanswered for 2 s, removed from the schedule.

        For each, the caller bubbles again through `try_bubble` (which schedules the next
        retry) if `retry_wanted`, or gives up.
        """
        due = []
        for peer in self._retry.values():
            if now < peer.bubble_at + BUBBLE_INTERVAL:
                break
            due.append(peer)
        for peer in due:
            del self._retry[peer.addr]
        return due

    def retry_wanted(self, peer: Peer) -> bool:
        """Whether the packets waiting for `peer` still want another round of discovery."""
        return peer.attempts < peer.rounds

    def give_up(self, peer: Peer) -> list[bytes]:
        """End `peer`'s discovery unanswered; returns its queue, oldest first."""
        peer.attempts = peer.rounds = 0
        self._retry.pop(peer.addr, None)
        return self._take_queue(peer)

    def touch_rx(self, peer: Peer, now: float) -> None:
        """A packet from `peer` was accepted: it stays valid another `idle_timeout`."""
        peer.last_rx = now
        if self._replies:
            self._replies.pop(peer.mapping, None)  # type: ignore[call-overload]
        if peer.trusted:
            self._trusted.move_to_end(peer.addr)
        else:
            self._spent.pop(peer.addr, None)
            self._untrusted[peer.addr] = peer
            self._untrusted.move_to_end(peer.addr)

    def expire(self, now: float) -> int:
        """Remove the peers not heard from for `idle_timeout`; returns how many.

        Cost is proportional to the number removed: both lists are oldest first.
        """
        removed = 0
        for peers in (self._untrusted, self._trusted):
            stale = []
            for peer in peers.values():
                if now < peer.last_rx + self.idle_timeout:
                    break
                stale.append(peer)
            for peer in stale:
                if not peer.trusted and self._spent_until(peer) > now:
                    del self._untrusted[peer.addr]
                    self._retry.pop(peer.addr, None)
                    self._spent[peer.addr] = peer
                else:
                    self._remove(peer)
                    removed += 1
        spent = []
        for peer in self._spent.values():
            if now < self._spent_until(peer):
                break
            spent.append(peer)
        for peer in spent:
            self._remove(peer)
        removed += len(spent)
        self.expired += removed
        return removed

    @staticmethod
    def _spent_until(peer: Peer) -> float:
        """When a peer's bubble budget renews (RFC 4380 §5.2.6); 0 while it has bubbles left."""
        return peer.bubble_at + BUBBLE_WINDOW if peer.bubbles >= BUBBLE_LIMIT else 0.0

    def next_deadline(self) -> float | None:
        """When `expire` or `due_for_retry` next has work, or None for an empty table."""
        oldest = (next(iter(self._trusted.values()), None), next(iter(self._untrusted.values()), None))
        deadlines = [peer.last_rx + self.idle_timeout for peer in oldest if peer is not None]
        spent = next(iter(self._spent.values()), None)
        if spent is not None:
            deadlines.append(self._spent_until(spent))
        retry = next(iter(self._retry.values()), None)
        if retry is not None:
            deadlines.append(retry.bubble_at + BUBBLE_INTERVAL)
        return min(deadlines, default=None)

    def stats(self) -> dict[str, int]:
        return {
            "count": len(self),
            "trusted": len(self._trusted),
            "spent": len(self._spent),
            "queued_bytes": self._queued,
            "evicted": self.evicted,
            "expired": self.expired,
            "superseded": self.superseded,
        }

    def snapshot(self, now: float, limit: int | None = None) -> list[dict[str, Any]]:
        """Up to `limit` peers (None: all) for the operator, most recently heard from first."""
        recent = heapq.merge(
            reversed(self._trusted.values()),
            reversed(self._untrusted.values()),
            reversed(self._spent.values()),
            key=attrgetter("last_rx"),
            reverse=True,
        )
        return [
            {
                "address": str(ipaddress.IPv6Address(peer.addr)),
                "mapping": None if peer.mapping is None else f"{peer.mapping[0]}:{peer.mapping[1]}",
                "trusted": peer.trusted,
                "idle": round(now - peer.last_rx, 3),
                "queued_bytes": peer.queued,
            }
            for peer in islice(recent, limit)
        ]

    def resize(self, max_peers: int) -> None:
        """A new bound (a reloaded max_peers); a smaller one evicts as a full table would."""
        if max_peers < 1:
            raise ValueError(f"max_peers must be at least 1, not {max_peers}")
        self.max_peers = max_peers
        while len(self) > max_peers:
            self._evict()

    def _new(self, addr: bytes, mapping: Mapping | None, now: float) -> Peer:
        if len(self) >= self.max_peers:
            self._evict()
        return Peer(addr, mapping, now)

    def _evict(self) -> None:
        """Spent first, then least recently heard from untrusted, then trusted (module docstring)."""
        victims = self._spent or self._untrusted or self._trusted
        self._remove(next(iter(victims.values())))
        self.evicted += 1

    def _remove(self, peer: Peer) -> None:
        if peer.trusted:
            del self._trusted[peer.addr]
            if self._by_mapping is not None:
                self._unclaim(peer)
        elif self._untrusted.pop(peer.addr, None) is None:
            del self._spent[peer.addr]
        self._retry.pop(peer.addr, None)
        self._queued -= peer.queued

    def _take_queue(self, peer: Peer) -> list[bytes]:
        queue = peer.queue
        if queue is None:
            return []
        self._queued -= peer.queued
        peer.queue = None
        peer.queued = 0
        return queue

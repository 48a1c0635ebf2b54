"""Rate limits with bounded memory, fed a clock value like the role machines (sans-I/O).

`PerSecond` is one budget for what a role originates (ICMPv6 errors, bubbles): the
window opens at the first message after the previous window closed and allows `limit`
messages until one second later; a count and a time, nothing per message.

`IcmpErrorBudget` is RFC 4443's rules for the ICMPv6 errors a relay or client originates,
on one `PerSecond`.

`KeyedRateLimit` is a token bucket per key (the server's RS limit per source address),
kept in the form of the generic cell rate algorithm: one float per key, the time at
which that key's bucket will be full again minus one token ("theoretical arrival time"),
so a check is one dict read, a compare and one dict write, with no per-key object. The
table is two generations of dicts: when the young one holds half the capacity it becomes
the old one and the previous old one is forgotten. A key seen again is copied to the
young generation, so an active sender is never forgotten, and memory never exceeds
`capacity` entries. A forgotten key starts again with a full bucket: an attacker who
cycles through `capacity / 2` fresh keys to make that happen has sent far more than the
burst it wins back.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from teredo_appliance import accel
from teredo_appliance.stats import Counters
from teredo_appliance.wire.ipv6 import IPv6Header, error_allowed

ICMP_ERRORS_PER_SECOND = 10  # RFC 4443 §2.4 (f): Miredo's budget towards the local stack, all kinds


class PerSecond:
    """At most `limit` units of cost in any window of one second that opens on use."""

    __slots__ = ("_left", "_window", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._window = float("-inf")
        self._left = 0

    def allow(self, now: float, cost: int = 1) -> bool:
        """Whether `cost` more units may go out at `now`; if so, they are spent."""
        if now >= self._window + 1.0:
            self._window = now
            self._left = self.limit
        if self._left < cost:
            return False
        self._left -= cost
        return True


class IcmpErrorBudget:
    """RFC 4443 §2.4 (e) and (f) for the ICMPv6 errors a role sends (relay and client alike):
    never about an error, a multicast or an unspecified source, and at most `per_second` a
    second of every kind together (Miredo's budget: ICMP_ERRORS_PER_SECOND), counted."""

    def __init__(self, counters: Counters, per_second: int = ICMP_ERRORS_PER_SECOND) -> None:
        self.counters = counters
        self._rate = PerSecond(per_second)

    def allow(self, invoking: bytes, header: IPv6Header, now: float) -> bool:
        """Whether an error about `invoking` may go out at `now` (if so, it is counted as sent)."""
        if not error_allowed(invoking, header):
            return False
        if not self._rate.allow(now):
            self.counters["icmp.rate-limited"] += 1
            return False
        self.counters["icmp.sent"] += 1
        return True


class KeyedRateLimit:
    """At most `burst` events at once per key, then `rate` per second."""

    def __init__(self, rate: float, burst: int, capacity: int) -> None:
        if rate <= 0 or burst < 1 or capacity < 2:
            raise ValueError("rate must be positive, burst and capacity at least 1 and 2")
        self._interval = 1.0 / rate
        # The b-th event of a burst finds its key (b - 1) intervals in debt; a millionth
        # of an interval of slack keeps float rounding from refusing it.
        self._tolerance = (burst - 1 + 1e-6) * self._interval
        self._generation = capacity // 2
        self._young: dict[Hashable, float] = {}
        self._old: dict[Hashable, float] = {}

    def allow(self, key: Hashable, now: float) -> bool:
        """Whether one more event for `key` at `now` is within the limit (and count it if so)."""
        young = self._young
        due = young.get(key)
        if due is None:
            due = self._old.get(key, now)
            if len(young) >= self._generation:
                self._old = young
                young = self._young = {}
            young[key] = due
        if due < now:
            due = now
        if due - now > self._tolerance:
            return False
        young[key] = due + self._interval
        return True

    def __len__(self) -> int:
        """Keys remembered (both generations; a key may be in both)."""
        return len(self._young) + len(self._old)


class IPv4RateLimit(Protocol):
    """What the server needs of a per-address limit: KeyedRateLimit or its C twin."""

    def allow(self, key: int, now: float, /) -> bool: ...

    def __len__(self) -> int: ...


def ipv4_rate_limit(rate: float, burst: int, capacity: int) -> IPv4RateLimit:
    """A KeyedRateLimit for IPv4 address keys (ints): the C twin (`_rsfast.RateTable`, the same
    algorithm) where it is built, so the server's C fast path and its Python rules spend from
    one table."""
    if accel.rsfast is not None:
        return accel.rsfast.RateTable(rate, burst, capacity)  # type: ignore[no-any-return]
    return KeyedRateLimit(rate, burst, capacity)

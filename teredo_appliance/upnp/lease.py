"""When to renew a UPnP port mapping and when to retry after a failure: sans-I/O, fed `now`.

An IGD forgets a mapping when its lease ends (WANIPConnection:2 caps leases at a week, and
some IGDs silently shorten them), so the mapping is asked for again at half the lease,
like a DHCP client's T1. A failure (no IGD, refused, timeout) is retried with a doubling
back-off between RETRY_FIRST and RETRY_MAX seconds; a mapping still valid is kept until it
expires, so one lost renewal does not cost the client its port.
"""

from __future__ import annotations

from dataclasses import dataclass

RENEW_FRACTION = 0.5  # of the lease, like DHCP's T1 (RFC 2131 §4.4.5)
RETRY_FIRST = 5.0  # seconds after a first failure
RETRY_MAX = 300.0  # the back-off's ceiling


@dataclass
class LeaseSchedule:
    """One mapping's timeline: `next_at` is when the I/O side should (re)try AddPortMapping."""

    lease: float  # seconds asked for
    expires_at: float | None = None  # None: not mapped
    next_at: float = 0.0  # act now at first
    failures: int = 0

    def mapped(self, now: float) -> None:
        """The IGD granted (or renewed) the mapping at `now`."""
        self.expires_at = now + self.lease
        self.next_at = now + self.lease * RENEW_FRACTION
        self.failures = 0

    def failed(self, now: float) -> None:
        """An attempt failed at `now`: retry later, never past the current lease's end."""
        self.failures += 1
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (self.failures - 1))
        self.next_at = now + delay
        if self.expires_at is not None:
            if now >= self.expires_at:
                self.expires_at = None
            else:
                self.next_at = min(self.next_at, max(now + RETRY_FIRST, self.expires_at - RETRY_FIRST))

    def is_mapped(self, now: float) -> bool:
        return self.expires_at is not None and now < self.expires_at

    def released(self) -> None:
        """The mapping was deleted (or given up): nothing to renew."""
        self.expires_at = None

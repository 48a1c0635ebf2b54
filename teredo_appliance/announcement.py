"""Whether a role's anycast route (or addresses) should be in the kernel: drain, grace, health.

Scaling out (twistd-teredo(8)): a routing daemon (BIRD) announces what the appliance puts
in the kernel and withdraws what it removes. So the appliance only owns that route and a
drain state; this module is that state, sans-I/O: fed requests, health and `now`, it says
whether the route is wanted and what to report. `roles/anycast.py` applies it.
"""

from __future__ import annotations

ANNOUNCED = "announced"  # wanted and healthy: in the kernel, so the routing daemon announces it
WITHDRAWN = "withdrawn"  # a health problem took it out until the role is repaired
DRAINING = "draining"  # withdrawn on request; existing peers are still served for the grace
DRAINED = "drained"  # withdrawn on request and the grace is over: safe to stop


class Announcement:
    """A drain request with its grace deadline, and the role's health problem (None: healthy)."""

    def __init__(self) -> None:
        self.drain_until: float | None = None  # None: not drained
        self.problem: str | None = None

    @property
    def wanted(self) -> bool:
        """Whether the route belongs in the kernel now."""
        return self.drain_until is None and self.problem is None

    def drain(self, now: float, grace: float) -> float:
        """Withdraw for good (until `undrain`); returns when the grace ends. A second drain
        never extends the first one's deadline: a stop asked during a drain is not delayed."""
        deadline = now + max(grace, 0.0)
        if self.drain_until is None or deadline < self.drain_until:
            self.drain_until = deadline
        return self.drain_until

    def undrain(self) -> None:
        self.drain_until = None

    def state(self, now: float) -> str:
        if self.drain_until is not None:
            return DRAINED if now >= self.drain_until else DRAINING
        return WITHDRAWN if self.problem is not None else ANNOUNCED

    def grace_left(self, now: float) -> float:
        """Seconds until a drain is over (0 when drained or not draining)."""
        return 0.0 if self.drain_until is None else max(self.drain_until - now, 0.0)

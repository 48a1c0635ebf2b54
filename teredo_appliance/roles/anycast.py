"""Keeps the kernel in line with a role's Announcement: adds or removes what a routing daemon
announces (the relay's route to the Teredo prefix, the server's anycast /32s on lo).

The relay and the server share this; each passes how to add and remove its part and how to
tell whether it is in place. A failed addition is returned as a problem sentence (the role
reports it as its health and retries); a failed removal is logged, since the part may be
gone already (the kernel flushes a deleted TUN's routes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from teredo_appliance.announcement import ANNOUNCED, DRAINED, Announcement
from teredo_appliance.netlink import LinkError


class Announcer:
    """`what` names the part in messages ("route 2001::/32 proto 4 metric 1024")."""

    log = Logger()

    def __init__(self, what: str, add: Callable[[], None], remove: Callable[[], None],
                 installed: Callable[[], bool], clock: Any) -> None:
        self.what = what
        self._add, self._remove, self._installed = add, remove, installed
        self._clock = clock
        self.state = Announcement()

    def reconcile(self) -> str | None:
        """Add or remove the part as the state wants; a problem sentence if it could not be added."""
        installed = self._installed()
        if self.state.wanted and not installed:
            try:
                self._add()
            except LinkError as error:
                return f"cannot announce {self.what}: {error}"
            self.log.info("announcing {what}", what=self.what)
        elif not self.state.wanted and installed:
            try:
                self._remove()
            except LinkError as error:
                self.log.info("withdrawing {what}: {error}", what=self.what, error=str(error))
            self.log.info("withdrew {what} ({state})", what=self.what, state=self.state.state(self._clock.seconds()))
        return None

    def set_problem(self, problem: str | None) -> str | None:
        """The role's health changed: withdraw while it has a problem, announce once it has none."""
        self.state.problem = problem
        return self.reconcile()

    def drain(self, grace: float) -> Deferred[dict[str, Any]]:
        """Withdraw now; fires with status() once the grace is over."""
        now = self._clock.seconds()
        deadline = self.state.drain(now, grace)
        self.reconcile()
        return deferLater(self._clock, deadline - now, self.status)

    def undrain(self) -> str | None:
        self.state.undrain()
        return self.reconcile()

    @property
    def announced(self) -> bool:
        return self.state.state(self._clock.seconds()) == ANNOUNCED and self._installed()

    @property
    def drained(self) -> bool:
        return self.state.state(self._clock.seconds()) == DRAINED

    def status(self) -> dict[str, Any]:
        now = self._clock.seconds()
        return {"state": self.state.state(now), "announced": self.announced, "what": self.what,
                "grace_left": round(self.state.grace_left(now), 1)}

"""What the appliance needs from every role service: a name, its config, status, peers."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from teredo_appliance.stats import Counters


class RoleService(Service):
    """Base of the server, relay and client services.

    Subclasses open privileged resources (sockets, TUN, raw sockets) in
    `privilegedStartService`, so `twistd -u/-g` can drop root afterwards, and
    release them in `stopService` (returning a Deferred when release is asynchronous).
    """

    role: str = "?"
    log = Logger()

    def __init__(self, config: Any, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.counters = Counters()
        self.started_at: float | None = None
        self.setName(self.role)

    def startService(self) -> None:
        super().startService()
        self.started_at = self.reactor.seconds()  # monotonic under twistd (teredo_appliance.clock)

    def reconfigurable(self, config: Any) -> bool:
        """Whether reconfigure(config) can apply this new config (changed only in the role
        plugin's live_keys) to the running service now; False: the reload restarts the role."""
        return True

    def reconfigure(self, config: Any) -> None:
        """Apply a new config that differs only in live keys; the sockets, TUN, peers and
        qualification stay. Subclasses apply the keys they declare, then call this."""
        self.config = config

    def health(self) -> str | None:
        """What keeps a running role from working as configured (e.g. its TUN was deleted
        from outside), or None."""
        return None

    def needs_restart(self) -> bool:
        """Whether a reload should restart the role: by default, while it has a problem."""
        return self.health() is not None

    def status(self) -> dict[str, Any]:
        """A JSON-friendly report: role, uptime, health, counters, drops by reason and bytes by
        direction; subclasses add the rest."""
        uptime = None if self.started_at is None else round(self.reactor.seconds() - self.started_at, 1)
        problem = self.health()
        return {
            "role": self.role,
            "running": bool(self.running),
            "health": "ok" if problem is None else f"degraded: {problem}",
            "uptime": uptime,
            "counters": self.counters.events(),
            "drops": self.counters.drops(),
            "bytes": self.counters.traffic(),
        }

    def peers(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Up to `limit` known peers as dicts (None: all); roles without a peer table have none."""
        return []

    def peer_count(self) -> int:
        """How many peers the role knows, however many `peers()` was asked to list."""
        return 0

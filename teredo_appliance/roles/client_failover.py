"""The client's Teredo servers in failover order: the configured one, then the fallbacks.

RFC 4380 §5.2.5 says a client that lost its server should find another; the order, and
how long to stay offline once every server failed, are ours: each server once per pass,
in order, then a pause that doubles from RETRY_BACKOFF_MIN up to RETRY_BACKOFF_MAX.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

RETRY_BACKOFF_MIN = 5.0  # after a pass in which every server failed: first pause, doubling...
RETRY_BACKOFF_MAX = 120.0  # ...up to this; also the retry period behind a symmetric NAT


@dataclass
class Server:
    """One Teredo server as configured, and its address once resolved."""

    name: str  # as configured: a host name or a dotted quad
    secondary: int | None  # configured secondary address; None: primary + 1 (what Windows assumes)
    ip: int | None = None  # resolved primary address

    @property
    def secondary_ip(self) -> int:
        assert self.ip is not None
        return self.secondary if self.secondary is not None else (self.ip + 1) & 0xFFFFFFFF


class ServerChain:
    """Which server is in use, how much of the current pass is left, and the backoff."""

    def __init__(self, first: str, secondary: int | None, fallbacks: Sequence[str]) -> None:
        self.servers = [Server(first, secondary), *(Server(name, None) for name in fallbacks)]
        self.index = 0  # the server in use, or being tried
        self._left = 0  # servers not yet tried in this pass
        self._backoff = RETRY_BACKOFF_MIN

    def __getitem__(self, index: int) -> Server:
        return self.servers[index]

    @property
    def current(self) -> Server:
        return self.servers[self.index]

    def new_pass(self) -> None:
        """Every server gets one more try, whichever is tried first."""
        self._left = len(self.servers)

    def next_after(self, index: int) -> int | None:
        """The server to try now that `index` failed, or None when the pass is over."""
        self._left -= 1
        return (index + 1) % len(self.servers) if self._left > 0 else None

    def pause(self) -> float:
        """How long to stay offline after a failed pass; the next one waits twice as long."""
        wait = self._backoff
        self._backoff = min(wait * 2, RETRY_BACKOFF_MAX)
        self.index = 0
        return wait

    def qualified(self, index: int) -> None:
        self.index = index
        self._backoff = RETRY_BACKOFF_MIN

    def replace_fallbacks(self, names: Sequence[str]) -> None:
        """A reloaded fallback list; servers kept keep their resolved address. A pass under way
        covers the new list. The caller makes sure no fallback is in use (indices move)."""
        known = {server.name: server for server in self.servers[1:]}
        fallbacks = [known.get(name) or Server(name, None) for name in names]
        if self._left > 0:
            self._left = max(1, self._left + len(fallbacks) - len(self.servers) + 1)
        self.servers = [self.servers[0], *fallbacks]

    def __len__(self) -> int:
        return len(self.servers)

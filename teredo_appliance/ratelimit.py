"""A per-second budget for messages a role originates (ICMPv6 errors, bubbles). Sans-I/O.

The window opens at the first message after the previous window closed and allows
`limit` messages until one second later: a count and a time, nothing per message.
"""

from __future__ import annotations


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

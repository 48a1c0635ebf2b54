"""Containment for per-packet handlers: a bug costs a counted drop and one log line.

Without it, an exception in a role's packet handler would reach Twisted's reader,
which logs a full traceback for every packet: a flood of identical packets would be a
flood of tracebacks.
"""

from __future__ import annotations

from twisted.logger import Logger

from teredo_appliance.stats import Counters


class PacketGuard:
    """Call `failed()` from the `except Exception:` around a per-packet handler."""

    log = Logger()

    def __init__(self, counters: Counters, label: str) -> None:
        self.counters = counters
        self.label = label
        self._logged = False

    def failed(self) -> None:
        self.counters.drop("internal-error")
        if not self._logged:  # a bug, not traffic: once per source is enough to find it
            self._logged = True
            self.log.failure("{label}: unexpected error handling a packet (further ones only counted)",
                             label=self.label)

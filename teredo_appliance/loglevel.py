"""`log.level` from the config: a level gate in front of the observers twistd installed.

twistd chooses where logs go (--logfile, --syslog, stdout) and attaches that observer to
the global publisher before any service starts; it offers no level setting. So at start
the appliance moves the observers already attached to the publisher behind one
FilteringLogObserver whose minimum level a reload can change, and puts them back at
stop. Observers added later (none in a twistd process) are not filtered.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogPublisher,
    PredicateResult,
    globalLogPublisher,
)
from zope.interface import implementer

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}


@implementer(ILogFilterPredicate)
class MinimumLevel:
    """Drop events below `level`; events without a level (rare, foreign) pass."""

    def __init__(self, level: LogLevel = LogLevel.info) -> None:
        self.level = level

    def __call__(self, event: LogEvent) -> PredicateResult:
        level = event.get("log_level")
        return PredicateResult.no if level is not None and level < self.level else PredicateResult.maybe


class LevelGate:
    """Puts the publisher's current observers behind a level filter, and back."""

    def __init__(self, publisher: LogPublisher = globalLogPublisher) -> None:
        self._publisher = publisher
        self._predicate = MinimumLevel()
        self._behind = LogPublisher()
        self._gate = FilteringLogObserver(self._behind, [self._predicate])
        self._moved: list[ILogObserver] = []

    @property
    def level(self) -> str:
        return next(name for name, level in LEVELS.items() if level is self._predicate.level)

    def set_level(self, name: str) -> None:
        """Apply a config level name: debug, info, warn or error."""
        self._predicate.level = LEVELS[name]

    def install(self) -> None:
        # LogPublisher offers add/remove but no listing: its _observers list (stable since
        # Twisted 15.2) is the only way to find the observer twistd attached.
        self._moved = [o for o in self._publisher._observers if o is not self._gate]
        for observer in self._moved:
            self._publisher.removeObserver(observer)
            self._behind.addObserver(observer)
        self._publisher.addObserver(self._gate)

    def uninstall(self) -> None:
        self._publisher.removeObserver(self._gate)
        for observer in self._moved:
            self._behind.removeObserver(observer)
            self._publisher.addObserver(observer)
        self._moved = []

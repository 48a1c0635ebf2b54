"""One clock for every timer and age in the process: monotonic, so a wall-clock step moves none.

Twisted's reactor schedules every callLater on `reactor.seconds()`, which is time.time:
when NTP or an operator steps the clock back 600 s, a refresh due in 30 s fires 630 s
later and "last qualified" turns negative. The roles read time only from their
reactor (tests hand them a task.Clock), so switching the process's reactor to
time.monotonic fixes every deadline and age at once. Log timestamps stay wall-clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def monotonic_reactor(reactor: Any, clock: Callable[[], float] = time.monotonic) -> None:
    """Make `reactor` keep time with `clock`; calls already scheduled keep their delays."""
    if reactor.seconds == clock:
        return
    offset = clock() - reactor.seconds()
    for call in reactor.getDelayedCalls():
        call.time += offset  # the same offset for all: the reactor's heap order holds
        call.seconds = clock
    reactor.seconds = clock

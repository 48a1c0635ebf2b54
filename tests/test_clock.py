"""teredo_appliance.clock: timers and ages survive a wall-clock step."""

from __future__ import annotations

import time

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.clock import monotonic_reactor

WALL = 1_790_000_000.0  # a time.time() reading
STEP = 600.0  # NTP or an operator sets the clock back this much


class SteppedClock:
    """A task.Clock as twistd's reactor is: timed by the wall clock, which may be stepped."""

    def __init__(self) -> None:
        self.reactor = task.Clock()
        self.reactor.advance(WALL)
        self.monotonic = 5000.0

    def read(self) -> float:
        return self.monotonic

    def elapse(self, seconds: float) -> None:
        """Real time passes: both clocks move, and the reactor runs what is due."""
        self.monotonic += seconds
        self.reactor.advance(seconds)

    def step_back(self) -> None:
        self.reactor.rightNow -= STEP


class MonotonicReactorTests(SynchronousTestCase):
    def test_a_wall_clock_step_back_does_not_delay_a_timer(self) -> None:
        clock = SteppedClock()
        monotonic_reactor(clock.reactor, clock.read)
        fired: list[float] = []
        clock.reactor.callLater(30, lambda: fired.append(clock.read()))
        clock.elapse(10)
        clock.step_back()
        clock.elapse(20)
        self.assertEqual(fired, [5030.0])

    def test_calls_scheduled_before_the_switch_keep_their_delay(self) -> None:
        clock = SteppedClock()
        fired: list[str] = []
        clock.reactor.callLater(5, fired.append, "early")
        monotonic_reactor(clock.reactor, clock.read)
        clock.step_back()
        clock.elapse(4.9)
        self.assertEqual(fired, [])
        clock.elapse(0.1)
        self.assertEqual(fired, ["early"])

    def test_twice_is_once(self) -> None:
        clock = SteppedClock()
        monotonic_reactor(clock.reactor, clock.read)
        call = clock.reactor.callLater(5, lambda: None)
        monotonic_reactor(clock.reactor, clock.read)
        self.assertEqual(call.getTime(), 5005.0)

    def test_default_is_time_monotonic(self) -> None:
        reactor = task.Clock()
        monotonic_reactor(reactor)
        self.assertIs(reactor.seconds, time.monotonic)

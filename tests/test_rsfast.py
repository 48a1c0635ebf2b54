"""The server's C fast path (teredo_appliance._rsfast): built where a compiler is, and the same
decisions, bytes and counters as the Python ServerMachine it twins."""

from __future__ import annotations

import errno
import os
import shutil
import socket
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from teredo_appliance import accel
from teredo_appliance.ratelimit import KeyedRateLimit, ipv4_rate_limit
from teredo_appliance.roles.server_machine import ANSWERED_RS, PRIMARY, REPLY, SECONDARY, Output, ServerMachine
from teredo_appliance.stats import Counters
from teredo_appliance.wire.address import ipv4_to_int
from teredo_appliance.wire.teredo import AuthIndicator, parse_datagram
from tests.test_server import SERVER, SERVER2, _datagrams, _known, _sources, rs

WHICH = (PRIMARY, SECONDARY)


def require_rsfast() -> Any:
    if accel.rsfast is None:
        raise SkipTest("the C fast path is not built here (no compiler at install time)")
    return accel.rsfast


class BuildTests(SynchronousTestCase):
    def test_built_wherever_a_compiler_is(self) -> None:
        """A silent fallback to the slow path must not go unnoticed where it could be built."""
        if not (shutil.which("cc") or shutil.which("gcc")):
            raise SkipTest("no C compiler here: the plain Python path is the expected one")
        self.assertIsNotNone(accel.rsfast, "a compiler is here but teredo_appliance._rsfast did not build")


class RateTableTests(SynchronousTestCase):
    """RateTable is KeyedRateLimit's algorithm, generations and all."""

    @settings(max_examples=300, deadline=None)
    @given(
        st.floats(0.5, 50.0), st.integers(1, 5), st.integers(2, 9),
        st.lists(st.tuples(st.integers(0, 12) | st.integers(0, 0xFFFFFFFF), st.floats(0.0, 0.6)), max_size=120),
    )
    def test_same_answers_as_keyed_rate_limit(self, rate: float, burst: int, capacity: int,
                                              events: list[tuple[int, float]]) -> None:
        rsfast = require_rsfast()
        table, reference = rsfast.RateTable(rate, burst, capacity), KeyedRateLimit(rate, burst, capacity)
        now = 100.0
        for key, step in events:
            now += step
            self.assertEqual(table.allow(key, now), reference.allow(key, now), (key, now))
            self.assertEqual(len(table), len(reference))

    def test_bad_parameters_and_keys(self) -> None:
        rsfast = require_rsfast()
        for args in ((0, 1, 2), (1, 0, 2), (1, 1, 1), (float("nan"), 1, 2)):
            self.assertRaises(ValueError, rsfast.RateTable, *args)
        table = rsfast.RateTable(1, 1, 4)
        self.assertRaises(OverflowError, table.allow, 1 << 32, 0.0)
        self.assertRaises(OverflowError, table.allow, -1, 0.0)
        self.assertRaises(TypeError, table.allow, 1)

    def test_the_server_uses_it(self) -> None:
        require_rsfast()
        self.assertIsInstance(ipv4_rate_limit(1, 1, 4), accel.rsfast.RateTable)


def _machines(test: SynchronousTestCase, **options: Any) -> tuple[ServerMachine, ServerMachine]:
    """The same server twice: plain Python (the reference) and with its C fast path."""
    require_rsfast()
    with_c = ServerMachine(SERVER, SERVER2, Counters(), rs_rate=2.0, rs_burst=3, **options)
    built, accel.rsfast = accel.rsfast, None  # as where it is not built
    try:
        plain = ServerMachine(SERVER, SERVER2, Counters(), rs_rate=2.0, rs_burst=3, **options)
    finally:
        accel.rsfast = built
    test.assertIsNone(plain.fast_path)
    test.assertIsNotNone(with_c.fast_path)
    return plain, with_c


def _as_served(machine: ServerMachine, data: bytes, ip: int, port: int, which: str, now: float) -> Output | None:
    """What the server with the C fast path does: C first, the machine for what C passes on."""
    verdict = machine.fast_path.judge(data, ip, port, WHICH.index(which), now)
    if verdict is None:
        return machine.handle(data, ip, port, which, now)
    if verdict == "rs-rate-limited":
        machine.counters.drop(verdict)
        return None
    target, answer = verdict
    return WHICH[target], answer, REPLY, ANSWERED_RS


_rs_variants = st.builds(
    lambda nonce, confirmation, cone: AuthIndicator(nonce, confirmation).pack() + rs(cone, auth=None),
    st.binary(min_size=8, max_size=8), st.integers(0, 255), st.booleans(),
)


class SameDecisionTests(SynchronousTestCase):
    """Hypothesis: for any datagrams, sources and times, the C fast path plus the machine give
    exactly the plain machine's outputs (bytes, socket) and counters, rate limit included."""

    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.tuples(_rs_variants | _datagrams() | _known, _sources, st.sampled_from(WHICH),
                              st.floats(0.0, 0.4)), max_size=60), st.booleans())
    def test_same_as_the_plain_machine(self, inputs: list[tuple[bytes, tuple[int, int], str, float]],
                                       everything_reachable: bool) -> None:
        options = {"reachable_ipv4": (lambda ip: True)} if everything_reachable else {}
        plain, with_c = _machines(self, **options)
        now = 1000.0
        for data, (ip, port), which, step in inputs:
            now += step
            self.assertEqual(_as_served(with_c, data, ip, port, which, now), plain.handle(data, ip, port, which, now))
        self.assertEqual(with_c.counters, plain.counters)

    def test_answers_a_cone_rs_from_the_other_address(self) -> None:
        _, with_c = _machines(self)
        ip = ipv4_to_int("198.18.0.100")
        target, answer = with_c.fast_path.judge(rs(True), ip, 40000, 0, 1.0)
        self.assertEqual(target, 1)
        datagram = parse_datagram(answer)
        self.assertEqual((datagram.origin.ip, datagram.origin.port), (ip, 40000))

    def test_passes_on_what_it_does_not_answer(self) -> None:
        _, with_c = _machines(self)
        judge = with_c.fast_path.judge
        self.assertIsNone(judge(rs(), SERVER2, 3544, 0, 1.0))  # from ourselves: the machine counts the loop
        self.assertIsNone(judge(rs(), ipv4_to_int("198.18.0.100"), 0, 0, 1.0))  # port zero
        self.assertIsNone(judge(rs(), ipv4_to_int("10.1.2.3"), 4000, 0, 1.0))  # not a global source
        self.assertIsNone(judge(rs()[:-1], ipv4_to_int("198.18.0.100"), 4000, 0, 1.0))
        self.assertIsNone(judge(b"", ipv4_to_int("198.18.0.100"), 4000, 0, 1.0))

    def test_a_raising_predicate_is_an_error_not_a_crash(self) -> None:
        def broken(ip: int) -> bool:
            raise RuntimeError("predicate failed")

        _, with_c = _machines(self, reachable_ipv4=broken)
        self.assertRaises(RuntimeError, with_c.fast_path.judge, rs(), ipv4_to_int("198.18.0.100"), 4000, 0, 1.0)

    def test_bad_construction_is_refused(self) -> None:
        rsfast = require_rsfast()
        table = rsfast.RateTable(1, 1, 4)
        good = {"own": (1, 2), "port": 3544, "rs": (b"a", b"b"), "ra": (b"c", b"d"), "limiter": table,
                "non_global": (), "reachable": None}
        rsfast.FastPath(**good)
        for key, value, error in (("own", (1,), TypeError), ("port", 70000, ValueError),
                                  ("rs", (b"a",), TypeError), ("ra", (b"x" * 600, b"d"), ValueError),
                                  ("limiter", object(), TypeError), ("non_global", ((1,),), TypeError),
                                  ("non_global", None, TypeError)):
            self.assertRaises(error, rsfast.FastPath, **dict(good, **{key: value}))


class PumpTests(SynchronousTestCase):
    """The pump on real loopback sockets: it answers from the right socket and passes the rest on."""

    def udp(self, host: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind((host, 0))
        sock.setblocking(False)
        return sock

    def test_answers_and_passes_on(self) -> None:
        rsfast = require_rsfast()
        primary, secondary, client = self.udp("127.0.0.1"), self.udp("127.0.0.2"), self.udp("127.0.0.1")
        machine = ServerMachine(ipv4_to_int("127.0.0.1"), ipv4_to_int("127.0.0.2"), Counters(),
                                port=primary.getsockname()[1], reachable_ipv4=lambda ip: True, rs_burst=100)
        descriptors = (primary.fileno(), secondary.fileno())
        pump = rsfast.Pump(machine.fast_path, primary.fileno(), 0, descriptors)
        sent = [rs(), rs(), rs(), rs(True), rs(True), b"not teredo"]
        for data in sent:
            client.sendto(data, primary.getsockname())
        slow = pump.receive(1.0)
        self.assertEqual(pump.read, len(sent))
        self.assertEqual(slow, [(b"not teredo", client.getsockname())])
        answered, rate_limited, bytes_in, bytes_out, refused = pump.take_counts()
        self.assertEqual((answered, rate_limited, refused), (5, 0, {}))
        self.assertEqual(bytes_in, sum(len(d) for d in sent[:5]))
        answers = []
        while True:
            try:
                answers.append(client.recvfrom(2048))
            except BlockingIOError:
                break
        self.assertEqual(sorted(source for _, source in answers),
                         [primary.getsockname()] * 3 + [secondary.getsockname()] * 2)
        self.assertEqual(bytes_out, sum(len(data) for data, _ in answers))
        for data, _ in answers:
            origin = parse_datagram(data).origin
            self.assertEqual((origin.ip, origin.port), (ipv4_to_int("127.0.0.1"), client.getsockname()[1]))
        self.assertEqual(pump.receive(2.0), [])  # nothing waiting
        self.assertEqual(pump.read, 0)
        self.assertEqual(pump.take_counts(), (0, 0, 0, 0, {}))

    def test_a_closed_socket_is_an_os_error(self) -> None:
        rsfast = require_rsfast()
        machine = ServerMachine(SERVER, SERVER2, Counters())
        descriptor = os.open(os.devnull, os.O_RDONLY)
        os.close(descriptor)
        pump = rsfast.Pump(machine.fast_path, descriptor, 0, (descriptor, descriptor))
        error = self.assertRaises(OSError, pump.receive, 1.0)
        self.assertEqual(error.errno, errno.EBADF)
        self.assertRaises(ValueError, rsfast.Pump, machine.fast_path, descriptor, 2, (descriptor, descriptor))

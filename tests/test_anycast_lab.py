"""The anycast lab (lab/anycast.py): two boxes behind an ECMP upstream, both with BIRD.

Root and the lab's tools needed (skipped with the reason otherwise; a failure under
TEREDO_REQUIRE_LAB=1). One lab serves the scenarios in order; each prints its loss per
direction in seconds.
"""

from __future__ import annotations

import atexit
import os
import signal
import time
from typing import ClassVar

from twisted.trial import unittest

from teredo_appliance.teredoctl import ask
from teredo_lab import anycast, checks, topology
from teredo_lab.lab import Lab
from tests.labsupport import lab_skip_reason, skip_unless_lab

NETWORK = topology.teredo_network(anycast.SERVER_ANYCAST[0])
RECOVERY = 3.0  # seconds: each direction back within this after a box dies
MEASURE = 8.0  # seconds of probing per scenario
# Drain, then stop this much later: longer than a client's silent-relay re-check takes
# (RELAY_SILENCE, then one echo round trip), so even a flow only the client sends on has
# left the box before it stops.
DRAIN_WAIT = 3.0
class AnycastLab(unittest.TestCase):
    lab: ClassVar[Lab | None] = None

    def setUp(self) -> None:
        skip_unless_lab(lab_skip_reason(True))
        if AnycastLab.lab is None:
            lab = Lab(topology.Options(anycast=True), rundir=os.path.abspath("lab-anycast"))
            lab.up()
            AnycastLab.lab = lab
            atexit.register(self.tearDownClass)  # trial has no class fixtures: down when the run ends
            try:
                anycast.start(lab)
            except BaseException:
                self.tearDownClass()
                raise

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.lab is not None:
            cls.lab.down()
            cls.lab = None

    def fail_with_logs(self, message: str) -> None:
        assert self.lab is not None
        logs = "\n".join(f"--- {name} ---\n{text[-3000:]}" for name, text in self.lab.logs().items())
        self.fail(f"{message}\n{logs}")

    def client_address(self, client: str) -> str:
        assert self.lab is not None
        found = checks.wait_teredo_address(self.lab, client, NETWORK)
        if found is None:
            self.fail_with_logs(f"{client} has no address in {NETWORK}")
        return str(found)

    def per_box(self, counter: str, action) -> dict[str, int]:
        """How much `counter` of each box's relay grows while `action` runs."""
        assert self.lab is not None
        before = {box: anycast.relay_counters(self.lab, box).get(counter, 0) for box in anycast.BOXES}
        action()
        return {box: anycast.relay_counters(self.lab, box).get(counter, 0) - before[box] for box in anycast.BOXES}

    def ping(self, node: str, target: str, source: str | None = None) -> None:
        assert self.lab is not None
        argv = ["ping", "-6", "-n", "-c", "1", "-w", "5", *(["-I", source] if source else []), target]
        done = self.lab.run(node, argv, check=False)
        if done.returncode != 0:
            self.fail_with_logs(f"{node}: {' '.join(argv)}: {done.stdout} {done.stderr}")

    def doomed(self) -> tuple[str, str, str]:
        """A box, and two native addresses whose flows with client 1 it carries: one for
        pings both ways, one for a stream only the client sends on. The relays listen on
        their boxes' unicast addresses, so the relay that answers client 1's echo test
        (the upstream's ECMP pick for the native address) carries both directions."""
        self.client_address("client1")
        carried: dict[str, list[str]] = {box: [] for box in anycast.BOXES}
        for native in anycast.V6HOST_ADDRESSES:
            sent = self.per_box("to_ipv6", lambda native=native: self.ping("client1", native))
            carried[max(sent, key=sent.__getitem__)].append(native)
        box = max(carried, key=lambda b: len(carried[b]))
        if len(carried[box]) < 2:
            self.fail(f"no box carries two of client 1's flows: {carried}")
        return box, carried[box][0], carried[box][1]

    def report(self, title: str, loss: dict[str, tuple[int, float]]) -> None:
        print(f"\n{title}:")
        for flow, (lost, gap) in loss.items():
            print(f"  {flow}: {lost} probes lost, longest gap {gap:.1f} s")

    def test_1_six_checks_with_both_boxes(self) -> None:
        assert self.lab is not None
        results = checks.Checks(self.lab, NETWORK).run()
        failed = [r.line() for r in results if not r.ok]
        if failed:
            self.fail_with_logs("\n".join(failed))
        self.assertEqual(anycast.paths(self.lab), {anycast.SERVER_ANYCAST[0]: 2, "2001::/32": 2})
        self.client_address("client3")  # Miredo qualifies through the anycast server too
        self.ping("client3", anycast.V6HOST_ADDRESSES[0])

    def test_2_flows_spread_over_both_boxes(self) -> None:
        flows = dict.fromkeys(anycast.BOXES, 0)
        for client in ("client1", "client2", "client3"):
            address = self.client_address(client)
            for native in anycast.V6HOST_ADDRESSES:
                grew = self.per_box("to_teredo", lambda a=address, n=native: self.ping("v6host", a, n))
                flows[max(grew, key=grew.__getitem__)] += 1
        print(f"\nnative -> client flows per box: {flows}")
        self.assertTrue(all(flows.values()), flows)

    def test_3_kill_9_of_a_box_recovers_within_3_s(self) -> None:
        assert self.lab is not None
        box, native, one_way = self.doomed()
        client = self.client_address("client1")
        loss = anycast.measure(self.lab, "client1", client, native, one_way, MEASURE,
                               lambda: self.lab.signal_daemon(box, signal.SIGKILL))
        self.report(f"kill -9 of {box}'s appliance", loss)
        for flow, (_lost, gap) in loss.items():
            self.assertLessEqual(gap, RECOVERY, f"{flow}: {loss}")
        self.lab.restart_daemon(box)
        self.lab.wait_ready(box)
        anycast.wait_paths(self.lab, 2)

    def test_4_drain_then_stop_loses_nothing_and_a_restart_brings_ecmp_back(self) -> None:
        assert self.lab is not None
        box, native, one_way = self.doomed()
        client = self.client_address("client1")
        control = str(self.lab.daemons[box].control)

        def drain() -> None:
            for role in ("relay", "server"):
                ask(control, {"command": "drain", "role": role, "grace": 0})
            time.sleep(DRAIN_WAIT)
            self.lab.stop_daemon(box)

        loss = anycast.measure(self.lab, "client1", client, native, one_way, MEASURE, drain)
        self.report(f"teredoctl drain of {box}, then stop", loss)
        self.assertEqual([lost for lost, _ in loss.values()], [0, 0, 0], loss)
        self.assertEqual(set(anycast.paths(self.lab).values()), {1})
        self.lab.restart_daemon(box)
        self.lab.wait_ready(box)
        took = anycast.wait_paths(self.lab, 2)
        print(f"restart of {box}: ECMP over both boxes again after {took:.1f} s")

    def test_5_a_dead_server_box_clients_requalify_through_the_survivor(self) -> None:
        assert self.lab is not None
        self.addCleanup(self.tearDownClass)  # the last scenario
        box = anycast.BOXES[0]
        record = self.lab.record
        assert record is not None
        started = time.monotonic()
        self.lab.signal_daemon(box, signal.SIGKILL)
        os.kill(record.processes[f"bird-{box}"].pid, signal.SIGKILL)  # the whole box falls silent
        took = anycast.wait_paths(self.lab, 1)
        print(f"\n{box} dead: the upstream routes to one box after {took:.1f} s")
        for client in ("client2", "client3"):
            self.lab.restart_daemon(client)
        for client in ("client2", "client3"):
            if checks.wait_teredo_address(self.lab, client, NETWORK, timeout=15) is None:
                self.fail_with_logs(f"{client} did not re-qualify through the surviving server")
        print(f"clients re-qualified {time.monotonic() - started:.1f} s after the box died")
        self.ping("client2", anycast.V6HOST_ADDRESSES[1])
        self.ping("client3", anycast.V6HOST_ADDRESSES[2])

"""Our client in the namespace lab (needs root, network namespaces and Miredo).

Skipped with the reason where the lab cannot run (or failed, when CI sets
TEREDO_REQUIRE_LAB=1). Each class builds its own lab and removes it, even on failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.trial import unittest

from teredo_lab import checks, topology
from teredo_lab.lab import MIREDO, OURS, Lab
from teredo_lab.scenario import Scenario, client_section, scenario_lab, server_section
from tests.labsupport import ScenarioChecks, scenario_skip_reason, skip_unless_lab

FIRST_NETWORK = topology.teredo_network(topology.SERVER_ADDRESS)
SECOND_NETWORK = topology.teredo_network(topology.SERVER2_ADDRESS)
FAILOVER_LIMIT = 30.0  # issue 6: qualified through the second server within 30 s
# With this refresh interval a dead server is noticed within 10 s (the next refresh) plus
# 12 s of unanswered RS (RFC 4380 §5.2.1: 3 x 4 s): failover takes at most ~23 s.
FAILOVER_REFRESH = 10.0


def wait_for(what: str, condition: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise unittest.FailTest(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


def with_logs(lab: Lab, message: str) -> str:
    logs = "\n".join(f"----- {name} -----\n{text[-6000:]}" for name, text in lab.logs().items())
    return f"{message}\n{logs}"


class OurClientWithMiredoInfrastructure(ScenarioChecks, unittest.TestCase):
    """`teredo-lab run --server miredo --relay miredo --client ours`."""

    scenario = Scenario(server=MIREDO, relay=MIREDO, client=OURS)


class AllOurs(ScenarioChecks, unittest.TestCase):
    """`teredo-lab run --server ours --relay ours --client ours`."""

    scenario = Scenario(server=OURS, relay=OURS, client=OURS)


class OurClientWithMiredoClient(ScenarioChecks, unittest.TestCase):
    """`teredo-lab run --client ours --client2 miredo`: checks 4 and 5 are Teredo to Teredo
    between the two implementations, each way."""

    scenario = Scenario(server=MIREDO, relay=MIREDO, client=OURS, client2=MIREDO)


class LabCase(unittest.TestCase):
    """A lab per test, for scenarios that need more than the six checks."""

    def lab(self, scenario: Scenario) -> Lab:
        skip_unless_lab(scenario_skip_reason(scenario))
        context = scenario_lab(scenario)
        lab = context.__enter__()
        self.addCleanup(context.__exit__, None, None, None)
        return lab


class SymmetricNat(LabCase):
    def test_client2_reports_symmetric_and_stays_offline(self) -> None:
        lab = self.lab(Scenario(server=MIREDO, relay=MIREDO, client=OURS, nat2="symmetric"))
        wait_for("client2 says NAT type: symmetric", lambda: "NAT type: symmetric" in lab.read_log("client2"), 10)
        self.assertIsNone(checks.wait_teredo_address(lab, "client2", FIRST_NETWORK, timeout=0),
                          with_logs(lab, "client2 must not pretend to work behind a symmetric NAT"))
        self.assertIsNotNone(checks.wait_teredo_address(lab, "client1", FIRST_NETWORK, timeout=5))
        self.assertIn("NAT type: restricted", lab.read_log("client1"))


class IncomingFirst(LabCase):
    def test_ipv6_host_reaches_a_client_that_never_sent_anything(self) -> None:
        """The relay's first packets arrive before we know it: held, confirmed by the echo test."""
        lab = self.lab(Scenario(server=MIREDO, relay=MIREDO, client=OURS))
        address = checks.wait_teredo_address(lab, "client1", FIRST_NETWORK)
        self.assertIsNotNone(address, with_logs(lab, "client1 did not qualify"))
        ok, detail = checks.ping(lab, "v6host", address)  # type: ignore[arg-type]
        self.assertTrue(ok, with_logs(lab, detail))


class NetworkChange(LabCase):
    def test_new_host_address_requalifies_at_once(self) -> None:
        lab = self.lab(Scenario(server=MIREDO, relay=MIREDO, client=OURS))
        self.assertIsNotNone(checks.wait_teredo_address(lab, "client1", FIRST_NETWORK))
        lab.run("client1", ["ip", "addr", "add", "198.19.0.3/24", "dev", f"{lab.prefix}-{topology.ETH}"])
        wait_for("client1 re-qualifies after an address change",
                 lambda: "re-qualifying" in lab.read_log("client1"), 5)
        ok, detail = checks.ping(lab, "client1", topology.IPV6_HOST)
        self.assertTrue(ok, with_logs(lab, detail))


class Failover(unittest.TestCase):
    def test_second_server_takes_over_and_the_first_is_taken_back(self) -> None:
        scenario = Scenario(server=MIREDO, relay=MIREDO, client=OURS, server2=MIREDO)
        skip_unless_lab(scenario_skip_reason(scenario))
        lab = Lab(scenario.options)
        lab.up()
        self.addCleanup(lab.down)
        for spec in scenario.infrastructure():
            lab.start_daemon(spec.name, spec.impl, spec.node, spec.roles)
            lab.wait_ready(spec.name)
        section = dict(client_section(fallback=True), refresh_interval=FAILOVER_REFRESH)
        lab.start_daemon("ours", OURS, "client1", {"client": section})
        before = checks.wait_teredo_address(lab, "client1", FIRST_NETWORK)
        self.assertIsNotNone(before, with_logs(lab, "no address from the first server"))

        lab.stop_daemon("server")
        stopped = time.monotonic()
        after = checks.wait_teredo_address(lab, "client1", SECOND_NETWORK, timeout=FAILOVER_LIMIT)
        took = time.monotonic() - stopped
        self.assertIsNotNone(after, with_logs(lab, f"no address from the second server {FAILOVER_LIMIT:.0f} s "
                                                   "after the first stopped"))
        ok, detail = checks.ping(lab, "client1", topology.IPV6_HOST)
        self.assertTrue(ok, with_logs(lab, f"after failover ({took:.1f} s): {detail}"))

        lab.start_daemon("server", MIREDO, "server", {"server": server_section()})
        back = checks.wait_teredo_address(lab, "client1", FIRST_NETWORK, timeout=FAILOVER_REFRESH + 10)
        self.assertIsNotNone(back, with_logs(lab, "did not return to the first server"))
        ok, detail = checks.ping(lab, "client1", topology.IPV6_HOST)
        self.assertTrue(ok, with_logs(lab, f"back on the first server: {detail}"))


class LiveReconfiguration(unittest.TestCase):
    def test_a_new_refresh_interval_keeps_the_address_the_tun_and_the_path(self) -> None:
        """Our client qualified through Miredo; refresh_interval edited, SIGHUP: reconfigured in
        place, with the same Teredo address on the same TUN device, still reaching the IPv6 host."""
        scenario = Scenario(server=MIREDO, relay=MIREDO, client=OURS)
        skip_unless_lab(scenario_skip_reason(scenario))
        lab = Lab(scenario.options)
        lab.up()
        self.addCleanup(lab.down)
        for spec in scenario.infrastructure():
            lab.start_daemon(spec.name, spec.impl, spec.node, spec.roles)
            lab.wait_ready(spec.name)
        lab.start_daemon("ours", OURS, "client1", {"client": dict(client_section(), refresh_interval=30)})
        before = checks.wait_teredo_address(lab, "client1", FIRST_NETWORK)
        self.assertIsNotNone(before, with_logs(lab, "client1 did not qualify"))
        ifindex = self.ifindex(lab)

        lab.write_config("ours", {"client": dict(client_section(), refresh_interval=10)})
        lab.signal_daemon("ours")
        wait_for("the reload is reported", lambda: "reload of " in lab.read_log("ours"), 10)
        log = lab.read_log("ours")
        self.assertIn("reconfigured ['client']", log, with_logs(lab, "not reconfigured in place"))
        self.assertIn("restarted []", log)
        self.assertEqual(checks.wait_teredo_address(lab, "client1", FIRST_NETWORK, timeout=0), before)
        self.assertEqual(self.ifindex(lab), ifindex, "the TUN device was recreated")
        ok, detail = checks.ping(lab, "client1", topology.IPV6_HOST)
        self.assertTrue(ok, with_logs(lab, detail))
        time.sleep(11)  # one new refresh interval: the binding is refreshed, the address kept
        self.assertEqual(checks.wait_teredo_address(lab, "client1", FIRST_NETWORK, timeout=0), before)
        self.assertEqual(self.ifindex(lab), ifindex)

    @staticmethod
    def ifindex(lab: Lab) -> int:
        path = f"/sys/class/net/{topology.CLIENT_INTERFACE}/ifindex"
        return int(lab.run("client1", ["cat", path]).stdout)

"""Two clients behind NAT 1 in the namespace lab: local discovery and hairpinning (needs
root, network namespaces and Miredo; skipped with the reason otherwise, failed in CI).

NAT 1's LAN is a bridge with client 1 and client 3 on it; NAT 1 either does not hairpin
(packets from the LAN to its own public address die in the NAT) or does (`hairpin`).
"""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from teredo_lab import checks, topology
from teredo_lab.lab import MIREDO, OURS, Lab
from teredo_lab.scenario import Scenario, scenario_lab
from tests.labsupport import daemon_status, scenario_skip_reason, skip_unless_lab

NETWORK = topology.teredo_network(topology.SERVER_ADDRESS)


class LocalLab(unittest.TestCase):
    scenario: Scenario

    def setUp(self) -> None:
        skip_unless_lab(scenario_skip_reason(self.scenario))
        context = scenario_lab(self.scenario)
        self.lab: Lab = context.__enter__()
        self.addCleanup(context.__exit__, None, None, None)

    def address(self, node: str) -> str:
        found = checks.wait_teredo_address(self.lab, node, NETWORK)
        self.assertWithLogs(found is not None, f"{node} did not qualify")
        return str(found)

    def ping(self, node: str, target: str) -> str:
        ok, detail = checks.ping(self.lab, node, target)
        self.assertWithLogs(ok, f"{node} -> {target}: {detail}")
        return detail

    def status(self, node: str) -> dict[str, Any]:
        return daemon_status(self.lab, node)["client"]

    def assertWithLogs(self, condition: bool, message: str) -> None:
        if not condition:
            logs = "\n".join(f"----- {name} -----\n{text[-5000:]}" for name, text in self.lab.logs().items())
            self.fail(f"{message}\n{logs}")


class TwoOfOursBehindNat1WithoutHairpinning(LocalLab):
    scenario = Scenario(server=OURS, relay=OURS, client=OURS, client3=OURS)

    def test_they_reach_each_other_over_the_lan_both_ways(self) -> None:
        one, three = self.address("client1"), self.address("client3")
        # Without the extensions this is impossible here: NAT 1 drops LAN -> its own address.
        self.ping("client1", three)
        self.ping("client3", one)
        for node, other in (("client1", topology.CLIENT3_ADDRESS), ("client3", topology.CLIENT1_ADDRESS)):
            status = self.status(node)
            self.assertTrue(status["local_discovery"], status)
            local = [peer for peer in status["local_peers"] if peer["trusted_at"]]
            self.assertWithLogs(bool(local) and local[0]["trusted_at"].startswith(other + ":"),
                                f"{node}: {status['local_peers']}")
        learned = {peer["learned_by"] for node in ("client1", "client3") for peer in self.status(node)["local_peers"]}
        self.assertIn("discovery", learned)  # a real multicast bubble crossed NAT 1's bridge
        # Both still reach the native IPv6 host and the client behind NAT 2.
        self.ping("client1", topology.IPV6_HOST)
        self.ping("client3", self.address("client2"))


class TwoOfOursBehindNat1WithHairpinning(LocalLab):
    scenario = Scenario(server=OURS, relay=OURS, client=OURS, client3=OURS, hairpin=True)

    def test_they_reach_each_other_both_ways(self) -> None:
        one, three = self.address("client1"), self.address("client3")
        self.ping("client1", three)
        self.ping("client3", one)


class MiredoBesideOursOnNat1WithHairpinning(LocalLab):
    """Miredo neither announces itself nor sends trailers, and ignores ours; through a NAT
    that hairpins, plain RFC 4380 between the two works."""

    scenario = Scenario(server=OURS, relay=OURS, client=OURS, client3=MIREDO, hairpin=True)

    def test_plain_teredo_between_them_and_the_internet_still_works(self) -> None:
        one, three = self.address("client1"), self.address("client3")
        self.ping("client1", three)
        self.ping("client3", one)
        self.ping("client3", topology.IPV6_HOST)
        self.ping("client1", topology.IPV6_HOST)
        self.assertEqual(self.status("client1")["local_peers"], [])  # Miredo never announced itself


class MiredoBesideOursOnNat1WithoutHairpinning(LocalLab):
    """Without hairpinning, Miredo and ours cannot reach each other (Miredo knows neither
    extension), but our announcements cost Miredo nothing: both reach everyone else."""

    scenario = Scenario(server=OURS, relay=OURS, client=OURS, client3=MIREDO)

    def test_both_still_reach_the_internet_and_nat2_but_not_each_other(self) -> None:
        one, three = self.address("client1"), self.address("client3")
        two = self.address("client2")
        self.ping("client3", topology.IPV6_HOST)
        self.ping("client3", two)
        self.ping("client1", topology.IPV6_HOST)
        # What the extensions cannot do with a peer that knows neither (and the proof that
        # this NAT 1 does not hairpin, which the scenarios of ours above rely on).
        self.assertFalse(checks.ping(self.lab, "client1", three, timeout=4)[0])
        self.assertFalse(checks.ping(self.lab, "client3", one, timeout=4)[0])

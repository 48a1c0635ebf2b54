"""RFC 6081 §5.7 Server Load Reduction in the namespace lab (needs root and network
namespaces; skipped with the reason otherwise, failed in CI).

Two clients of ours, behind NAT 1 and NAT 2 (both port-restricted, as Linux NATs are), our
server and relay. Each lab pings both ways for 3 s, stays idle past the peers' 30 s
entries, and pings both ways again. The NATs still hold the way in: conntrack keeps a UDP
flow answered for more than 2 s for 120 s (one that ends sooner only 30 s: then the direct
bubble goes unanswered and the fallback through the server takes over, 2 s later).

Our server counts the bubbles it relays (`forwarded.teredo`): with the extension the second
exchange needs none, without it the rediscovery goes through the server as RFC 4380 says.
Miredo's side (it never advertises, so it is bubbled as before) is the unchanged
tests/test_client_lab.py OurClientWithMiredoClient.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.trial import unittest

from teredo_appliance.peers import IDLE_TIMEOUT
from teredo_lab import checks, topology
from teredo_lab.lab import OURS, Lab
from teredo_lab.scenario import Scenario, client_section
from tests.labsupport import daemon_status, scenario_skip_reason, skip_unless_lab

NETWORK = topology.teredo_network(topology.SERVER_ADDRESS)
SCENARIO = Scenario(server=OURS, relay=OURS, client=OURS)
IDLE = IDLE_TIMEOUT + 5.0  # both clients' entries for each other have expired
PINGS = 3  # a second apart: a conversation conntrack keeps 120 s, not 30 s


class ServerLoadReduction(unittest.TestCase):
    def exchange(self, enabled: bool) -> dict[str, Any]:
        """One lab: ping both ways, idle, ping both ways; what the server relayed each time."""
        lab = Lab(SCENARIO.options)
        lab.up()
        try:
            for spec in SCENARIO.infrastructure():
                lab.start_daemon(spec.name, spec.impl, spec.node, spec.roles)
                lab.wait_ready(spec.name)
            section = {**client_section(), "extensions": {"server_load_reduction": enabled}}
            for node in ("client1", "client2"):
                lab.start_daemon(node, OURS, node, {"client": section})
            one = checks.wait_teredo_address(lab, "client1", NETWORK)
            two = checks.wait_teredo_address(lab, "client2", NETWORK)
            self.assertTrue(one and two, self.logs(lab, "a client did not qualify"))
            relayed = []
            for round_ in ("first", "after idling"):
                for node, target in (("client1", two), ("client2", one)):
                    done = lab.run(node, ["ping", "-6", "-n", "-c", str(PINGS), "-i", "1", "-w", "10", str(target)],
                                   timeout=20, check=False)
                    self.assertEqual(done.returncode, 0, self.logs(
                        lab, f"extension {enabled}, {round_}: {node} -> {target}: {done.stdout}{done.stderr}"))
                relayed.append(daemon_status(lab, "server")["server"]["counters"].get("forwarded.teredo", 0))
                if round_ == "first":
                    time.sleep(IDLE)
            client1 = daemon_status(lab, "client1")["client"]
            return {"first": relayed[0], "second": relayed[1] - relayed[0],
                    "saved": client1["nat_special"]["indirect_bubbles_saved"],
                    "line": client1["nat_special_behaviour"]}
        finally:
            lab.down()

    def logs(self, lab: Lab, message: str) -> str:
        return message + "\n" + "\n".join(f"----- {name} -----\n{text[-5000:]}" for name, text in lab.logs().items())

    def test_rediscovery_skips_the_server_with_the_extension_and_not_without(self) -> None:
        skip_unless_lab(scenario_skip_reason(SCENARIO))
        on, off = self.exchange(True), self.exchange(False)
        print(f"\nbubbles relayed by the server, first exchange / after {IDLE:.0f} s idle: "
              f"extension on {on['first']} / {on['second']}, off {off['first']} / {off['second']}; "
              f"client1 on: {on['line']}")
        self.assertGreater(on["first"], 0)  # the first contact still goes through the server
        self.assertEqual(on["second"], 0)
        self.assertGreater(off["second"], 0)
        self.assertLess(on["first"] + on["second"], off["first"] + off["second"])
        self.assertGreaterEqual(on["saved"], 1)
        self.assertIsNone(off["saved"])

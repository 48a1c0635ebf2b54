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
# With default timers and a fallback server, a dead server is checked within 8 s and left
# after one unanswered RS (4 s): the client is on the second server within 15 s.
FAILOVER_LIMIT = 15.0
# Measured in the lab (see README), in this order: the relay answers the mapping client2's
# packets came from, so the IPv6 host works both ways once client2 spoke first; client1
# behind the port-restricted NAT 1 only ever answers the mapping in client2's address,
# which NAT 2 keeps for the server alone, so client1 stays out of reach either way: with
# the nonces of RFC 6081 §5.2 too, as §3.1 says (a port-restricted peer never lets in the
# port NAT 2 chose for it; tests/test_client_symmetric.py shows the address-restricted case).
EXPECTED_SYMMETRIC = {"client2 -> IPv6 host": True, "IPv6 host -> client2": True,
                      "client2 -> client1": False, "client1 -> client2": False}
RETURN_LIMIT = 30.0 + 4.0 + 6.0  # the first server is probed every refresh interval (30 s)


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
    def test_client2_qualifies_behind_symmetric_nat_without_upnp_and_reaches_what_the_nat_allows(self) -> None:
        """RFC 6081 §5.2, no UPnP: an address all the same; what it reaches is measured and printed."""
        lab = self.lab(Scenario(server=MIREDO, relay=MIREDO, client=OURS, nat2="symmetric"))
        wait_for("client2 says NAT type: symmetric", lambda: "NAT type: symmetric" in lab.read_log("client2"), 10)
        address2 = checks.wait_teredo_address(lab, "client2", FIRST_NETWORK, timeout=10)
        self.assertIsNotNone(address2, with_logs(lab, "client2 configured no address behind the symmetric NAT"))
        address1 = checks.wait_teredo_address(lab, "client1", FIRST_NETWORK, timeout=5)
        self.assertIsNotNone(address1)
        self.assertIn("NAT type: restricted", lab.read_log("client1"))
        results = {
            "client2 -> IPv6 host": checks.ping(lab, "client2", topology.IPV6_HOST, timeout=8),
            "IPv6 host -> client2": checks.ping(lab, "v6host", address2, timeout=8),  # type: ignore[arg-type]
            "client2 -> client1": checks.ping(lab, "client2", address1, timeout=8),  # type: ignore[arg-type]
            "client1 -> client2": checks.ping(lab, "client1", address2, timeout=8),  # type: ignore[arg-type]
        }
        print("\nsymmetric NAT 2 without UPnP, Miredo server and relay, client1 behind restricted NAT 1:")
        for what, (ok, detail) in results.items():
            print(f"  {what}: {'pass' if ok else 'FAIL'} ({detail})")
        self.assertEqual({what: ok for what, (ok, _) in results.items()}, EXPECTED_SYMMETRIC,
                         with_logs(lab, "what the Symmetric NAT Support Extension reaches changed"))


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


def reply_times(output: str) -> list[float]:
    """The `ping -D` timestamps of the replies in `output`."""
    lines = output.splitlines()
    return [float(line[1:line.index("]")]) for line in lines if line.startswith("[") and "bytes from" in line]


class Failover(unittest.TestCase):
    def test_second_server_takes_over_within_15_s_with_default_timers_and_the_first_is_taken_back(self) -> None:
        scenario = Scenario(server=MIREDO, relay=MIREDO, client=OURS, server2=MIREDO)
        skip_unless_lab(scenario_skip_reason(scenario))
        lab = Lab(scenario.options)
        lab.up()
        self.addCleanup(lab.down)
        for spec in scenario.infrastructure():
            lab.start_daemon(spec.name, spec.impl, spec.node, spec.roles)
            lab.wait_ready(spec.name)
        lab.start_daemon("ours", OURS, "client1", {"client": client_section(fallback=True)})
        before = checks.wait_teredo_address(lab, "client1", FIRST_NETWORK)
        self.assertIsNotNone(before, with_logs(lab, "no address from the first server"))
        ok, detail = checks.ping(lab, "client1", topology.IPV6_HOST)
        self.assertTrue(ok, with_logs(lab, f"before the failover: {detail}"))

        pinging = ["ping", "-6", "-n", "-D", "-i", "0.2", "-W", "1", "-w", str(int(FAILOVER_LIMIT + 10)),
                   str(topology.IPV6_HOST)]
        with lab.background("client1", pinging) as pinger:
            time.sleep(1)
            lab.stop_daemon("server")
            stopped = time.time()
            after = checks.wait_teredo_address(lab, "client1", SECOND_NETWORK, timeout=FAILOVER_LIMIT + 5)
            took = time.time() - stopped
            output, _ = pinger.communicate(timeout=FAILOVER_LIMIT + 20)
        self.assertIsNotNone(after, with_logs(lab, "no address from the second server"))
        replies = [t for t in reply_times(output) if t > stopped]
        self.assertTrue(replies, with_logs(lab, f"no ping reply after the first server stopped:\n{output}"))
        outage = max(b - a for a, b in zip([stopped, *replies], replies, strict=False))
        print(f"\nfailover: on the second server {took:.1f} s after the first stopped; "
              f"longest ping gap {outage:.1f} s; {len(replies)} replies in {replies[-1] - stopped:.1f} s")
        self.assertLessEqual(took, FAILOVER_LIMIT, with_logs(lab, f"second server only after {took:.1f} s"))
        self.assertLessEqual(outage, FAILOVER_LIMIT, with_logs(lab, f"ping gap {outage:.1f} s:\n{output}"))
        ok, detail = checks.ping(lab, "client1", topology.IPV6_HOST)
        self.assertTrue(ok, with_logs(lab, f"after failover ({took:.1f} s): {detail}"))

        lab.start_daemon("server", MIREDO, "server", {"server": server_section()})
        restarted = time.monotonic()
        back = checks.wait_teredo_address(lab, "client1", FIRST_NETWORK, timeout=RETURN_LIMIT)
        self.assertIsNotNone(back, with_logs(lab, "did not return to the first server"))
        print(f"back on the first server {time.monotonic() - restarted:.1f} s after it restarted")
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

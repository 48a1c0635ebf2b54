"""Our UPnP client against a real miniupnpd on the lab's symmetric NAT 2 (root, namespaces).

From client 2's namespace: nothing from the Internet reaches the client's port through
the symmetric NAT; our client discovers the IGD, maps the port, and a datagram to the NAT's
external address and mapped port then arrives; the mapping is renewed before its lease
ends; stopping deletes it in miniupnpd. Nothing the lab started survives teardown.
"""

from __future__ import annotations

import json
import select
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from teredo_lab import igd, state, stun, topology
from teredo_lab.lab import MIREDO, OURS, Lab
from teredo_lab.scenario import Scenario
from tests.labsupport import Client2ReachesIPv6Host, lab_skip_reason, skip_unless_lab

DRIVER = str(Path(__file__).with_name("upnp_driver.py"))
INTERNAL_PORT, EXTERNAL_PORT = 40000, 40001
LEASE = 6  # seconds: a renewal after 3
SEND = (
    "import socket, sys; "
    "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(sys.argv[1].encode(), (sys.argv[2], int(sys.argv[3])))"
)


def read_line(proc: subprocess.Popen[str], timeout: float) -> str | None:
    """The driver's next line, or None if it printed nothing within `timeout`."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else None


def wait_for(proc: subprocess.Popen[str], prefix: str, timeout: float, want: Any = None) -> str:
    """The first driver line starting with `prefix` (and satisfying `want`), or a failure."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = read_line(proc, deadline - time.monotonic())
        if line is None:
            break
        seen.append(line)
        if line.startswith(prefix) and (want is None or want(line)):
            return line
    raise unittest.FailTest(f"no {prefix!r} line from the driver in {timeout} s; it said: {seen}")


def status(line: str) -> dict[str, Any]:
    return json.loads(line.split(" ", 1)[1])


class UPnPOnSymmetricNAT(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        skip_unless_lab(lab_skip_reason(need_miredo=False) or igd.missing_tools())
        self.lab = Lab(topology.Options(nat2="symmetric", upnp=True))
        self.addCleanup(self.assertNothingLeft)
        self.addCleanup(self.lab.down)
        self.lab.up()
        self.processes = dict(self.lab.record.processes)

    def assertNothingLeft(self) -> None:
        for name, process in self.processes.items():
            self.assertFalse(state.is_running(process), f"{name} (PID {process.pid}) survived teardown")

    def send_from_internet(self, text: str) -> None:
        self.lab.run("relay", [sys.executable, "-c", SEND, text, topology.NAT2_WAN, str(EXTERNAL_PORT)])

    def upnpc_list(self) -> str:
        return self.lab.run("client2", ["upnpc", "-i", "-l"]).stdout

    def test_mapping_opens_the_symmetric_nat_renews_and_is_deleted(self) -> None:
        self.assertIn(igd.DAEMON, self.processes)
        argv = [sys.executable, DRIVER, str(INTERNAL_PORT), str(EXTERNAL_PORT), str(LEASE)]
        with self.lab.background("client2", argv, stdin=True) as driver:
            assert driver.stdin is not None
            wait_for(driver, "bound", 10)
            self.send_from_internet("before-mapping")
            self.assertIsNone(read_line(driver, 1.5), "the symmetric NAT let an unmapped datagram in")
            self.assertEqual(igd.port_mappings(self.lab), [])

            driver.stdin.write("map\n")
            driver.stdin.flush()
            mapped = status(wait_for(driver, "status", 20, lambda line: status(line)["mapped"]))
            self.assertEqual(mapped["external_address"], topology.NAT2_WAN)
            self.assertEqual(mapped["external_port"], EXTERNAL_PORT)
            self.assertEqual(mapped["counters"].get("upnp.mapped"), 1, mapped)
            rules = igd.port_mappings(self.lab)
            self.assertTrue(any(f"--dport {EXTERNAL_PORT} " in rule and "DNAT" in rule for rule in rules), rules)
            self.assertIn(f"UDP {EXTERNAL_PORT}->{topology.CLIENT2_ADDRESS}:{INTERNAL_PORT}", self.upnpc_list())

            self.send_from_internet("through-the-mapping")
            self.assertEqual(wait_for(driver, "got", 5), "got through-the-mapping")

            renewed = status(
                wait_for(driver, "status", LEASE + 5, lambda line: status(line)["counters"].get("upnp.renewed"))
            )
            self.assertTrue(renewed["mapped"])
            self.assertGreater(renewed["lease_left"], LEASE / 2 - 1)
            self.assertIn(f"UDP {EXTERNAL_PORT}->", self.upnpc_list())

            driver.stdin.write("stop\n")
            driver.stdin.flush()
            stopped = json.loads(wait_for(driver, "stopped", 10).split(" ", 1)[1])
            self.assertEqual(stopped.get("upnp.deleted"), 1, stopped)
        self.assertEqual(igd.port_mappings(self.lab), [])
        self.assertNotIn(f"UDP {EXTERNAL_PORT}->", self.upnpc_list())
        log = (self.lab.rundir / "miniupnpd.log").read_text()
        self.assertGreaterEqual(log.count("#AddPortMapping"), 2, log[-3000:])
        self.assertIn("#DeletePortMapping", log)


class UPnPScenario(Client2ReachesIPv6Host):
    """The six checks and client 2 <-> the native IPv6 host, with client 2 (ours) behind the
    symmetric NAT 2 and its IGD; then what client 2 logged and miniupnpd did."""

    scenario: Scenario
    timeout = 240

    def setUp(self) -> None:
        skip_unless_lab(igd.missing_tools())

    def rundir(self) -> Path:
        self.outcome()
        return Path(f"lab-{self.scenario.describe().replace(' ', '_').replace('=', '-')}").absolute()

    def test_client2_qualified_through_its_mapping_and_deleted_it_on_stop(self) -> None:
        rundir = self.rundir()
        client2 = (rundir / "client2.log").read_text()
        self.assertIn(f"mapping {topology.NAT2_WAN}:", client2)
        self.assertNotIn("NAT type: symmetric", client2)
        self.assertNotIn("UPnP", client2)  # no failure was logged, not even the delete at stop
        actions = (rundir / "miniupnpd.log").read_text()
        self.assertIn("#AddPortMapping", actions)
        self.assertIn("#DeletePortMapping", actions)


class OursBehindSymmetricNATWithUPnP(UPnPScenario, unittest.TestCase):
    """Every role ours, client 2 behind the symmetric NAT 2 with extensions.upnp.

    Without the IGD, client 2 reports a symmetric NAT and reaches only what that NAT lets
    in (tests.test_client_lab); with it, it qualifies through its mapping and reaches
    client 1 (checks 4, 5) and the native IPv6 host (checks 7, 8), both ways.
    """

    scenario = Scenario(server=OURS, relay=OURS, client=OURS, nat2="symmetric", upnp=True)

    def test_client1_without_an_igd_qualified_promptly_and_said_so_once(self) -> None:
        """Client 1 runs the defaults (extensions.upnp on) behind NAT 1, which has no IGD:
        its search finds nothing, and qualification waits the search window, not the 5 s
        an HTTP exchange may take."""
        results, _ = self.outcome()
        self.assertLess(results[1].seconds, 5.0, results[1].line())
        client1 = (self.rundir() / "client1.log").read_text()
        self.assertEqual(client1.count("no UPnP IGD answered"), 1, client1[-3000:])
        self.assertNotIn("UPnP map failed", client1)


class MiredoClientWithOursBehindSymmetricNATWithUPnP(UPnPScenario, unittest.TestCase):
    """Backward compatibility: client 1 is Miredo behind NAT 1, which knows none of the
    RFC 6081 extensions; client 2 is ours behind the symmetric NAT 2 with its IGD. Checks 4
    and 5 are Miredo -> ours and ours -> Miredo."""

    scenario = Scenario(server=OURS, relay=OURS, client=MIREDO, client2=OURS, nat2="symmetric", upnp=True)


class IGDPlanTests(unittest.SynchronousTestCase):
    """What `--upnp` builds, checked without root."""

    def test_upnp_needs_a_symmetric_nat2(self) -> None:
        self.assertRaises(ValueError, topology.Options, upnp=True)

    def test_nat2_rules_go_to_the_legacy_tables_with_the_igd_chains_first(self) -> None:
        plan = topology.build_plan("tl1234", topology.Options(nat2="symmetric", upnp=True))
        self.assertNotIn("tl1234-nat2", plan.iptables)
        self.assertIn("tl1234-nat1", plan.iptables)
        rules = plan.iptables_legacy["tl1234-nat2"].splitlines()
        self.assertIn(":MINIUPNPD - [0:0]", rules)
        self.assertIn(":MINIUPNPD-POSTROUTING - [0:0]", rules)
        self.assertIn("-A PREROUTING -i tl1234-wan -j MINIUPNPD", rules)
        self.assertIn("-A FORWARD -i tl1234-wan ! -o tl1234-wan -j MINIUPNPD", rules)
        self.assertLess(
            rules.index("-A POSTROUTING -o tl1234-wan -j MINIUPNPD-POSTROUTING"),
            rules.index("-A POSTROUTING -o tl1234-wan -j MASQUERADE --random-fully"),
        )

    def test_miniupnpd_conf(self) -> None:
        text = igd.miniupnpd_conf("tl1234", Path("/run/x/leases"), "uuid-1").splitlines()
        for line in (
            "ext_ifname=tl1234-wan",
            "listening_ip=tl1234-lan",
            "secure_mode=yes",
            "ext_perform_stun=yes",
            f"ext_stun_host={topology.NAT2_WAN}",
            "lease_file=/run/x/leases",
            f"allow 1024-65535 {topology.NAT2_LAN} 1024-65535",
        ):
            self.assertIn(line, text)
        self.assertEqual(text[-1], "deny 0-65535 0.0.0.0/0 0-65535")

    def test_stun_answers_a_binding_request_with_the_source(self) -> None:
        request = struct.pack("!HHI12s", 0x0001, 0, stun.MAGIC_COOKIE, b"transaction!")
        answer = stun.binding_response(request, "198.18.0.200", 40000)
        kind, length, cookie, transaction = struct.unpack_from("!HHI12s", answer)
        self.assertEqual((kind, length, cookie, transaction), (0x0101, 24, stun.MAGIC_COOKIE, b"transaction!"))
        xor_type, _, _, family, port, address = struct.unpack_from("!HHBBHI", answer, 20 + 12)
        self.assertEqual((xor_type, family), (stun.XOR_MAPPED_ADDRESS, 1))
        self.assertEqual(port ^ 0x2112, 40000)
        self.assertEqual(address ^ stun.MAGIC_COOKIE, 0xC61200C8)
        self.assertIsNone(stun.binding_response(b"\x01\x01" + request[2:], "198.18.0.200", 1))
        self.assertIsNone(stun.binding_response(request[:10], "198.18.0.200", 1))

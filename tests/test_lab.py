"""The network-namespace lab: its plan and configs (no root), and the lab itself (root)."""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from twisted.trial import unittest

import teredo_appliance
from teredo_appliance.plugin import role_plugins
from teredo_lab import cli, configs, preflight, scenario, state, tcpxfer, topology
from teredo_lab.lab import MIREDO, OURS, Lab, LabError
from teredo_lab.scenario import Scenario, client_section, relay_section, server_section
from tests.labsupport import ScenarioChecks, lab_skip_reason, skip_unless_lab

ROOT = Path(teredo_appliance.__file__).resolve().parent.parent


class PlanTests(unittest.SynchronousTestCase):
    """What `up` will do, checked as data."""

    def lines(self, plan: topology.Plan) -> list[str]:
        return [line for lines in plan.links.values() for line in lines]

    def test_every_name_is_prefixed_and_fits(self) -> None:
        for options in (topology.Options(), topology.Options(second_server=True, box=True, nat2="symmetric")):
            plan = topology.build_plan("tl1234", options)
            self.assertTrue(all(ns.startswith("tl1234-") for ns in plan.namespaces))
            for line in self.lines(plan):
                words = line.split()
                for keyword in ("add", "name", "dev"):
                    if keyword in words[:-1] and words[0] in ("link", "addr"):
                        name = words[words.index(keyword) + 1]
                        if not name[0].isdigit():
                            self.assertTrue(name.startswith("tl1234-"), line)
                            self.assertLess(len(name), topology.IFNAMSIZ, line)

    def test_too_long_prefix_is_refused(self) -> None:
        self.assertRaises(ValueError, topology.build_plan, "tl123456789", topology.Options())

    def test_internet_bridge_is_inside_its_own_namespace(self) -> None:
        plan = topology.build_plan("tl1234", topology.Options())
        self.assertEqual(plan.namespaces[0], "tl1234-inet")
        self.assertIn("link add tl1234-br type bridge mcast_snooping 0", plan.links["tl1234-inet"])
        veths = [line for line in self.lines(plan) if "type veth" in line]
        self.assertTrue(veths)
        self.assertTrue(all(" netns tl1234-" in line for line in veths))

    def test_addresses(self) -> None:
        plan = topology.build_plan("tl1234", topology.Options(second_server=True))
        self.assertIn("addr add 198.18.0.2/24 dev tl1234-eth", plan.links["tl1234-server"])
        self.assertIn("addr add 2001:db8:1::3/64 dev tl1234-eth nodad", plan.links["tl1234-server"])
        self.assertIn("addr add 198.18.0.6/24 dev tl1234-eth", plan.links["tl1234-server2"])
        self.assertIn("route add 2001::/32 via 2001:db8:1::1", plan.links["tl1234-v6host"])
        self.assertIn("route add 2001::/32 via 2001:db8:1::1", plan.links["tl1234-server"])
        self.assertIn("net.ipv6.conf.all.forwarding=1", plan.sysctls["tl1234-relay"])
        self.assertIn("route add default via 198.19.1.1", plan.links["tl1234-client2"])

    def test_nat1_lan_is_a_bridge_shared_by_client1_and_client3(self) -> None:
        plan = topology.build_plan("tl1234", topology.Options(client3=True))
        nat1 = plan.links["tl1234-nat1"]
        self.assertIn("link add tl1234-lan type bridge mcast_snooping 0", nat1)
        for tag, client in (("h1", "client1"), ("h3", "client3")):
            self.assertIn(f"link add tl1234-{tag} type veth peer name tl1234-eth netns tl1234-{client}", nat1)
            self.assertIn(f"link set tl1234-{tag} master tl1234-lan up", nat1)
        self.assertIn("addr add 198.19.0.3/24 dev tl1234-eth", plan.links["tl1234-client3"])
        self.assertNotIn("hpo", " ".join(nat1))  # no hairpinning unless asked
        self.assertNotIn("tl1234-client3", topology.build_plan("tl1234", topology.Options()).namespaces)

    def test_hairpinning_nat1_loops_lan_traffic_to_its_public_address(self) -> None:
        plan = topology.build_plan("tl1234", topology.Options(hairpin=True))
        nat1 = plan.links["tl1234-nat1"]
        self.assertIn("rule add pref 100 iif tl1234-lan to 198.18.0.100/32 lookup 100", nat1)
        self.assertIn("route add 198.18.0.100/32 dev tl1234-hpo table 100", nat1)
        self.assertLess(nat1.index("rule add pref 1000 lookup local"), nat1.index("rule del pref 0 lookup local"))
        self.assertIn("net.ipv4.conf.tl1234-hpi.accept_local=1", plan.sysctls["tl1234-nat1"])
        rules = plan.iptables["tl1234-nat1"]
        self.assertIn("-A POSTROUTING -o tl1234-hpo -j SNAT --to-source 198.18.0.100", rules)
        self.assertIn("-A INPUT -i tl1234-hpi -m conntrack --ctstate NEW -j DROP", rules)

    def test_box_puts_server_and_relay_in_one_namespace(self) -> None:
        options = topology.Options(box=True)
        plan = topology.build_plan("tl1234", options)
        self.assertNotIn("tl1234-server", plan.namespaces)
        box = plan.links["tl1234-box"]
        for address in ("198.18.0.1/24", "198.18.0.2/24", "198.18.0.10/24", "2001:db8:1::1/64", "2001:db8:1::3/64"):
            self.assertTrue(any(f"addr add {address} " in line for line in box), address)
        self.assertEqual(topology.namespace_of("tl1234", "relay", options), "tl1234-box")
        self.assertEqual(topology.namespace_of("tl1234", "server", options), "tl1234-box")

    def test_nat_rules(self) -> None:
        plan = topology.build_plan("tl1234", topology.Options(nat2="symmetric"))
        nat1, nat2 = plan.iptables["tl1234-nat1"], plan.iptables["tl1234-nat2"]
        for rules in (nat1, nat2):
            self.assertIn("-A INPUT -i tl1234-wan -m conntrack --ctstate NEW -j DROP", rules)
        self.assertIn("-A POSTROUTING -o tl1234-wan -j MASQUERADE\n", nat1)
        self.assertIn("-j MASQUERADE --random-fully", nat2)
        self.assertRaises(ValueError, topology.Options, nat2="full-cone")

    def test_teredo_network(self) -> None:
        self.assertEqual(topology.teredo_network("198.18.0.1"), ipaddress.IPv6Network("2001:0:c612:1::/64"))


class ConfigTests(unittest.SynchronousTestCase):
    def test_miredo_server(self) -> None:
        text = configs.miredo_conf("server", server_section())
        self.assertIn("ServerBindAddress 198.18.0.1\nServerBindAddress2 198.18.0.2\n", text)

    def test_miredo_relay(self) -> None:
        text = configs.miredo_conf("relay", relay_section())
        for line in (
            "RelayType cone",
            "InterfaceName teredo-relay",
            "BindAddress 198.18.0.10",
            "BindPort 3544",
            "Prefix 2001::",
        ):
            self.assertIn(line + "\n", text)

    def test_miredo_client(self) -> None:
        text = configs.miredo_conf("client", client_section(fallback=True))
        for line in (
            "RelayType client",
            "ServerAddress 198.18.0.1",
            "ServerAddress2 198.18.0.2",
            "InterfaceName teredo",
        ):
            self.assertIn(line + "\n", text)
        self.assertIn("# fallback_servers", text)

    def test_teredo_yaml_follows_the_contract(self) -> None:
        roles = {"server": server_section(), "relay": relay_section()}
        parsed = yaml.safe_load(configs.teredo_yaml(roles))
        self.assertEqual(parsed["roles"], roles)
        self.assertEqual(parsed["roles"]["server"]["bind_address"], "198.18.0.1")
        self.assertRaises(ValueError, configs.teredo_yaml, {})
        self.assertRaises(ValueError, configs.teredo_yaml, {"gateway": {}})

    def test_box_of_ours_is_one_daemon(self) -> None:
        specs = Scenario(server=OURS, relay=OURS, client=OURS, box=True).infrastructure()
        self.assertEqual([(s.name, sorted(s.roles)) for s in specs], [("box", ["relay", "server"])])
        mixed = Scenario(server=OURS, relay=MIREDO, box=True).infrastructure()
        self.assertEqual([(s.name, s.node) for s in mixed], [("server", "server"), ("relay", "relay")])

    def test_second_server_is_the_clients_fallback(self) -> None:
        scenario = Scenario(server2=MIREDO)
        self.assertEqual(scenario.infrastructure()[-1].roles["server"]["bind_address"], "198.18.0.5")
        self.assertEqual(scenario.clients()[0].roles["client"]["fallback_servers"], ["198.18.0.5"])
        self.assertEqual(Scenario(client=OURS, client2=MIREDO).ours_roles(), {"client"})
        self.assertRaises(ValueError, Scenario, relay="windows")


class RootOnlyTests(unittest.SynchronousTestCase):
    def test_not_root_is_a_clear_reason_and_exit_status(self) -> None:
        self.patch(preflight.os, "geteuid", lambda: 1000)
        self.assertIn("needs root", preflight.unavailable_reason())
        self.patch(cli.os, "geteuid", lambda: 1000)
        errors = io.StringIO()
        self.patch(cli.sys, "stderr", errors)
        self.assertEqual(cli.main(["run"]), 2)
        self.assertIn("teredo-lab: must be run as root (needs root:", errors.getvalue())


class OursMissingTests(unittest.SynchronousTestCase):
    def test_a_role_without_its_service_class_is_named(self) -> None:
        broken = dataclasses.replace(role_plugins()["server"], service="teredo_appliance.roles.server.NoSuchService")
        self.patch(scenario, "role_plugins", lambda: {"server": broken})
        self.assertIn("the server role's service cannot be loaded", scenario.ours_missing({"server"}))
        self.assertEqual(scenario.ours_missing({"relay"}), "no role plugin provides 'relay'")
        self.assertIsNone(scenario.ours_missing(set()))


class ProcessRecordTests(unittest.SynchronousTestCase):
    def test_a_reused_pid_is_never_signalled(self) -> None:
        child = subprocess.Popen(["sleep", "30"], start_new_session=True)
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        start, _state = state.process_start(child.pid)
        stranger = state.ProcessRecord(child.pid, start + 1, "x", ["sleep"])
        self.assertFalse(state.is_running(stranger))
        self.assertFalse(state.terminate(stranger))
        self.assertIsNone(child.poll())
        recorded = state.ProcessRecord(child.pid, start, "x", ["sleep"])
        self.assertTrue(state.is_running(recorded))
        self.assertTrue(state.terminate(recorded))
        self.assertEqual(child.wait(timeout=5), -signal.SIGTERM)


class TcpTransferTests(unittest.SynchronousTestCase):
    """The transfer helper over loopback (the lab runs it inside namespaces)."""

    def test_bytes_arrive_with_the_same_hash(self) -> None:
        results: dict[str, dict] = {}
        listening = threading.Event()
        port = _free_port()
        listener = threading.Thread(
            target=lambda: results.update(sink=tcpxfer.sink("127.0.0.1", port, 5, ready=listening.set))
        )
        listener.start()
        self.assertTrue(listening.wait(5))
        results["source"] = tcpxfer.source("127.0.0.1", port, 300000, None, 5)
        listener.join(5)
        self.assertEqual(results["sink"]["bytes"], 300000)
        self.assertEqual(results["sink"]["sha256"], results["source"]["sha256"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AllMiredo(ScenarioChecks, unittest.TestCase):
    """Acceptance of the lab: Miredo in every role passes all six checks."""

    scenario = Scenario(server=MIREDO, relay=MIREDO, client=MIREDO)


class AllMiredoInABox(ScenarioChecks, unittest.TestCase):
    """The multi-role box topology (server and relay in one namespace) works with Miredo."""

    scenario = Scenario(server=MIREDO, relay=MIREDO, client=MIREDO, box=True)


# Receives one datagram on each server address and prints the source port it came from.
UDP_LISTEN = """
import socket, sys
socks = []
for address in sys.argv[1:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, 4000))
    s.settimeout(5)
    socks.append(s)
print("ready", flush=True)
print(" ".join(str(s.recvfrom(100)[1][1]) for s in socks), flush=True)
"""
UDP_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40000))
for address in sys.argv[1:]:
    s.sendto(b"x", (address, 4000))
"""


class LabFixtureTests(unittest.TestCase):
    """The hooks later tests use: one daemon at a time, its config, its log, commands."""

    def setUp(self) -> None:
        skip_unless_lab(lab_skip_reason(need_miredo=True))

    def test_hooks_and_clean_removal(self) -> None:
        lab = Lab(rundir=self.mktemp())
        self.addCleanup(lab.down)
        lab.up()
        prefix = lab.prefix
        server = lab.start_daemon("server", MIREDO, "server", {"server": server_section()})
        lab.wait_ready("server")
        self.assertIn("ServerBindAddress 198.18.0.1", lab.config_path("server").read_text())
        self.assertTrue(lab.is_running("server"))
        seen = lab.run("client1", ["ping", "-c", "1", "-W", "2", topology.SERVER_ADDRESS]).stdout
        self.assertIn("1 received", seen)
        unreachable = lab.run("client1", ["ping", "-c", "1", "-W", "1", topology.RELAY_V6], check=False)
        self.assertNotEqual(unreachable.returncode, 0)  # clients have no native IPv6
        self.assertRaises(LabError, lab.run, "client1", ["false"])
        lab.stop_daemon("server")
        self.assertFalse(lab.is_running("server"))
        self.assertIsNotNone(server.process.poll())
        self.assertIn("starting server (miredo)", lab.read_log("server"))
        self.assertEqual(lab.down(), [])
        self.assertEqual(lab.down(), [])  # idempotent
        self.assertEqual([ns for ns in state.netns_list() if ns.startswith(f"{prefix}-")], [])
        self.assertFalse((state.STATE_ROOT / prefix).exists())

    def test_nat_hides_clients_and_drops_unsolicited_inbound(self) -> None:
        lab = Lab()
        self.addCleanup(lab.down)
        lab.up()
        outbound = lab.run("client1", ["ping", "-c", "1", "-W", "2", topology.SERVER_ADDRESS]).stdout
        self.assertIn("1 received", outbound)
        inbound = lab.run("server", ["ping", "-c", "1", "-W", "1", topology.NAT1_WAN], check=False)
        self.assertNotEqual(inbound.returncode, 0)
        self.assertNotEqual(lab.run("server", ["ping", "-c", "1", "-W", "1", "198.19.0.2"], check=False).returncode, 0)

    def mapped_ports(self, nat2: str) -> list[int]:
        """The public source ports NAT 2 gives one client socket toward two destinations."""
        lab = Lab(topology.Options(nat2=nat2))
        self.addCleanup(lab.down)
        lab.up()
        targets = [topology.SERVER_ADDRESS, topology.SERVER_ADDRESS2]
        with lab.background("server", [sys.executable, "-c", UDP_LISTEN, *targets]) as listener:
            self.assertEqual(listener.stdout.readline().strip(), "ready")
            lab.run("client2", [sys.executable, "-c", UDP_SEND, *targets])
            out, err = listener.communicate(timeout=10)
        self.assertEqual(listener.returncode, 0, err)
        return [int(port) for port in out.split()]

    def test_nat2_cone_keeps_one_mapping(self) -> None:
        first, second = self.mapped_ports("cone")
        self.assertEqual(first, second)

    def test_nat2_symmetric_maps_each_destination_apart(self) -> None:
        first, second = self.mapped_ports("symmetric")
        self.assertNotEqual(first, second)


class CrashTeardownTests(unittest.TestCase):
    """A run killed in the middle leaves nothing once `teredo-lab down` has run."""

    def setUp(self) -> None:
        skip_unless_lab(lab_skip_reason(need_miredo=True))

    def cli(self, *args: str, **popen) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        return subprocess.Popen([sys.executable, "-m", "teredo_lab.cli", *args], env=env, **popen)

    def test_down_after_sigkill(self) -> None:
        prefix = f"{state.PREFIX_TAG}{secrets.token_hex(2)}"
        self.addCleanup(state.teardown, prefix)
        with open(self.mktemp(), "wb") as out:
            run = self.cli("run", "--prefix", prefix, stdout=out, stderr=subprocess.STDOUT)
        self.addCleanup(run.wait)
        record = self.wait_for_clients(prefix, run)
        self.assertIsNone(run.poll(), "the run ended before it could be killed")
        run.send_signal(signal.SIGKILL)
        run.wait()

        record = state.LabRecord.load(prefix)
        alive = [p for p in record.processes.values() if state.is_running(p)]
        self.assertGreaterEqual(len(alive), 4, "the daemons should outlive their killed owner")
        left = [ns for ns in state.netns_list() if ns.startswith(f"{prefix}-")]
        self.assertEqual(sorted(left), sorted(record.namespaces))

        self.assertEqual(self.cli("down", prefix, stdout=subprocess.DEVNULL).wait(timeout=60), 0)
        self.assertEqual([ns for ns in state.netns_list() if ns.startswith(f"{prefix}-")], [])
        self.assertEqual([p.pid for p in record.processes.values() if state.is_running(p)], [])
        self.assertNotIn(prefix, state.recorded_prefixes())
        self.assertEqual(self.cli("down", prefix, stdout=subprocess.DEVNULL).wait(timeout=60), 0)  # idempotent

    def wait_for_clients(self, prefix: str, run: subprocess.Popen) -> state.LabRecord:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and run.poll() is None:
            try:
                record = state.LabRecord.load(prefix)
            except (FileNotFoundError, ValueError):
                record = None
            if record and all(c in record.processes for c in ("client1", "client2")):
                return record
            time.sleep(0.01)
        self.fail(f"the run did not start its clients (exit status {run.poll()})")

"""Operating a box in the lab as an operator would: Prometheus scrapes and teredoctl.

A server + relay box of ours with metrics and a control socket serves two Miredo clients
behind their NATs. The scrape is fetched over HTTP inside the box's namespace and read
with prometheus_client's parser; teredoctl asks for status and peers and reloads a broken
file (refused, exit 1, FILE:LINE) and a good one (exit 0) while the box keeps serving.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

import teredo_appliance
from teredo_lab import checks, topology
from teredo_lab.lab import MIREDO, OURS, Lab
from teredo_lab.scenario import client_section, ours_missing, relay_section, server_section
from tests.labsupport import lab_skip_reason, skip_unless_lab

ROOT = Path(teredo_appliance.__file__).resolve().parent.parent
METRICS = "tcp:9100:interface=127.0.0.1"
FETCH = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
JUNK = ("import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for n in range(int(sys.argv[3])):\n"
        "    s.sendto(bytes([n % 256]) * (n % 7), (sys.argv[1], int(sys.argv[2])))\n")
JUNK_COUNT = 50
LOG_TAIL = 6000

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def by_role(samples: Samples, name: str, role: str) -> dict[str, float]:
    """The samples of one family for one role, keyed by their other label (event, reason, ...)."""
    found = {}
    for (sample, labels), value in samples.items():
        labels_ = dict(labels)
        if sample == name and labels_.pop("role", None) == role:
            found[next(iter(labels_.values()), "")] = value
    return found


class OperationsInLab(unittest.TestCase):
    timeout = 240

    def setUp(self) -> None:
        skip_unless_lab(lab_skip_reason(need_miredo=True) or ours_missing({"server", "relay"}))
        self.lab = Lab(topology.Options(box=True), rundir=os.path.abspath(self.mktemp()))
        self.addCleanup(self.lab.down)
        self.lab.up()

    def logs(self) -> str:
        return "\n".join(f"----- {name}\n{text[-LOG_TAIL:]}" for name, text in self.lab.logs().items())

    def assertWithLogs(self, condition: bool, message: str) -> None:
        if not condition:
            raise self.failureException(f"{message}\n\ndaemon logs (tails):\n{self.logs()}")

    def scrape(self) -> tuple[str, Samples]:
        text = self.lab.run("box", [sys.executable, "-c", FETCH, "http://127.0.0.1:9100/metrics"]).stdout
        return text, parse(text)

    def teredoctl(self, *argv: str) -> subprocess.CompletedProcess[str]:
        control = str(self.lab.daemons["box"].control)
        return self.lab.run("box", ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "teredo_appliance.teredoctl",
                                    "--socket", control, *argv], check=False)

    def send_junk(self, address: str) -> None:
        self.lab.run("client1", [sys.executable, "-c", JUNK, address, str(topology.TEREDO_PORT), str(JUNK_COUNT)])

    def pings(self, numbers: tuple[int, ...]) -> None:
        results = checks.Checks(self.lab).run(numbers)
        self.assertWithLogs(all(r.ok for r in results), "\n".join(r.line() for r in results))

    def test_metrics_and_teredoctl_on_a_serving_box(self) -> None:
        lab = self.lab
        roles = {"server": server_section(), "relay": relay_section()}
        lab.start_daemon("box", OURS, "box", roles, metrics=METRICS)
        lab.wait_ready("box")
        for client in ("client1", "client2"):
            lab.start_daemon(client, MIREDO, client, {"client": client_section()})
        self.pings((1, 2, 3, 4, 5))

        # The scrape: every family, and values that follow the traffic just seen.
        _, before = self.scrape()
        for address in (topology.SERVER_ADDRESS, topology.RELAY_ADDRESS):
            self.send_junk(address)
        text, after = self.scrape()
        (Path(self.lab.rundir) / "scrape.txt").write_text(text)
        for role in ("server", "relay"):
            self.assertEqual(after[("teredo_up", (("role", role),))], 1.0, role)
            dropped = sum(by_role(after, "teredo_drops_total", role).values())
            dropped_before = sum(by_role(before, "teredo_drops_total", role).values())
            self.assertWithLogs(dropped - dropped_before >= JUNK_COUNT,  # 0 to 6 bytes: each one a counted drop
                                f"{role}: {dropped_before} -> {dropped} drops after {JUNK_COUNT} junk datagrams")
        self.assertGreaterEqual(after[("teredo_peers", (("role", "relay"),))], 1.0)
        relay_bytes = by_role(after, "teredo_bytes_total", "relay")
        self.assertEqual(set(relay_bytes), {"udp_in", "udp_out", "tun_in", "tun_out"}, relay_bytes)
        self.assertTrue(all(value > 0 for value in relay_bytes.values()), relay_bytes)
        self.assertGreater(by_role(after, "teredo_bytes_total", "server")["udp_in"], 0)
        relay_events = by_role(after, "teredo_events_total", "relay")
        self.assertGreater(relay_events.get("to_ipv6", 0), 0, relay_events)
        self.assertGreater(relay_events.get("to_teredo", 0), 0, relay_events)
        self.assertGreater(sum(by_role(after, "teredo_events_total", "server").values()), 0)
        self.assertEqual(after[("teredo_build_info", (("version", teredo_appliance.__version__),))], 1.0)

        # teredoctl: machine-readable status and peers.
        status = self.teredoctl("status", "--json")
        self.assertEqual(status.returncode, 0, status.stderr)
        report = json.loads(status.stdout)
        self.assertTrue(report["server"]["running"] and report["relay"]["running"], report)
        self.assertEqual(report["control"]["socket"], str(lab.daemons["box"].control))
        peers = self.teredoctl("peers", "relay", "--json", "--limit", "0")
        self.assertEqual(peers.returncode, 0, peers.stderr)
        table = json.loads(peers.stdout)
        self.assertGreaterEqual(table["total"], 1)
        self.assertEqual(len(table["peers"]), table["total"])
        self.assertTrue(all(peer["address"].startswith("2001:0:") for peer in table["peers"]), table)
        human = self.teredoctl("status")
        self.assertIn("Role                     : relay", human.stdout)

        # A broken file is refused with FILE:LINE, exit 1; nothing changes.
        path = lab.write_config("box", {"server": server_section(),
                                        "relay": {**relay_section(), "bind_address": "198.18.0.300"}})
        line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "198.18.0.300" in text)
        refused = self.teredoctl("reload")
        self.assertEqual(refused.returncode, 1, refused.stdout + refused.stderr)
        self.assertIn(f"{path}:{line}: roles.relay.bind_address: '198.18.0.300' is not an IPv4 address\n",
                      refused.stderr)
        dry = self.teredoctl("reload", "--dry-run")
        self.assertEqual(dry.returncode, 1)
        self.assertIn(f"{path}:{line}: roles.relay.bind_address:", dry.stderr)

        # A good file: applied, exit 0.
        lab.write_config("box", roles)
        applied = self.teredoctl("reload")
        self.assertEqual(applied.returncode, 0, applied.stdout + applied.stderr)
        self.assertIn("unchanged : server, relay, control, metrics", applied.stdout)

        # The box served throughout: the clients still reach the IPv6 host and each other.
        self.pings((2, 3, 4))
        self.assertTrue(lab.is_running("box"))
        log = lab.read_log("box")
        self.assertNotIn("Traceback", log)

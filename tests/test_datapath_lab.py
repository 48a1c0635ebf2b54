"""The batched data path in the lab, for correctness (not speed): our relay and client with
recvmmsg reads and sendmmsg / UDP GSO sends, through real NATs in namespaces (needs root).

10 MB cross the tunnel each way byte for byte; the relay and the client report UDP read
batches and UDP GSO sends, and TUN super-packets read and merged writes, so the batched and
offloaded paths did the work; junk datagrams sent to the relay through its batched port are
counted drops, and it keeps forwarding.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from twisted.trial import unittest

import teredo_appliance
from teredo_appliance import offload
from teredo_lab import checks, topology
from teredo_lab.lab import OURS, Lab
from teredo_lab.scenario import Scenario, scenario_lab
from tests.labsupport import scenario_skip_reason, skip_unless_lab

ROOT = Path(teredo_appliance.__file__).resolve().parent.parent
SCENARIO = Scenario(OURS, OURS, OURS)
MEGABYTES = 10 * 1000 * 1000
JUNK = ("import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for n in range(200):\n"
        "    s.sendto(bytes([n % 256]) * (n % 90), (sys.argv[1], int(sys.argv[2])))\n")


class BatchedDataPathInLab(unittest.TestCase):
    timeout = 240

    def setUp(self) -> None:
        skip_unless_lab(scenario_skip_reason(SCENARIO))

    def status(self, lab: Lab, name: str) -> dict:
        control = str(lab.daemons[name].control)
        done = lab.run(lab.daemons[name].node, ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m",
                                                "teredo_appliance.teredoctl", "--socket", control, "status", "--json"])
        return json.loads(done.stdout)

    def test_bytes_cross_both_ways_through_batches(self) -> None:
        with scenario_lab(SCENARIO, rundir=os.path.abspath(self.mktemp())) as lab:
            steps = checks.Checks(lab)
            results = steps.run((1, 2, 3))
            self.assertTrue(all(r.ok for r in results), "\n".join(r.line() for r in results))
            client = str(steps.address("client1"))
            lab.run("client1", [sys.executable, "-c", JUNK, topology.RELAY_ADDRESS, str(topology.TEREDO_PORT)])
            up = checks.tcp_transfer(lab, "client1", "v6host", topology.IPV6_HOST, nbytes=MEGABYTES)
            down = checks.tcp_transfer(lab, "v6host", "client1", client, nbytes=MEGABYTES)
            for transfer in (up, down):
                self.assertEqual((transfer.sent, transfer.received), (MEGABYTES, MEGABYTES))
                self.assertEqual(transfer.sha_received, transfer.sha_sent)
            relay = self.status(lab, "relay")["relay"]
            client_status = self.status(lab, "client1")["client"]
            for report in (relay, client_status):
                counters = report["counters"]
                self.assertGreater(counters.get("udp.batches", 0), 0, counters)
                self.assertGreater(counters.get("udp.gso_sends", 0), 0, counters)
                self.assertNotIn("internal-error", report["drops"])
                # TUN offloads (the C extension is built wherever a compiler is, see
                # test_offload): TCP super-packets read whole and segments written merged.
                if offload.available():
                    self.assertGreater(counters.get("tun.gso_reads", 0), 0, counters)
                    self.assertGreater(counters.get("tun.gso_writes", 0), 0, counters)
            self.assertGreaterEqual(sum(relay["drops"].values()), 100, relay["drops"])  # the junk, counted
            # Still forwarding after the junk and the bursts.
            again = steps.run((2,))
            self.assertTrue(again[0].ok, again[0].line())

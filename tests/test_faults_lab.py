"""Faults injected into a running lab: a reload that cannot apply, a TUN removed from outside.

Each test builds its own namespaces (teredo_lab), starts our server, relay and
two clients, breaks something the way an operator or another program would, and checks
that traffic from the native IPv6 host to a Teredo client comes back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial import unittest

from teredo_lab import checks, topology
from teredo_lab.lab import OURS, Lab
from teredo_lab.scenario import Scenario, ours_missing, relay_section, start
from tests.labsupport import lab_skip_reason, skip_unless_lab
from tests.test_tap import TWISTD

ABSENT_ADDRESS = "198.18.0.99"  # in the lab's range, on no interface of the relay's namespace
RESTORE_TIMEOUT = 15.0  # seconds for a failed reload to put the old relay back


class FaultLab(unittest.TestCase):
    """Our server, relay and clients in separate namespaces, qualified and reachable."""

    timeout = 180

    def setUp(self) -> None:
        skip_unless_lab(lab_skip_reason(need_miredo=False) or ours_missing({"server", "relay", "client"}))
        scenario = Scenario(server=OURS, relay=OURS, client=OURS)
        self.lab = Lab(scenario.options, rundir=os.path.abspath(self.mktemp()))
        self.addCleanup(self.lab.down)
        self.lab.up()
        start(self.lab, scenario)
        self.checks = checks.Checks(self.lab)
        self.assertLab(self.checks.qualified(), "clients did not qualify")
        self.client = self.checks.address("client1")

    def assertLab(self, outcome: tuple[bool, str], message: str) -> None:
        ok, detail = outcome
        if not ok:
            logs = "\n".join(f"----- {name}\n{text[-4000:]}" for name, text in self.lab.logs().items())
            raise self.failureException(f"{message}: {detail}\n\ndaemon logs (tails):\n{logs}")

    def ping_client(self, timeout: int = checks.PING_TIMEOUT) -> tuple[bool, str]:
        return checks.ping(self.lab, "v6host", self.client, timeout=timeout)

    def wait_log(self, name: str, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while text not in self.lab.read_log(name):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


class ReloadOntoAbsentAddress(FaultLab):
    def test_relay_reloaded_onto_an_absent_address_keeps_serving(self) -> None:
        self.assertLab(self.ping_client(), "no ping through the relay before the reload")
        self.lab.write_config("relay", {"relay": {**relay_section(), "bind_address": ABSENT_ADDRESS, "mtu": 1400}})
        self.lab.signal_daemon("relay", signal.SIGHUP)
        restored = self.wait_log("relay", "the previous configuration was restored", RESTORE_TIMEOUT)
        self.assertLab((restored, "no 'restored' line in the relay's log"), "the old relay was not put back")
        self.assertTrue(self.lab.is_running("relay"))
        link = self.lab.run("relay", ["ip", "link", "show", topology.RELAY_INTERFACE], check=False)
        self.assertIn("mtu 1280", link.stdout)  # the old relay's TUN, not the new one's
        self.assertLab(self.ping_client(), "no ping through the restored relay")


class TunRemovedFromOutside(FaultLab):
    REPAIR_TIMEOUT = 20  # seconds for the relay to notice, rebuild its TUN and carry a ping again

    def wait_ping(self) -> tuple[bool, str]:
        """Ping from the native host until a reply or REPAIR_TIMEOUT: (replied, summary).

        One ping at a time: while the route is gone an ICMPv6 error ends each at once."""
        deadline = time.monotonic() + self.REPAIR_TIMEOUT
        while True:
            replied, summary = self.ping_client(timeout=2)
            if replied or time.monotonic() > deadline:
                return replied, summary
            time.sleep(0.05)

    def test_relay_tun_deleted_is_rebuilt_and_traffic_returns(self) -> None:
        self.assertLab(self.ping_client(), "no ping through the relay before the fault")
        deleted = time.monotonic()
        self.lab.run("relay", ["ip", "link", "del", topology.RELAY_INTERFACE])
        self.assertLab(self.wait_ping(), "no ping after the relay's TUN was deleted")
        took = time.monotonic() - deleted
        log = self.lab.read_log("relay")
        self.assertIn(f"TUN {topology.RELAY_INTERFACE} missing: repairing", log)
        self.assertIn(f"{topology.RELAY_INTERFACE} repaired", log)
        route = self.lab.run("relay", ["ip", "-6", "route", "show", "dev", topology.RELAY_INTERFACE]).stdout
        self.assertIn("2001::/32", route)
        sys.stderr.write(f"[TUN deleted -> ping through the relay again: {took:.2f} s] ")

    def test_relay_route_removed_and_link_bounced_are_restored(self) -> None:
        self.lab.run("relay", ["ip", "-6", "route", "del", "2001::/32", "dev", topology.RELAY_INTERFACE])
        self.assertLab(self.wait_ping(), "no ping after the Teredo route was removed")
        self.lab.run("relay", ["ip", "link", "set", topology.RELAY_INTERFACE, "down"])
        self.lab.run("relay", ["ip", "link", "set", topology.RELAY_INTERFACE, "up"])
        self.assertLab(self.wait_ping(), "no ping after the TUN was set down and up")
        self.assertEqual(self.lab.read_log("relay").count("repairing"), 2, self.lab.read_log("relay")[-3000:])


def sighup_caught(pid: int) -> bool:
    """Whether process `pid` has a handler for SIGHUP (bit 0 of SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & 1)
    return False


class EarlySighup(unittest.TestCase):
    """`twistd -n teredo` in a namespace of its own, sent SIGHUP as early as our code can catch it."""

    timeout = 60

    def test_sighup_while_starting_is_a_reload_not_death(self) -> None:
        skip_unless_lab("needs root: runs a relay in a network namespace" if os.geteuid() else None)
        namespace = f"tfhup-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", namespace], check=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "delete", namespace], check=False)
        config, log = Path(self.mktemp()), Path(self.mktemp())
        config.write_text("roles:\n  relay:\n    interface: tfhup0\n    bind_address: 127.0.0.1\n"
                          "control: false\n")  # never the host's /run/teredo
        argv = ["ip", "netns", "exec", namespace, TWISTD, "-n", "--pidfile=", f"--logfile={log}",
                "teredo", "-c", str(config)]
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: process.poll() is None and (process.kill(), process.wait()))
        started = time.monotonic()
        while not sighup_caught(process.pid):  # ip netns exec execs twistd: same pid
            self.assertIsNone(process.poll(), "twistd exited while starting")
            self.assertLess(time.monotonic() - started, 20, "no SIGHUP handler after 20 s")
            time.sleep(0.002)
        caught = time.monotonic() - started
        before_roles = "TUN device" not in (log.read_text() if log.exists() else "")
        process.send_signal(signal.SIGHUP)  # the earliest moment any handler of ours exists
        time.sleep(0.05)
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "reload of" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            self.assertIsNone(process.poll(), f"twistd died of an early SIGHUP (caught {caught:.2f} s after exec)")
            time.sleep(0.05)
        text = log.read_text()
        self.assertTrue(before_roles, f"SIGHUP handled only once the roles were starting ({caught:.2f} s):\n{text}")
        self.assertIn("Teredo relay on 127.0.0.1:3544", text)
        self.assertIn("unchanged ['relay'], errors []", text)
        self.assertIsNone(process.poll())
        process.send_signal(signal.SIGTERM)
        self.assertIn(process.wait(timeout=20), (0, -signal.SIGTERM), log.read_text())  # twistd re-raises it
        sys.stderr.write(f"[SIGHUP handler installed {caught:.2f} s after exec] ")


class SighupAtFixedTimes(unittest.TestCase):
    """`teredod` (twistd with our handler first) sent SIGHUP 0.2 s after exec survives it and
    reloads once the roles run; plain twistd reaches our code too late for that."""

    timeout = 60

    def start(self, program: str) -> tuple[subprocess.Popen[bytes], Path]:
        namespace = f"tfhup{os.getpid()}{program[:3]}"
        subprocess.run(["ip", "netns", "add", namespace], check=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "delete", namespace], check=False)
        config, log = Path(self.mktemp()), Path(self.mktemp())
        config.write_text("roles:\n  relay:\n    interface: tfhup1\n    bind_address: 127.0.0.1\n"
                          "control: false\n")  # never the host's /run/teredo
        argv = ["ip", "netns", "exec", namespace, str(Path(TWISTD).with_name(program)), "-n", "--pidfile=",
                f"--logfile={log}", "teredo", "-c", str(config)]
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: process.poll() is None and (process.kill(), process.wait()))
        return process, log

    def test_sighup_0_2_s_after_exec_is_a_reload(self) -> None:
        skip_unless_lab("needs root: runs a relay in a network namespace" if os.geteuid() else None)
        process, log = self.start("teredod")
        time.sleep(0.2)
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "reload of" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            self.assertIsNone(process.poll(), "teredod died of a SIGHUP sent 0.2 s after exec")
            time.sleep(0.05)
        text = log.read_text()
        self.assertIn("unchanged ['relay'], errors []", text)
        process.send_signal(signal.SIGTERM)
        self.assertIn(process.wait(timeout=20), (0, -signal.SIGTERM), log.read_text())

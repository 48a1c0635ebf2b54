"""A relay on a host that does not forward IPv6 is warned about: at start and by checkconf --host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from teredo_appliance.appliance import Appliance
from teredo_appliance.config import parse_config
from teredo_appliance.hostcheck import FORWARDING, host_warnings
from tests.labsupport import lab_skip_reason, skip_unless_lab
from tests.test_appliance import World

RELAY = "roles:\n  relay:\n    bind_address: 198.18.0.10\n"
CLIENT = "roles:\n  client:\n    server_address: 198.18.0.1\n"
CHECKCONF = os.path.join(os.path.dirname(sys.executable), "teredo-checkconf")


def fake_proc_sys(root: str, forwarding: str) -> str:
    path = Path(root, FORWARDING)
    path.parent.mkdir(parents=True)
    path.write_text(forwarding + "\n")
    return root


class HostWarningTests(SynchronousTestCase):
    def test_relay_without_forwarding_is_warned_about(self) -> None:
        [warning] = host_warnings(parse_config(RELAY, "t.yaml"), fake_proc_sys(self.mktemp(), "0"))
        self.assertIn("relay: net.ipv6.conf.all.forwarding=0: this host does not forward IPv6", warning)
        self.assertIn("TROUBLESHOOTING in twistd-teredo(8)", warning)

    def test_relay_with_forwarding_is_fine(self) -> None:
        self.assertEqual(host_warnings(parse_config(RELAY, "t.yaml"), fake_proc_sys(self.mktemp(), "1")), [])

    def test_a_client_does_not_need_forwarding(self) -> None:
        self.assertEqual(host_warnings(parse_config(CLIENT, "t.yaml"), fake_proc_sys(self.mktemp(), "0")), [])

    def test_no_ipv6_at_all_is_said(self) -> None:
        [warning] = host_warnings(parse_config(RELAY, "t.yaml"), self.mktemp())
        self.assertIn("is IPv6 disabled on this host?", warning)

    def test_the_appliance_logs_its_version_config_and_roles_and_the_warnings_at_start(self) -> None:
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        from teredo_appliance import appliance as module
        proc_sys = fake_proc_sys(self.mktemp(), "0")
        self.patch(module, "host_warnings", lambda config: host_warnings(config, proc_sys))
        box = Appliance("/etc/teredo/teredo.yaml", parse_config(RELAY + "control: false\n", "t.yaml"), reactor=object(),
                        role_factories=World().factories())
        box.privilegedStartService()
        starts = [e for e in events if e.get("log_format", "").startswith("teredo-appliance {version} starting")]
        self.assertEqual([(e["path"], e["roles"]) for e in starts], [("/etc/teredo/teredo.yaml", ["relay"])])
        warnings = [e["problem"] for e in events if "problem" in e]
        self.assertEqual(len(warnings), 1)
        self.assertIn("forwarding=0", warnings[0])


class ForwardingInNamespace(TestCase):
    """Network namespaces have their own net.ipv6 sysctls: the real /proc/sys, both ways."""

    timeout = 60

    def test_checkconf_host_warns_only_where_forwarding_is_off(self) -> None:
        skip_unless_lab(lab_skip_reason(need_miredo=False))
        ns = f"tfwd{os.getpid() % 100000}"
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=30)
        self.addCleanup(subprocess.run, ["ip", "netns", "del", ns], capture_output=True, check=False)
        config = Path(self.mktemp())
        config.write_text(RELAY)
        stderr = {}
        for value in ("0", "1"):
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"net.ipv6.conf.all.forwarding={value}"],
                           check=True, capture_output=True, timeout=30)
            done = subprocess.run(["ip", "netns", "exec", ns, CHECKCONF, "--host", str(config)],
                                  capture_output=True, text=True, timeout=60, check=False)
            self.assertEqual(done.returncode, 0, done.stderr)
            stderr[value] = done.stderr
        self.assertIn("warning: relay: net.ipv6.conf.all.forwarding=0", stderr["0"])
        self.assertEqual(stderr["1"], "")

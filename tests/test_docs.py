"""The manual pages render without groff warnings and name every configuration key."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from teredo_appliance import config, config_model, sshserver
from teredo_appliance.plugin import role_plugins

ROOT = Path(__file__).resolve().parent.parent
PAGES = (ROOT / "man" / "twistd-teredo.8", ROOT / "man" / "teredo.yaml.5", ROOT / "man" / "teredoctl.8")


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("TEREDO_REQUIRE_LAB"):
            raise AssertionError(f"{tool} is not installed (tools/setup.sh installs it)")
        raise SkipTest(f"{tool} is not installed")
    return path


class ManualPageTests(SynchronousTestCase):
    def test_groff_reports_no_warnings(self) -> None:
        groff = _need("groff")
        for page in PAGES:
            result = subprocess.run([groff, "-ww", "-z", "-man", str(page)], capture_output=True, text=True,
                                    env={**os.environ, "LC_ALL": "C.UTF-8"})
            self.assertEqual((result.returncode, result.stderr), (0, ""), page.name)

    def test_man_renders(self) -> None:
        man = _need("man")
        for page in PAGES:
            result = subprocess.run([man, "-l", str(page)], capture_output=True, text=True,
                                    env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "80"})
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("SEE ALSO", result.stdout)

    def test_every_key_is_documented(self) -> None:
        text = (ROOT / "man" / "teredo.yaml.5").read_text()
        roles = tuple(role.schema.config_class for role in role_plugins().values())
        sections = (*roles, config_model.ClientExtensions, config_model.ManholeConfig, config_model.LogConfig,
                    config_model.ControlConfig, config_model.MetricsConfig)
        for section in sections:
            for field in dataclasses.fields(section):
                self.assertIn(f".B {field.name}\n", text, f"{section.__name__}.{field.name}")


    def test_every_metric_family_is_documented(self) -> None:
        text = (ROOT / "man" / "teredo.yaml.5").read_text()
        for family in ("teredo_up", "teredo_events_total", "teredo_drops_total", "teredo_bytes_total",
                       "teredo_peers", "teredo_client_qualified", "teredo_announced", "teredo_drained",
                       "teredo_build_info"):
            self.assertIn(f".B {family}\n", text)

    def test_every_teredoctl_command_is_documented(self) -> None:
        from teredo_appliance.control import COMMANDS

        text = (ROOT / "man" / "teredoctl.8").read_text()
        for command in COMMANDS:
            self.assertRegex(text, rf"\n\.BI? {command}\b")


class SystemdUnitTests(SynchronousTestCase):
    def test_unit_waits_for_the_network_and_restarts_on_failure(self) -> None:
        unit = (ROOT / "etc" / "teredo.service").read_text()
        self.assertIn("After=network-online.target", unit)
        self.assertIn("Restart=on-failure", unit)

    def test_unit_is_notify_reloads_through_teredoctl_and_stops_on_config_errors(self) -> None:
        unit = (ROOT / "etc" / "teredo.service").read_text().splitlines()
        self.assertIn("Type=notify", unit)
        self.assertIn("ExecReload=/opt/teredo-appliance/bin/teredoctl reload", unit)
        self.assertIn("RestartPreventExitStatus=78", unit)

    def test_unit_leaves_descriptors_for_reloads_beyond_the_console(self) -> None:
        unit = (ROOT / "etc" / "teredo.service").read_text()
        limit = int(next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("LimitNOFILE=")))
        # The console's worst case (every waiting login at its cap, every session) is a small share.
        self.assertGreaterEqual(limit, 16 * (config.MAX_UNAUTHENTICATED + sshserver.MAX_SESSIONS))


class BirdSampleTests(SynchronousTestCase):
    def test_sample_bird_configs_parse_and_carry_what_scaling_out_needs(self) -> None:
        box = (ROOT / "etc" / "bird-box.conf").read_text()
        upstream = (ROOT / "etc" / "bird-upstream.conf").read_text()
        for needed in ("krt_source = TEREDO_ROUTE_PROTOCOL", "unreachable", "bfd on",
                       f'interface "{config_model.ServerConfig.anycast_interface}"'):  # the server's anycast TUN
            self.assertIn(needed, box)
        for needed in ("merge paths on", "bfd on", "fib_multipath_hash_policy=3", "fib_multipath_hash_fields=0x0003"):
            self.assertIn(needed, upstream)
        if shutil.which("bird") is None:
            raise SkipTest("bird (Debian bird2) is not installed: tools/setup.sh installs it")
        for name in ("bird-box.conf", "bird-upstream.conf"):
            parsed = subprocess.run(["bird", "-p", "-c", str(ROOT / "etc" / name)], capture_output=True, text=True)
            self.assertEqual((parsed.returncode, parsed.stderr), (0, ""), name)

"""The manual pages render without groff warnings and name every configuration key."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from teredo_appliance import config_model

ROOT = Path(__file__).resolve().parent.parent
PAGES = (ROOT / "man" / "twistd-teredo.8", ROOT / "man" / "teredo.yaml.5")


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
        sections = (config_model.ServerConfig, config_model.RelayConfig, config_model.ClientConfig,
                    config_model.ClientExtensions, config_model.ManholeConfig, config_model.LogConfig)
        for section in sections:
            for field in dataclasses.fields(section):
                self.assertIn(f".B {field.name}\n", text, f"{section.__name__}.{field.name}")


class SystemdUnitTests(SynchronousTestCase):
    def test_unit_reloads_with_sighup_and_waits_for_the_network(self) -> None:
        unit = (ROOT / "etc" / "teredo.service").read_text()
        self.assertIn("After=network-online.target", unit)
        self.assertIn("Restart=on-failure", unit)
        self.assertIn("ExecReload=/bin/kill -HUP $MAINPID", unit)

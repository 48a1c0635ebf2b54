"""`teredo-checkconf`: exit 0 with the roles it would run, or 1 with every error on stderr."""

from __future__ import annotations

import io
import os
import sys
from textwrap import dedent

from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance import checkconf
from teredo_appliance.config import DEFAULT_PATH, ConfigError
from tests.test_config import BROKEN, SAMPLE


class CheckconfTests(SynchronousTestCase):
    def run_checkconf(self, *argv: str) -> tuple[int, str, str]:
        stdout, stderr = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", stdout)
        self.patch(sys, "stderr", stderr)
        return checkconf.main(list(argv)), stdout.getvalue(), stderr.getvalue()

    def write(self, text: str) -> str:
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "teredo.yaml")
        with open(path, "w") as f:
            f.write(dedent(text))
        return path

    def test_broken_configs_exit_1_with_every_error(self) -> None:
        for text, expected in BROKEN:
            path = self.write(text)
            code, out, err = self.run_checkconf(path)
            self.assertEqual(code, 1)
            self.assertEqual(out, "")
            self.assertEqual(err.splitlines(), [path + message.removeprefix("teredo.yaml") for message in expected])

    def test_sample_config_prints_roles(self) -> None:
        code, out, err = self.run_checkconf(SAMPLE)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            out.splitlines(),
            [
                "server: UDP 198.18.0.1:3544 and 198.18.0.2:3544, prefix 2001::/32, MTU 1280",
                "relay: UDP 198.18.0.3:3544, TUN teredo-relay, prefix 2001::/32, MTU 1280, at most 65536 peers",
                "client: servers teredo.trex.fi (secondary primary + 1), UDP 0.0.0.0:<any port>, TUN teredo,"
                " refresh 30s, MTU 1280",
                "manhole: tcp:2222:interface=127.0.0.1, keys from /etc/teredo/admin_keys",
                "control: /run/teredo/control.sock",
                "metrics: tcp:9100:interface=127.0.0.1",
            ],
        )

    def test_client_with_fallbacks_and_fixed_port(self) -> None:
        path = self.write(
            """\
            roles:
              client:
                server_address: 198.18.0.1
                server_address2: 198.18.0.9
                fallback_servers: [b.example, c.example]
                bind_port: 3545
                refresh_interval: 7.5
            control: false
            """
        )
        self.assertEqual(
            self.run_checkconf(path),
            (
                0,
                "client: servers 198.18.0.1 (secondary 198.18.0.9), b.example, c.example, UDP 0.0.0.0:3545,"
                " TUN teredo, refresh 7.5s, MTU 1280\ncontrol: off\n",
                "",
            ),
        )

    def test_missing_file(self) -> None:
        missing = os.path.join(self.mktemp(), "teredo.yaml")
        self.assertEqual(self.run_checkconf(missing), (1, "", f"{missing}: cannot read: No such file or directory\n"))

    def test_default_path(self) -> None:
        seen = []

        def load_config(path: str) -> None:
            seen.append(path)
            raise ConfigError([f"{path}: stop"])

        self.patch(checkconf, "load_config", load_config)
        self.assertEqual(self.run_checkconf(), (1, "", f"{DEFAULT_PATH}: stop\n"))
        self.assertEqual(seen, ["/etc/teredo/teredo.yaml"])

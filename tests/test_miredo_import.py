"""`teredo-checkconf --from-miredo`: Debian's own Miredo sample files become YAML that checkconf accepts."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from teredo_appliance import checkconf
from teredo_appliance.config import parse_config
from teredo_appliance.miredo_import import convert

SAMPLES = Path(__file__).parent / "data" / "miredo-samples"


class FromMiredoTests(SynchronousTestCase):
    def run_checkconf(self, *argv: str) -> tuple[int, str, str]:
        stdout, stderr = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", stdout)
        self.patch(sys, "stderr", stderr)
        return checkconf.main(list(argv)), stdout.getvalue(), stderr.getvalue()

    def convert_and_check(self, name: str) -> dict:
        """Convert a sample, then run plain checkconf on the output as an operator would."""
        code, out, err = self.run_checkconf("--from-miredo", str(SAMPLES / name))
        self.assertEqual((code, err), (0, ""))
        converted = Path(self.mktemp())
        converted.write_text(out)
        code, summary, err = self.run_checkconf(str(converted))
        self.assertEqual((code, err), (0, ""), out)
        return {"yaml": out, "summary": summary}

    def test_debian_sample_miredo_conf_becomes_a_client_with_its_hostname_unresolved(self) -> None:
        result = self.convert_and_check("miredo.conf")
        self.assertIn("server_address: teredo.remlab.net\n", result["yaml"])
        self.assertEqual(result["summary"], "client: servers teredo.remlab.net (secondary primary + 1),"
                                            " UDP 0.0.0.0:<any port>, TUN teredo, refresh 30s, MTU 1280\n"
                                            "control: /run/teredo/control.sock\n")

    def test_debian_installed_miredo_conf(self) -> None:
        result = self.convert_and_check("etc-miredo.conf")
        self.assertIn("client: servers teredo-debian.remlab.net ", result["summary"])

    def test_debian_sample_miredo_server_conf_becomes_a_server(self) -> None:
        for name in ("miredo-server.conf", "etc-miredo-server.conf"):
            result = self.convert_and_check(name)
            self.assertEqual(result["summary"],
                             "server: UDP 192.0.2.221:3544 and 192.0.2.222:3544, prefix 2001::/32, MTU 1280\n"
                             "control: /run/teredo/control.sock\n")

    def test_relay_with_every_key_and_unknown_lines_reported_with_their_numbers(self) -> None:
        text = ("# a relay\nRelayType restricted\nInterfaceName\tmiredo\nBindAddress 198.18.0.10\n"
                "BindPort 3545\nPrefix 2001:0::\nInterfaceMTU 1400\nSyslogFacility user\n"
                "ServerAddress teredo.example\nFrobnicate yes\n")
        conversion = convert(text, "miredo.conf")
        self.assertEqual(conversion.document, {"roles": {"relay": {
            "interface": "miredo", "bind_address": "198.18.0.10", "bind_port": 3545,
            "prefix": "2001:0::/32", "mtu": 1400}}})
        self.assertEqual([note.split(": ")[0] for note in conversion.notes],
                         ["miredo.conf:8", "miredo.conf:9", "miredo.conf:10"])
        self.assertIn("Frobnicate: unknown Miredo directive", conversion.notes[2])
        relay = parse_config(conversion.yaml_text("miredo.conf"), "out.yaml").roles.relay
        assert relay is not None
        self.assertEqual((relay.bind_port, relay.mtu, str(relay.prefix)), (3545, 1400, "2001::/32"))

    def test_client_keys_and_a_hostname_secondary_left_out(self) -> None:
        text = ("RelayType autoclient\nServerAddress 198.18.0.1\nServerAddress2 teredo2.example\n"
                "RefreshInterval 20\nBindPort 4000\n")
        conversion = convert(text, "m.conf")
        client = parse_config(conversion.yaml_text("m.conf"), "out.yaml").roles.client
        assert client is not None
        self.assertEqual((client.server_address, client.server_address2, client.refresh_interval, client.bind_port),
                         ("198.18.0.1", None, 20, 4000))
        [note] = conversion.notes
        self.assertTrue(note.startswith("m.conf:3: ServerAddress2: 'teredo2.example'"), note)

    def test_a_bad_value_is_an_error_not_a_file(self) -> None:
        path = Path(self.mktemp())
        path.write_text("ServerBindAddress 300.1.2.3\n")
        code, out, err = self.run_checkconf("--from-miredo", str(path))
        self.assertEqual((code, out), (1, ""))
        self.assertIn(f"{path} (converted):", err)
        self.assertIn("bind_address", err)

    def test_plain_checkconf_on_a_miredo_file_hints_at_the_conversion(self) -> None:
        path = str(SAMPLES / "miredo.conf")
        code, out, err = self.run_checkconf(path)
        self.assertEqual((code, out), (1, ""))
        self.assertIn(f"hint: {path} looks like a Miredo configuration; convert it with:"
                      f" teredo-checkconf --from-miredo {path}", err)

    def test_a_broken_yaml_file_gets_no_miredo_hint(self) -> None:
        path = Path(self.mktemp())
        path.write_text("roles: [\n")
        code, _, err = self.run_checkconf(str(path))
        self.assertEqual(code, 1)
        self.assertNotIn("hint", err)

    def test_unreadable_file(self) -> None:
        code, out, err = self.run_checkconf("--from-miredo", os.path.join(self.mktemp(), "none.conf"))
        self.assertEqual((code, out), (1, ""))
        self.assertIn("cannot read", err)

    @given(st.text(max_size=300))
    def test_any_text_converts_to_a_document_or_notes_never_a_crash(self, text: str) -> None:
        conversion = convert(text, "f.conf")
        self.assertEqual(len(conversion.document["roles"]), 1)
        for note in conversion.notes:
            self.assertTrue(note.startswith("f.conf:"), note)

    def test_the_samples_are_debians_files_unchanged(self) -> None:
        installed = {"miredo.conf": "/usr/share/doc/miredo/examples/miredo.conf",
                     "miredo-server.conf": "/usr/share/doc/miredo-server/examples/miredo-server.conf",
                     "etc-miredo.conf": "/etc/miredo/miredo.conf",
                     "etc-miredo-server.conf": "/etc/miredo/miredo-server.conf"}
        present = {name: path for name, path in installed.items() if os.path.exists(path)}
        if not present:
            raise SkipTest("the Debian miredo packages are not installed (tools/setup.sh installs them)")
        for name, path in present.items():
            self.assertEqual((SAMPLES / name).read_bytes(), Path(path).read_bytes(), path)

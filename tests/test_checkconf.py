"""`teredo-checkconf`: exit 0 with the roles it would run, or 1 with every error on stderr."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from textwrap import dedent

from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance import checkconf
from teredo_appliance.config import DEFAULT_PATH, ConfigError, load_config
from tests.test_admin import KeyFiles, public_line
from tests.test_config import BROKEN, REPO, SAMPLE


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
        # The sample's console files live in /etc and /var/lib: point them at real test files.
        keys = KeyFiles(self, public_line())
        with open(SAMPLE) as f:
            text = f.read().replace("/etc/teredo/admin_keys", keys.authorized_keys)
        path = self.write(text.replace("/var/lib/teredo/ssh_host_ed25519_key", keys.host_key))
        code, out, err = self.run_checkconf(path)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            out.splitlines(),
            [
                "server: UDP 198.18.0.1:3544 and 198.18.0.2:3544, prefix 2001::/32, MTU 1280",
                "relay: UDP 198.18.0.3:3544, TUN teredo-relay, prefix 2001::/32, MTU 1280, at most 65536 peers",
                "client: servers teredo.trex.fi (secondary primary + 1), UDP 0.0.0.0:<any port>, TUN teredo,"
                " refresh 30s, MTU 1280",
                f"manhole: tcp:2222:interface=127.0.0.1, keys from {keys.authorized_keys}",
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

    def test_extensions_turned_off_are_named(self) -> None:
        path = self.write(
            """\
            roles:
              client:
                server_address: 198.18.0.1
                extensions: {server_load_reduction: false, upnp: false}
            control: false
            """
        )
        code, out, err = self.run_checkconf(path)
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(out.splitlines()[0].endswith(", MTU 1280, extensions off: upnp, server_load_reduction"), out)

    def test_console_section_and_files(self) -> None:
        keys = KeyFiles(self, public_line(), b"garbage", b"-----BEGIN OPENSSH PRIVATE KEY-----")
        not_a_directory = os.path.join(keys.dir, "file")
        open(not_a_directory, "w").close()
        path = self.write(f"""\
            roles:
              relay:
            manhole:
              listen: "tcp:twenty-two"
              authorized_keys: {keys.authorized_keys}
              host_key: {not_a_directory}/sub/host_key
            """)
        code, out, err = self.run_checkconf(path)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err.splitlines(), [
            f"{path}:4: manhole.listen: 'tcp:twenty-two' is not a server endpoint (like tcp:2222:interface=127.0.0.1):"
            " invalid literal for int() with base 10: 'twenty-two'",
            f"{path}:5: manhole.authorized_keys: {keys.authorized_keys} line 2: not a plain public key",
            f"{path}:5: manhole.authorized_keys: {keys.authorized_keys} line 3: not a plain public key",
            f"{path}:6: manhole.host_key: host key {not_a_directory}/sub/host_key cannot be created:"
            f" {os.path.abspath(not_a_directory)} is not a directory",
        ])

    def test_console_files_refused_as_the_console_would(self) -> None:
        keys = KeyFiles(self, public_line())
        os.chmod(keys.authorized_keys, 0o666)
        os.makedirs(keys.host_key)  # a directory where the key file should be
        cases = [
            (keys.authorized_keys, f"authorized_keys file {keys.authorized_keys} is writable by group or others"
                                   f" (mode 0666); run: chmod go-w {keys.authorized_keys}"),
            (keys.dir, f"authorized_keys file {keys.dir} is a directory, not a regular file"),
            (keys.dir + "/missing", f"authorized_keys file {keys.dir}/missing does not exist (list the"
                                    " administrators' public keys in it, one per line)"),
        ]
        for authorized_keys, message in cases:
            path = self.write(f"roles:\n  relay:\nmanhole:\n  authorized_keys: {authorized_keys}\n"
                              f"  host_key: {keys.host_key}\n")
            self.assertEqual(self.run_checkconf(path), (1, "", (
                f"{path}:4: manhole.authorized_keys: {message}\n"
                f"{path}:5: manhole.host_key: host key {keys.host_key} is a directory, not a regular file\n")))

    def test_a_reload_does_not_check_the_console_files(self) -> None:
        # The running console re-reads its keys itself, and keeps the old list if the new one is bad.
        path = self.write("roles:\n  relay:\nmanhole:\n  authorized_keys: /nonexistent/keys\n")
        self.assertEqual(load_config(path).manhole.authorized_keys, "/nonexistent/keys")

    def test_valid_file_without_final_newline_gets_a_warning(self) -> None:
        path = self.write("roles:\n  relay:\n    mtu: 1280")
        code, out, err = self.run_checkconf(path)
        self.assertEqual((code, out.splitlines()[0][:6]), (0, "relay:"))
        self.assertEqual(err, f"warning: {path}: the last line has no newline; was the file cut short?"
                              " (replace it atomically)\n")

    def test_missing_file(self) -> None:
        missing = os.path.join(self.mktemp(), "teredo.yaml")
        self.assertEqual(self.run_checkconf(missing), (1, "", f"{missing}: cannot read: No such file or directory\n"))

    def test_default_path(self) -> None:
        seen = []

        def load_config(path: str, check_files: bool) -> None:
            seen.append(path)
            raise ConfigError([f"{path}: stop"])

        self.patch(checkconf, "load_config", load_config)
        self.assertEqual(self.run_checkconf(), (1, "", f"{DEFAULT_PATH}: stop\n"))
        self.assertEqual(seen, ["/etc/teredo/teredo.yaml"])


class CheckconfProcessTests(SynchronousTestCase):
    """The real command on hostile paths: exit 1 at once with one short line per error."""

    def run_process(self, path: str) -> subprocess.CompletedProcess[str]:
        command = "import sys; from teredo_appliance.checkconf import main; sys.exit(main())"
        return subprocess.run([sys.executable, "-c", command, path], cwd=REPO, capture_output=True, text=True,
                              timeout=30)

    def assert_refused(self, path: str, expected: list[str]) -> None:
        done = self.run_process(path)
        self.assertEqual((done.returncode, done.stdout, done.stderr.splitlines()), (1, "", expected))

    def test_fifo_device_huge_file_and_long_value(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        fifo = os.path.join(directory, "fifo.yaml")
        os.mkfifo(fifo)
        self.assert_refused(fifo, [f"{fifo}: cannot read: a FIFO, not a regular file"])
        self.assert_refused("/dev/zero", ["/dev/zero: cannot read: a character device, not a regular file"])
        huge = os.path.join(directory, "huge.yaml")
        with open(huge, "w") as f:
            f.write("#" * (2 * 1024 * 1024 - 1) + "\n")
        self.assert_refused(huge, [f"{huge}: cannot read: too large (2097152 bytes; the limit is 1048576)"])
        long_value = os.path.join(directory, "long.yaml")
        with open(long_value, "w") as f:
            f.write(f"roles:\n  relay:\n    prefix: {'x' * 1_000_000}\n    mtu: 1\n")
        keys = KeyFiles(self, public_line())
        console = os.path.join(directory, "console.yaml")
        with open(console, "w") as f:
            f.write(f"roles:\n  relay:\nmanhole:\n  authorized_keys: {fifo}\n  host_key: {keys.host_key}\n")
        self.assert_refused(console, [f"{console}:4: manhole.authorized_keys: authorized_keys file {fifo} is a FIFO,"
                                      " not a regular file"])
        self.assert_refused(long_value, [
            f"{long_value}:3: roles.relay.prefix: '{'x' * 59}... (1000002 characters) is not an IPv6 prefix"
            " (like 2001::/32)",
            f"{long_value}:4: roles.relay.mtu: 1 is out of range 1280..65535",
        ])

"""The SSH console: who may log in, the host key, the session's survival, and a real OpenSSH session.

The last class drives the console with the OpenSSH `ssh` client in a subprocess, so key
exchange, public-key-only authentication and the pty handling are the real thing.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.ssh import keys
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ProcessDone
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from teredo_appliance.admin import (
    EXEC_REFUSAL,
    AuthorizedKeys,
    ConsoleError,
    ConsoleRealm,
    ManholeService,
    load_authorized_keys,
    load_or_create_host_key,
)
from teredo_appliance.appliance import Appliance, StartError
from teredo_appliance.config_model import ManholeConfig
from teredo_appliance.console import render_peers, render_status, render_summary
from tests.test_appliance import RELAY, RELAY_BIGGER, SERVER, ScriptedLoader, World, make_config

ANSI = re.compile(rb"\x1b(\[[0-9;?]*[A-Za-z]|[cDEM78])")


def public_line(comment: str = "admin@test") -> bytes:
    key = keys.Key(Ed25519PrivateKey.generate())
    return key.public().toString("openssh") + b" " + comment.encode()


def plain(output: bytes) -> str:
    """Terminal output without escape sequences or carriage returns."""
    return ANSI.sub(b"", output).replace(b"\r", b"").decode("utf-8", "replace")


class KeyFiles:
    """A temporary directory with an authorized_keys file (mode 0600) and a host key path."""

    def __init__(self, case: SynchronousTestCase, *lines: bytes) -> None:
        self.dir = case.mktemp()
        os.makedirs(self.dir)
        self.authorized_keys = os.path.join(self.dir, "authorized_keys")
        self.host_key = os.path.join(self.dir, "var", "ssh_host_ed25519_key")
        self.write(*lines)

    def write(self, *lines: bytes, mode: int = 0o600) -> None:
        with open(self.authorized_keys, "wb") as f:
            f.write(b"".join(line + b"\n" for line in lines))
        os.chmod(self.authorized_keys, mode)

    def config(self, listen: str = "tcp:0:interface=127.0.0.1") -> ManholeConfig:
        return ManholeConfig(listen=listen, authorized_keys=self.authorized_keys, host_key=self.host_key)


class AuthorizedKeysTests(SynchronousTestCase):
    def test_missing_file_is_refused(self) -> None:
        path = self.mktemp()
        with self.assertRaises(ConsoleError) as caught:
            load_authorized_keys(path)
        self.assertEqual(str(caught.exception), f"manhole: authorized_keys file {path} does not exist "
                                                "(list the administrators' public keys in it, one per line)")

    def test_file_without_a_valid_key_is_refused(self) -> None:
        for lines in [(), (b"# only a comment", b""), (b"not a key", b'from="10.0.0.1" ' + public_line())]:
            files = KeyFiles(self, *lines)
            with self.assertRaises(ConsoleError) as caught:
                load_authorized_keys(files.authorized_keys)
            self.assertEqual(str(caught.exception),
                             f"manhole: authorized_keys file {files.authorized_keys} lists no valid public key "
                             "(expected lines like 'ssh-ed25519 AAAA... admin@host')")

    def test_file_writable_by_group_or_others_is_refused(self) -> None:
        for mode in (0o620, 0o602, 0o666):
            files = KeyFiles(self, public_line())
            os.chmod(files.authorized_keys, mode)
            with self.assertRaises(ConsoleError) as caught:
                load_authorized_keys(files.authorized_keys)
            self.assertEqual(str(caught.exception),
                             f"manhole: authorized_keys file {files.authorized_keys} is writable by group or "
                             f"others (mode {mode:04o}); run: chmod go-w {files.authorized_keys}")

    def test_valid_keys_are_read_and_other_lines_ignored(self) -> None:
        good = [public_line("alice"), public_line("bob")]
        files = KeyFiles(self, b"# admins", good[0], b"garbage", b'command="x" ' + public_line(), good[1])
        os.chmod(files.authorized_keys, 0o644)  # world-readable is fine, writable is not
        found = load_authorized_keys(files.authorized_keys)
        self.assertEqual(found, tuple(keys.Key.fromString(line) for line in good))

    def test_any_user_name_is_accepted_with_a_listed_key(self) -> None:
        listed = keys.Key.fromString(public_line())
        self.assertEqual(AuthorizedKeys([listed]).getAuthorizedKeys(b"whoever"), (listed,))


class HostKeyTests(SynchronousTestCase):
    def test_created_ed25519_with_mode_0600_whatever_the_umask(self) -> None:
        path = os.path.join(self.mktemp(), "sub", "host_key")
        old_umask = os.umask(0)
        self.addCleanup(os.umask, old_umask)
        key = load_or_create_host_key(path)
        self.assertEqual(key.sshType(), b"ssh-ed25519")
        self.assertFalse(key.isPublic())
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path + ".pub", "rb") as f:
            self.assertEqual(keys.Key.fromString(f.read()), key.public())

    def test_stable_across_restarts(self) -> None:
        path = os.path.join(self.mktemp(), "host_key")
        first = load_or_create_host_key(path)
        with open(path, "rb") as f:
            content = f.read()
        self.assertEqual(load_or_create_host_key(path), first)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), content)

    def test_unreadable_key_file_is_a_clear_error(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"not a key\n")
        with self.assertRaises(ConsoleError) as caught:
            load_or_create_host_key(path)
        self.assertTrue(str(caught.exception).startswith(f"manhole: host key {path} is not a private key"))


class RefusalTests(SynchronousTestCase):
    def test_appliance_refuses_to_start_without_a_usable_key_list(self) -> None:
        files = KeyFiles(self, public_line())
        os.chmod(files.authorized_keys, 0o664)
        with self.assertRaises(StartError) as caught:
            Appliance("teredo.yaml", make_config(server=SERVER, manhole=files.config()), reactor=reactor,
                      role_factories=World().factories())
        self.assertEqual(caught.exception.errors, [
            f"manhole: authorized_keys file {files.authorized_keys} is writable by group or others "
            f"(mode 0664); run: chmod go-w {files.authorized_keys}"])

    def test_bad_listen_string_is_refused(self) -> None:
        files = KeyFiles(self, public_line())
        with self.assertRaises(ConsoleError) as caught:
            ManholeService(files.config(listen="tcp:notaport"), appliance=None, reactor=reactor)  # type: ignore[arg-type]
        self.assertTrue(str(caught.exception).startswith("manhole: listen 'tcp:notaport' is not a strports endpoint"))


class FakeChannel:
    """Stands in for conch's SSHSessionProcessProtocol: collects output, records how it ended."""

    def __init__(self) -> None:
        self.session = object()
        self.output = bytearray()
        self.ended: Failure | None = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport  # transport.write(data) types into the console

    def write(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.ended = reason


class SessionTests(SynchronousTestCase):
    """The session glue without SSH: resizes and EOF, the trap of manhole_ssh.TerminalSession."""

    def open_console(self, *outcomes: Any) -> tuple[Appliance, FakeChannel, ISession]:
        self.world = World()
        appliance = Appliance("teredo.yaml", make_config(server=SERVER, relay=RELAY), reactor=object(),
                              role_factories=self.world.factories(), loader=ScriptedLoader(*outcomes))
        appliance.privilegedStartService()
        appliance.startService()
        self.addCleanup(appliance.stopService)
        _, avatar, _ = ConsoleRealm(appliance).requestAvatar(b"admin", None, IConchUser)
        session = ISession(avatar.original)
        session.getPty(b"xterm", (24, 80, 0, 0), [])
        channel = FakeChannel()
        session.openShell(channel)
        return appliance, channel, session

    def test_window_resize_is_recorded_without_clearing_the_screen(self) -> None:
        _, channel, session = self.open_console()
        del channel.output[:]
        session.windowChanged((50, 132, 0, 0))
        self.assertEqual(bytes(channel.output), b"")
        channel.transport.write(b"status()\r")
        self.assertIn("NAT Type                 : cone", plain(bytes(channel.output)))

    def test_eof_waits_for_a_pending_reload_then_ends_with_status_0(self) -> None:
        _, channel, session = self.open_console(make_config(server=SERVER, relay=RELAY_BIGGER))
        self.world.slow_stop.add("relay")
        channel.transport.write(b"reload()\r")
        session.eofReceived()
        self.assertIsNone(channel.ended)  # the answer is still to come
        self.world.stopping.pop().callback(None)
        self.assertIn("restarted : relay", plain(bytes(channel.output)))
        self.assertIsNotNone(channel.ended)
        self.assertIsInstance(channel.ended.value, ProcessDone)
        self.assertEqual(channel.ended.value.exitCode, 0)

    def test_help_lists_every_command(self) -> None:
        _, channel, _ = self.open_console()
        channel.transport.write(b"help()\r")
        listed = [line.split()[0] for line in plain(bytes(channel.output)).splitlines() if line.startswith("  ")]
        self.assertEqual([name for name in listed if not name.startswith("peers()")],
                         ["status()", "peers(role)", "reload()", "check()", "drain(role,", "undrain(role)",
                          "help()", "exit()", "appliance", "config"])

    def test_check_shows_what_a_reload_would_do_and_does_nothing(self) -> None:
        appliance, channel, _ = self.open_console(make_config(server=SERVER))  # the relay's section is gone
        del channel.output[:]
        channel.transport.write(b"check()\r")
        shown = plain(bytes(channel.output))
        self.assertIn("would stop   : relay\n", shown)
        self.assertIn("changes      : roles.relay removed\n", shown)
        self.assertIn("warnings     : roles.relay no longer in the file: stopping relay", shown)
        self.assertEqual(list(appliance.namedServices), ["server", "relay"])

    def test_config_names_the_configuration_in_force(self) -> None:
        _, channel, _ = self.open_console(make_config(server=SERVER, relay=RELAY_BIGGER))
        channel.transport.write(b"reload()\r")
        del channel.output[:]
        channel.transport.write(b"config.roles.relay.max_peers\r")
        self.assertIn("\n10\n", plain(bytes(channel.output)))

    def test_exit_ends_the_session_instead_of_the_daemon(self) -> None:
        _, channel, _ = self.open_console()
        channel.transport.write(b"exit()\r")
        self.assertIsNotNone(channel.ended)


class RenderTests(SynchronousTestCase):
    def test_status_report_reads_like_netsh(self) -> None:
        report = render_status({"client": {"role": "client", "counters": {"rx.ra": 2}, "state": "qualified",
                                           "nat_type": "restricted", "local_mapping": "198.18.1.2:1234",
                                           "ipv6_address": "2001:0::1", "fallback_servers": [], "drops": {},
                                           "qualified": True}})
        self.assertEqual(report.splitlines()[1:-1], [  # blocks (counters) after the one column of labels
            "Role                     : client",
            "State                    : qualified",
            "NAT Type                 : restricted",
            "Local Mapping            : 198.18.1.2:1234",
            "IPv6 Address             : 2001:0::1",
            "Fallback Servers         : -",
            "Drops                    : -",
            "Qualified                : yes",
            "Counters",
            "    rx.ra                : 2",
        ])

    def test_peer_table_says_the_true_total_when_cut(self) -> None:
        peers = [{"address": f"2001:0::{i}", "trusted": i % 2 == 0} for i in range(2)]
        self.assertEqual(render_peers({"role": "relay", "total": 3, "peers": peers}).splitlines(), [
            "relay: 3 peer(s)",
            "address    trusted",
            "2001:0::0  yes",
            "2001:0::1  no",
            "... 1 more: peers('relay', limit=0) lists all",
        ])

    def test_summary_lines_up_errors(self) -> None:
        summary = render_summary({"started": ["relay"], "stopped": [], "restarted": [], "unchanged": ["server"],
                                  "restored": ["client"], "errors": ["client: one", "relay: two"]})
        self.assertEqual(summary.splitlines(), [
            "started   : relay", "stopped   : -", "restarted : -", "unchanged : server",
            "restored  : client", "errors    : client: one", "            relay: two"])


class Collect(ProcessProtocol):
    """Feeds stdin to a subprocess, closes it, and fires with (stdout, stderr, exit code)."""

    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out, self.err = bytearray(), bytearray()
        self.done: Deferred[tuple[bytes, str, int]] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.done.callback((bytes(self.out), self.err.decode("utf-8", "replace"), reason.value.exitCode))


class RealSSHTests(TestCase):
    """OpenSSH's `ssh` against the console of a running appliance (fake roles)."""

    timeout = 60

    def setUp(self) -> Deferred[None] | None:
        self.ssh, keygen = shutil.which("ssh"), shutil.which("ssh-keygen")
        if not self.ssh or not keygen:
            raise SkipTest("needs the OpenSSH client (ssh, ssh-keygen)")
        self.files = KeyFiles(self)
        for name in ("admin", "intruder"):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test",
                            "-f", f"{self.files.dir}/{name}"], check=True)
        with open(f"{self.files.dir}/admin.pub", "rb") as f:
            self.files.write(f.read().strip())
        self.world = World()
        # The reload adds the relay and moves the console: the session that asks must survive it.
        reloaded = make_config(server=SERVER, relay=RELAY,
                               manhole=self.files.config(listen="tcp:port=0:interface=127.0.0.1"))
        self.appliance = Appliance("/etc/teredo/teredo.yaml", make_config(server=SERVER, manhole=self.files.config()),
                                   reactor=reactor, role_factories=self.world.factories(),
                                   loader=ScriptedLoader(reloaded))
        self.appliance.privilegedStartService()
        self.appliance.startService()
        self.addCleanup(self.appliance.stopService)
        return None

    def port(self) -> int:
        return int(self.appliance.getServiceNamed("manhole").address().rsplit(":", 1)[1])

    def run_ssh(self, stdin: bytes, *options: str, user: str = "admin",
                command: tuple[str, ...] = ()) -> Deferred[tuple[bytes, str, int]]:
        port = self.port()
        known_hosts = os.path.join(self.files.dir, "known_hosts")
        with open(self.files.host_key + ".pub") as pub, open(known_hosts, "w") as f:
            f.write(f"[127.0.0.1]:{port} {pub.read()}")
        args = [self.ssh, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={known_hosts}", "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes",
                "-o", "IdentityAgent=none", "-o", "ConnectTimeout=10", "-e", "none", "-p", str(port),
                *options, f"{user}@127.0.0.1", *command]
        collect = Collect(stdin)
        reactor.spawnProcess(collect, self.ssh, args, env={"PATH": os.environ.get("PATH", ""),
                                                            "HOME": self.files.dir})
        return collect.done

    async def test_status_and_reload_over_ssh(self) -> None:
        loud: list[dict] = []

        def observe(event: dict) -> None:
            if event["log_level"] >= LogLevel.warn:
                loud.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        out, err, code = await self.run_ssh(b"status()\nreload()\n", "-tt", "-i", f"{self.files.dir}/admin",
                                            user="anyone")
        text = plain(out)
        self.assertEqual(code, 0, err + text)
        # An ordinary login and logout is not a warning or an error in the daemon's log.
        self.assertEqual([formatEvent(event) for event in loud], [])
        self.assertIn("Role                     : server\nRunning                  : yes\n"
                      "NAT Type                 : cone\nCounters\n    rx.rs                : 3\n", text)
        self.assertIn("Role                     : manhole\n", text)
        self.assertIn("reloading /etc/teredo/teredo.yaml ...\n", text)
        self.assertIn("started   : relay\nstopped   : -\nrestarted : manhole\nunchanged : server\n"
                      "errors    : -\n", text)
        self.assertTrue(self.appliance.getServiceNamed("relay").running)
        # The new console (new port) takes logins with the same, stable host key.
        out, err, code = await self.run_ssh(b"peers('relay')\n", "-tt", "-i", f"{self.files.dir}/admin")
        self.assertEqual(code, 0, err)
        self.assertIn("relay: 3 peer(s)\naddress           trusted\n2001:0:c612:1::1  yes\n", plain(out))

    async def test_exec_request_is_refused_in_one_line_without_a_traceback(self) -> None:
        loud: list[dict] = []

        def observe(event: dict) -> None:
            if event["log_level"] >= LogLevel.warn:
                loud.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        out, err, code = await self.run_ssh(b"", "-i", f"{self.files.dir}/admin", "-T", command=("status",))
        self.assertEqual((out, err, code), (b"", EXEC_REFUSAL.decode(), 1))
        self.assertEqual([formatEvent(event) for event in loud], [])
        # The console still takes interactive logins afterwards.
        out, _, code = await self.run_ssh(b"status()\n", "-tt", "-i", f"{self.files.dir}/admin")
        self.assertEqual(code, 0)
        self.assertIn("Role                     : server", plain(out))

    async def test_wrong_key_is_refused(self) -> None:
        out, err, code = await self.run_ssh(b"status()\n", "-tt", "-i", f"{self.files.dir}/intruder")
        self.assertEqual(code, 255)
        self.assertIn("Permission denied (publickey)", err)
        self.assertNotIn(b"Role", out)

    async def test_password_login_is_refused(self) -> None:
        for method in ("password", "keyboard-interactive"):
            _, err, code = await self.run_ssh(b"status()\n", "-tt", "-o", f"PreferredAuthentications={method}",
                                              "-o", "PubkeyAuthentication=no")
            self.assertEqual(code, 255)
            self.assertIn("Permission denied (publickey)", err)  # publickey is the only method offered


class ConsoleReloadTests(TestCase):
    """Console-specific reload rules: a busy new port restores the old console; keys re-read in place."""

    def start(self, files: KeyFiles, *outcomes: Any) -> Appliance:
        appliance = Appliance("teredo.yaml", make_config(server=SERVER, manhole=files.config()), reactor=reactor,
                              role_factories=World().factories(), loader=ScriptedLoader(*outcomes))
        appliance.privilegedStartService()
        appliance.startService()
        self.addCleanup(appliance.stopService)
        return appliance

    async def test_busy_port_restores_the_previous_console(self) -> None:
        busy = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        port = busy.getHost().port
        files = KeyFiles(self, public_line())
        appliance = self.start(files, make_config(server=SERVER,
                                                  manhole=files.config(f"tcp:{port}:interface=127.0.0.1")))
        result = await appliance.reload()
        self.assertEqual(result["restored"], ["manhole"])
        self.assertEqual(result["errors"], [f"manhole: cannot start: Couldn't listen on 127.0.0.1:{port}: "
                                            "[Errno 98] Address already in use.; "
                                            "the previous configuration was restored"])
        self.assertEqual(appliance.config.manhole, files.config())
        self.assertIsNotNone(appliance.getServiceNamed("manhole").address())  # listening again (on port 0)
        self.flushLoggedErrors(CannotListenError)

    async def test_key_list_is_reread_in_place(self) -> None:
        first, second = public_line("alice"), public_line("bob")
        files = KeyFiles(self, first)
        config = make_config(server=SERVER, manhole=files.config())
        appliance = self.start(files, config, config)
        console = appliance.getServiceNamed("manhole")
        files.write(first, second)
        result = await appliance.reload()
        self.assertEqual(result["unchanged"], ["server", "manhole"])
        self.assertIs(appliance.getServiceNamed("manhole"), console)
        self.assertEqual(len(console.keys.keys), 2)
        files.write(first, mode=0o666)
        result = await appliance.reload()
        self.assertEqual(result["errors"], [
            f"manhole: authorized_keys file {files.authorized_keys} is writable by group or others (mode 0666); "
            f"run: chmod go-w {files.authorized_keys}; the console keeps its 2 previous key(s)"])
        self.assertEqual(len(console.keys.keys), 2)

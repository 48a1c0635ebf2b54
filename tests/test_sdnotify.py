"""sd_notify: real AF_UNIX datagram sockets stand in for systemd, in-process and under twistd."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address

from twisted.application.service import Service
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.appliance import Appliance
from teredo_appliance.config_model import Config, RelayConfig, RolesConfig, ServerConfig
from teredo_appliance.sdnotify import NOTIFY_SOCKET, Notifier, one_line
from tests.test_config import REPO

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Listener:
    """A datagram socket like systemd's notify socket; `messages()` decodes what arrived."""

    def __init__(self, case: SynchronousTestCase, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        case.addCleanup(self.sock.close)
        if abstract:
            name = f"teredo-test-notify-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            directory = tempfile.mkdtemp(prefix="tnotify")  # short: sun_path holds 107 bytes
            case.addCleanup(os.rmdir, directory)
            self.address = os.path.join(directory, "notify")
            self.sock.bind(self.address)
            case.addCleanup(os.unlink, self.address)

    def messages(self, timeout: float = 0.0) -> list[dict[str, str]]:
        found = []
        self.sock.settimeout(timeout if timeout else None)
        self.sock.setblocking(timeout > 0)
        while True:
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, TimeoutError):
                return found
            found.append(dict(line.split("=", 1) for line in data.decode().split("\n")))
            self.sock.setblocking(False)


class NotifierTests(SynchronousTestCase):
    def test_path_and_abstract_sockets_receive_key_value_lines(self) -> None:
        for abstract in (False, True):
            listener = Listener(self, abstract)
            notifier = Notifier(listener.address, clock=lambda: 1234567)
            self.assertTrue(notifier.ready("running: server\nrelay 2 peer(s)"))
            self.assertTrue(notifier.reloading())
            self.assertTrue(notifier.stopping())
            self.assertEqual(listener.messages(), [
                {"READY": "1", "STATUS": "running: server; relay 2 peer(s)"},
                {"RELOADING": "1", "MONOTONIC_USEC": "1234567", "STATUS": "reloading the configuration"},
                {"STOPPING": "1", "STATUS": "stopping"},
            ])

    def test_monotonic_usec_is_clock_monotonic(self) -> None:
        listener = Listener(self)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        Notifier(listener.address).reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        [message] = listener.messages()
        self.assertTrue(before <= int(message["MONOTONIC_USEC"]) <= after, (before, message, after))

    def test_without_systemd_or_with_it_gone_nothing_is_raised(self) -> None:
        self.assertFalse(Notifier(None).ready("x"))
        self.assertFalse(Notifier(os.path.join(self.mktemp(), "gone")).ready("x"))

    def test_from_environment_takes_the_variable_away_from_children(self) -> None:
        env = {NOTIFY_SOCKET: "@sock", "PATH": "/bin"}
        self.assertEqual(Notifier.from_environment(env).address, "@sock")
        self.assertEqual(env, {"PATH": "/bin"})
        self.assertIsNone(Notifier.from_environment({}).address)

    def test_one_line(self) -> None:
        self.assertEqual(one_line("a\n\n  b  \nc"), "a; b; c")


class FakeRole(Service):
    qualified = False

    def __init__(self, section: object, reactor: object = None) -> None:
        self.section = section

    def peer_count(self) -> int:
        return 7

    def status(self) -> dict[str, object]:
        return {}


class ApplianceNotifiesTests(SynchronousTestCase):
    """The appliance in-process: READY after every role started, reload brackets, STOPPING."""

    def test_ready_reload_and_stop(self) -> None:
        listener = Listener(self)
        server = ServerConfig(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2"))
        config = Config(roles=RolesConfig(server=server, relay=RelayConfig()))
        broken = self.mktemp()
        with open(broken, "w") as f:
            f.write("roles: [\n")
        appliance = Appliance(broken, config, reactor=object(), role_factories={"server": FakeRole, "relay": FakeRole},
                              notifier=Notifier(listener.address))
        appliance.privilegedStartService()
        self.assertEqual(listener.messages(), [])  # not ready before the roles have started
        appliance.startService()
        self.assertEqual(listener.messages(), [{"READY": "1", "STATUS": "running: server, relay 7 peer(s)"}])

        summary = self.successResultOf(appliance.reload())
        self.assertTrue(summary["errors"])
        reloading, ready = listener.messages()
        self.assertEqual((reloading["RELOADING"], reloading["STATUS"]), ("1", f"reloading {broken}"))
        self.assertGreater(int(reloading["MONOTONIC_USEC"]), 0)
        self.assertEqual(ready, {"READY": "1",
                                 "STATUS": "running: server, relay 7 peer(s); last reload: 1 error(s), see the log"})

        self.successResultOf(appliance.stopService())
        self.assertEqual(listener.messages(), [{"STOPPING": "1", "STATUS": "stopping"}])


class TwistdNotifiesTests(SynchronousTestCase):
    """The real command line: a config error ends twistd with 78 and never claims readiness."""

    def test_bad_config_exits_78_without_ready(self) -> None:
        listener = Listener(self)
        cwd = os.path.abspath(self.mktemp())
        os.mkdir(cwd)
        with open(os.path.join(cwd, "bad.yaml"), "w") as f:
            f.write("roles:\n  relay:\n    max_peers: 0\n")
        result = subprocess.run([TWISTD, "-n", "--pidfile=", "teredo", "-c", "bad.yaml"], cwd=cwd,
                                env={**os.environ, "PYTHONPATH": REPO, NOTIFY_SOCKET: listener.address},
                                capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual(result.returncode, 78, result.stderr)
        self.assertEqual(result.stderr, "bad.yaml:3: roles.relay.max_peers: 0 must be at least 1\n")
        self.assertEqual(listener.messages(), [])

"""The control socket: its protocol on in-memory transports, its socket file on a real reactor,
and teredoctl against it."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from ipaddress import IPv4Address
from typing import Any

from twisted.internet import reactor as real_reactor
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from teredo_appliance import control, teredoctl
from teredo_appliance.config import ConfigError, load_config
from teredo_appliance.config_model import Config, ControlConfig, RolesConfig, ServerConfig
from teredo_appliance.reload import CHECK_KEYS

SERVER = ServerConfig(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2"))


NOTHING_CHECKED = {key: [] for key in CHECK_KEYS}


class FakeAppliance:
    """The narrow interface the control commands use, with scripted answers."""

    def __init__(self, config_path: str = "teredo.yaml") -> None:
        self.config_path = config_path
        self.config = Config(roles=RolesConfig(server=SERVER), control=ControlConfig())
        self.reloads: list[Deferred[dict[str, list[str]]]] = []
        self.peer_calls: list[tuple[str, int | None]] = []

    def status(self) -> dict[str, Any]:
        return {"server": {"role": "server", "running": True, "counters": {"rx.rs": 3}}}

    def peers(self, role: str, limit: int | None = None) -> dict[str, Any]:
        self.peer_calls.append((role, limit))
        if role != "relay":
            raise LookupError(f"no {role!r} role is running (running: relay)")
        rows = [{"address": f"2001:0:c612:1::{n}", "trusted": True} for n in range(1, 4)]
        return {"role": role, "total": 3, "peers": rows[:limit]}

    def reload(self) -> Deferred[dict[str, list[str]]]:
        d: Deferred[dict[str, list[str]]] = Deferred()
        self.reloads.append(d)
        return d

    def check(self) -> dict[str, list[str]]:
        """The dry run (tested in test_appliance): scripted from what the file says here."""
        try:
            load_config(self.config_path)
        except ConfigError as error:
            return {**NOTHING_CHECKED, "unchanged": ["server", "control"], "errors": error.errors}
        return {**NOTHING_CHECKED, "start": ["relay"], "stop": ["server"], "unchanged": ["control"],
                "changes": ["roles.server removed", "roles.relay added"]}


class Connection:
    """One ControlProtocol on a StringTransport."""

    def __init__(self, factory: control.ControlFactory) -> None:
        self.transport = StringTransport()
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def answer(self) -> dict[str, Any]:
        lines = self.transport.value().splitlines()
        assert len(lines) == 1, lines
        return json.loads(lines[0])

    def close(self) -> None:
        self.protocol.connectionLost(None)


class ProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.appliance = FakeAppliance()
        self.clock = Clock()
        self.factory = control.ControlFactory(control.ControlCommands(self.appliance), self.clock)

    def ask(self, request: bytes) -> dict[str, Any]:
        connection = Connection(self.factory)
        connection.send(request)
        self.assertTrue(connection.transport.disconnecting, "one answer, then the connection closes")
        return connection.answer()

    def test_status_and_version(self) -> None:
        self.assertEqual(self.ask(b'{"command": "status"}\n'),
                         {"ok": True, "result": {"server": {"role": "server", "running": True,
                                                            "counters": {"rx.rs": 3}}}})
        version = self.ask(b'{"command": "version"}\n')["result"]
        self.assertEqual((version["version"], version["config"]), ("0.1.0", "teredo.yaml"))

    def test_peers_limit_and_errors(self) -> None:
        answer = self.ask(b'{"command": "peers", "role": "relay", "limit": 2}\n')
        self.assertEqual((answer["result"]["total"], len(answer["result"]["peers"])), (3, 2))
        self.assertEqual(len(self.ask(b'{"command": "peers", "role": "relay", "limit": 0}\n')["result"]["peers"]), 3)
        self.assertEqual(self.appliance.peer_calls, [("relay", 2), ("relay", None)])
        self.assertEqual(self.ask(b'{"command": "peers", "role": "client"}\n'),
                         {"ok": False, "error": "no 'client' role is running (running: relay)", "errors": []})
        for bad in (b'-1', b'"all"', b'true', b'1.5'):
            answer = self.ask(b'{"command": "peers", "role": "relay", "limit": ' + bad + b'}\n')
            self.assertFalse(answer["ok"])
            self.assertIn("limit must be a whole number", answer["error"])

    def test_reload_answers_when_the_reload_is_done(self) -> None:
        connection = Connection(self.factory)
        connection.send(b'{"command": "reload"}\n')
        self.assertEqual(connection.transport.value(), b"")  # still reloading
        self.appliance.reloads[0].callback({"started": ["relay"], "stopped": [], "restarted": [],
                                            "unchanged": ["server"], "errors": []})
        answer = connection.answer()
        self.assertEqual((answer["ok"], answer["result"]["started"], answer["errors"]), (True, ["relay"], []))

    def test_refused_reload_carries_file_line_errors(self) -> None:
        connection = Connection(self.factory)
        connection.send(b'{"command": "reload"}\n')
        error = "teredo.yaml:3: roles.relay.mtu: 9 is out of range 1280..65535"
        self.appliance.reloads[0].callback({"started": [], "stopped": [], "restarted": [],
                                            "unchanged": ["server"], "errors": [error]})
        answer = connection.answer()
        self.assertEqual((answer["ok"], answer["errors"]), (False, [error]))
        self.assertEqual(answer["error"], "reload refused; the running configuration is unchanged")

    def test_dry_run_validates_and_plans_without_reloading(self) -> None:
        path = self.mktemp()
        self.appliance.config_path = path
        with open(path, "w") as f:
            f.write("roles:\n  relay:\n")
        answer = self.ask(b'{"command": "reload", "dry_run": true}\n')
        self.assertEqual(answer["ok"], True)
        self.assertEqual({key: answer["result"][key] for key in ("start", "stop", "restart", "unchanged", "errors")},
                         {"start": ["relay"], "stop": ["server"], "restart": [], "unchanged": ["control"],
                          "errors": []})
        self.assertIn("roles.server removed", answer["result"]["changes"])
        with open(path, "w") as f:
            f.write("roles:\n  relay:\n    mtu: 9\n")
        answer = self.ask(b'{"command": "reload", "dry_run": true}\n')
        self.assertEqual(answer["errors"], [f"{path}:3: roles.relay.mtu: 9 is out of range 1280..65535"])
        self.assertEqual(self.appliance.reloads, [])

    def test_hostile_requests_get_one_refusal_each(self) -> None:
        for request, error in ((b"not json\n", "the request is not a JSON object"),
                               (b"[1, 2]\n", "the request is not a JSON object"),
                               (b"\xff\xfe\n", "the request is not a JSON object"),
                               (b'{"command": "shutdown"}\n', "unknown command 'shutdown'; expected one of "
                                                              "status, peers, reload, version, drain, undrain"),
                               (b'{"command": "peers"}\n', "peers needs a role: relay or client")):
            self.assertEqual(self.ask(request), {"ok": False, "error": error, "errors": []}, request)

    def test_request_length_is_bounded(self) -> None:
        connection = Connection(self.factory)
        connection.send(b"x" * (control.MAX_REQUEST + 1))  # no newline yet: refused before it ends
        self.assertEqual(connection.answer()["error"], f"request longer than {control.MAX_REQUEST} bytes")
        self.assertTrue(connection.transport.disconnecting)

    def test_a_silent_connection_is_closed(self) -> None:
        connection = Connection(self.factory)
        self.clock.advance(control.REQUEST_TIMEOUT - 0.1)
        self.assertFalse(connection.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertEqual(connection.answer()["error"], "no request within 10 seconds")
        self.assertTrue(connection.transport.disconnecting)

    def test_one_request_per_connection(self) -> None:
        connection = Connection(self.factory)
        connection.send(b'{"command": "reload"}\n{"command": "reload"}\n')
        self.assertEqual(len(self.appliance.reloads), 1)

    def test_connections_are_bounded_and_counted_down(self) -> None:
        open_ = [Connection(self.factory) for _ in range(control.MAX_CLIENTS)]
        extra = Connection(self.factory)
        self.assertEqual(extra.answer()["error"],
                         f"busy: {control.MAX_CLIENTS} control connections are open; try again")
        extra.close()
        self.assertEqual(self.factory.clients, control.MAX_CLIENTS)
        for connection in open_:
            connection.close()
        self.assertEqual(self.factory.clients, 0)
        self.assertTrue(self.ask(b'{"command": "status"}\n')["ok"])

    def test_a_failing_command_is_an_answer_not_a_dead_connection(self) -> None:
        def broken() -> dict[str, Any]:
            raise RuntimeError("boom")

        self.appliance.status = broken  # type: ignore[method-assign]
        self.assertEqual(self.ask(b'{"command": "status"}\n'),
                         {"ok": False, "error": "internal error: boom", "errors": []})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class SocketFileTests(TestCase):
    """The service on the real reactor: mode, stale sockets, foreign files, removal on stop."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="tctl")  # short: sun_path holds 107 bytes
        self.addCleanup(lambda: os.system(f"rm -rf {self.dir}"))
        self.path = os.path.join(self.dir, "sub", "control.sock")

    def service(self) -> control.ControlService:
        return control.ControlService(ControlConfig(self.path), FakeAppliance(), reactor=real_reactor)

    def start(self) -> control.ControlService:
        service = self.service()
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_created_0600_in_a_0755_directory_and_removed_on_stop(self) -> None:
        service = self.start()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertTrue(stat.S_ISSOCK(os.stat(self.path).st_mode))
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o755)
        d = service.stopService()
        return d.addCallback(lambda _: self.assertFalse(os.path.exists(self.path)))

    def test_stale_socket_is_replaced_and_a_live_one_refused(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(self.path)
        stale.close()  # the file stays, nobody listens: what a killed daemon leaves
        self.start()
        with self.assertRaises(ConfigError) as caught:
            self.service().privilegedStartService()
        self.assertEqual(caught.exception.errors,
                         [f"control: another process listens on {self.path} (is another appliance running?)"])

    def test_a_file_that_is_not_a_socket_is_never_removed(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "w") as f:
            f.write("precious")
        with self.assertRaises(ConfigError) as caught:
            self.service().privilegedStartService()
        self.assertEqual(caught.exception.errors,
                         [f"control: {self.path} exists and is not a socket; remove it or set control.socket"])
        with open(self.path) as f:
            self.assertEqual(f.read(), "precious")

    def run_teredoctl(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = teredoctl.main(["--socket", self.path, *argv])
        return code, out.getvalue(), err.getvalue()

    def test_teredoctl_over_the_real_socket(self) -> None:
        self.start()
        d = threads.deferToThread(self.run_teredoctl, "status", "--json")

        def check(result: tuple[int, str, str]) -> Deferred[Any]:
            code, out, err = result
            self.assertEqual((code, err), (0, ""))
            self.assertEqual(json.loads(out)["server"]["counters"], {"rx.rs": 3})
            return threads.deferToThread(self.run_teredoctl, "peers", "relay", "--limit", "2")

        def check_peers(result: tuple[int, str, str]) -> None:
            code, out, err = result
            self.assertEqual(code, 0, err)
            self.assertEqual(out.splitlines(), [
                "relay: 3 peer(s)", "address           trusted", "2001:0:c612:1::1  yes", "2001:0:c612:1::2  yes",
                "... 1 more: teredoctl peers relay --limit 0 lists all"])

        return d.addCallback(check).addCallback(check_peers)


class TeredoctlTests(SynchronousTestCase):
    def run_main(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = teredoctl.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def test_absent_socket_is_a_clear_message_and_exit_3(self) -> None:
        path = os.path.join(tempfile.gettempdir(), f"teredo-no-such-dir-{os.getpid()}", "control.sock")
        self.assertEqual(self.run_main("--socket", path, "status"),
                         (3, "", f"teredoctl: {path}: no such socket (is the appliance running, "
                                 "with control enabled?)\n"))

    def test_permission_denied_is_a_clear_message_and_exit_3(self) -> None:
        if os.geteuid() == 0:
            self.patch(socket.socket, "connect", lambda self, path: (_ for _ in ()).throw(PermissionError(13, "x")))
        directory = tempfile.mkdtemp(prefix="tctl")
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "control.sock")
        self.assertEqual(self.run_main("--socket", path, "version"),
                         (3, "", f"teredoctl: {path}: permission denied (run as root or as the appliance's user)\n"))

    def test_usage(self) -> None:
        self.assertEqual(self.run_main("peers", "relay", "--limit", "-1")[0], 2)
        with self.assertRaises(SystemExit) as caught, redirect_stderr(io.StringIO()):
            teredoctl.main(["frobnicate"])
        self.assertEqual(caught.exception.code, 2)

    def test_renders_refused_reload_like_checkconf(self) -> None:
        answer = {"ok": False, "error": "reload refused; the running configuration is unchanged",
                  "errors": ["t.yaml:3: roles.relay.mtu: 9 is out of range 1280..65535"],
                  "result": {"started": [], "stopped": [], "restarted": [], "unchanged": ["server"],
                             "errors": ["t.yaml:3: roles.relay.mtu: 9 is out of range 1280..65535"]}}
        self.patch(teredoctl, "ask", lambda path, request, timeout: answer)
        code, out, err = self.run_main("reload")
        self.assertEqual(code, 1)
        self.assertEqual(out, "started   : -\nstopped   : -\nrestarted : -\nunchanged : server\n")
        self.assertEqual(err, "t.yaml:3: roles.relay.mtu: 9 is out of range 1280..65535\n"
                              "teredoctl: reload refused; the running configuration is unchanged\n")


if sys.platform != "linux":  # pragma: no cover
    del SocketFileTests

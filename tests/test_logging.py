"""The daemon's log: levels per namespace (Twisted's own predicate), text or JSON lines, under twistd."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.application.service import Application
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from teredo_appliance import __version__, tap
from teredo_appliance.appliance import Appliance
from teredo_appliance.config import ConfigError, parse_config
from teredo_appliance.config_model import LogConfig
from teredo_appliance.loglevel import LogSink
from tests.labsupport import lab_skip_reason, skip_unless_lab
from tests.test_appliance import World

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
REPO = str(Path(__file__).resolve().parent.parent)


class Unserialisable:
    def __repr__(self) -> str:
        return "<thing>"


class LogSinkTests(SynchronousTestCase):
    def sink(self, **config: object) -> tuple[LogSink, io.StringIO]:
        out = io.StringIO()
        return LogSink(out, LogConfig(**config)), out  # type: ignore[arg-type]

    def test_json_lines_parse_with_time_level_namespace_text_and_fields(self) -> None:
        sink, out = self.sink(format="json")
        log = Logger(namespace="teredo_appliance.roles.relay", observer=sink)
        log.info("relay on {address}", address="198.18.0.10", port=3544, thing=Unserialisable())
        log.failure("it broke", Failure(ZeroDivisionError("division by zero")))
        first, second = (json.loads(line) for line in out.getvalue().splitlines())
        self.assertEqual({k: first[k] for k in ("level", "namespace", "text", "address", "port")},
                         {"level": "info", "namespace": "teredo_appliance.roles.relay",
                          "text": "relay on 198.18.0.10", "address": "198.18.0.10", "port": 3544})
        self.assertRegex(first["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
        self.assertNotIn("thing", first)
        self.assertEqual(second["level"], "critical")
        self.assertIn("ZeroDivisionError", second["traceback"])

    def test_levels_per_namespace_and_conch_below_the_default(self) -> None:
        sink, out = self.sink(level="info", namespaces=(("teredo_appliance.roles.relay", "debug"),))
        Logger(namespace="twisted.conch.ssh.transport.SSHServerTransport", observer=sink).info("kex done")
        Logger(namespace="teredo_appliance.roles.relay.RelayService", observer=sink).debug("relay detail")
        Logger(namespace="teredo_appliance.roles.client.ClientService", observer=sink).debug("client detail")
        Logger(namespace="teredo_appliance.roles.client.ClientService", observer=sink).info("client info")
        text = out.getvalue()
        self.assertNotIn("kex done", text)
        self.assertIn("relay detail", text)
        self.assertNotIn("client detail", text)
        self.assertIn("client info", text)

    def test_the_config_can_let_conch_speak_again(self) -> None:
        sink, out = self.sink(namespaces=(("twisted.conch", "info"),))
        Logger(namespace="twisted.conch.ssh.userauth", observer=sink).info("auth ok")
        self.assertIn("auth ok", out.getvalue())

    def test_reconfigure_switches_format_and_level(self) -> None:
        sink, out = self.sink()
        log = Logger(namespace="teredo_appliance.x", observer=sink)
        log.info("as text")
        sink.configure(LogConfig(level="warn", format="json"))
        log.info("hidden")
        log.warn("as json")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertIn("as text", lines[0])
        self.assertEqual(json.loads(lines[1])["text"], "as json")

    def test_twistd_gets_the_sink_as_the_applications_log_observer(self) -> None:
        config = parse_config("roles:\n  server:\n    bind_address: 198.18.0.1\n", "t.yaml")
        appliance = Appliance("t.yaml", config, reactor=object(), role_factories=World().factories())
        application = Application("teredo")
        appliance.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), appliance.log_sink)

    def test_the_stream_is_twistds_choice(self) -> None:
        def stream(**twistd: object) -> object:
            options = tap.Options()
            options.parent = twistd  # type: ignore[attr-defined]
            return tap.log_stream(options)

        self.assertIs(stream(nodaemon=True, logfile=None), sys.stdout)
        self.assertIs(stream(nodaemon=False, logfile="-"), sys.stdout)
        path = os.path.abspath(self.mktemp())
        logfile = stream(nodaemon=True, logfile=path)
        self.addCleanup(logfile.close)  # type: ignore[attr-defined]
        self.assertEqual(logfile.path, path)  # type: ignore[attr-defined]
        self.assertRaises(ConfigError, stream, syslog=True)


class JsonLogOfARealDaemon(TestCase):
    """`twistd -n --logfile=- teredo` with log.format json, in a namespace: every stdout line parses."""

    timeout = 60

    def test_every_line_is_a_json_object_and_the_first_names_version_config_and_roles(self) -> None:
        skip_unless_lab(lab_skip_reason(need_miredo=False))
        ns = f"tlog{os.getpid() % 100000}"
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=30)
        self.addCleanup(subprocess.run, ["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30)
        config = Path(self.mktemp()).absolute()
        config.write_text("roles:\n  relay:\n    interface: tlogrelay\n    bind_address: 127.0.0.1\n"
                          "log:\n  format: json\ncontrol: false\n")  # never the host's /run/teredo
        out_path, err_path = Path(self.mktemp()), Path(self.mktemp())
        with out_path.open("w") as out_file, err_path.open("w") as err_file:
            daemon = subprocess.Popen(["ip", "netns", "exec", ns, TWISTD, "-n", "--pidfile=", "--logfile=-",
                                       "teredo", "-c", str(config)], stdout=out_file, stderr=err_file,
                                      text=True, env={**os.environ, "PYTHONPATH": REPO})

        def stop() -> None:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()

        self.addCleanup(stop)
        deadline = time.monotonic() + 20
        # Running once the relay has said so (its start line comes after the TUN and the port).
        while '"Teredo relay on' not in out_path.read_text() and time.monotonic() < deadline:
            self.assertIsNone(daemon.poll(), err_path.read_text())
            time.sleep(0.1)
        links = subprocess.run(["ip", "-n", ns, "link"], capture_output=True, text=True, check=False).stdout
        stop()
        out, err = out_path.read_text(), err_path.read_text()
        self.assertIn("tlogrelay", links, err)
        records = [json.loads(line) for line in out.splitlines()]  # any non-JSON line fails here
        [start] = [r for r in records if r["text"].startswith("teredo-appliance ")]
        self.assertEqual((start["version"], start["path"], start["roles"]), (__version__, str(config), ["relay"]))
        self.assertTrue(all({"time", "level", "namespace", "text"} <= set(r) for r in records))
        self.assertTrue(any(r["namespace"].startswith("teredo_appliance.roles.relay") for r in records))

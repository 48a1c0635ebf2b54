"""`twistd teredo`: the plugin is found, its options parse, and a bad config ends it cleanly."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import types
from unittest import mock

from twisted.application.service import IService, IServiceMaker
from twisted.internet import task
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance import tap
from teredo_appliance.config import load_config
from tests.test_config import REPO, SAMPLE

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def twistd(*args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    """Run the venv's twistd on this source tree (the project need not be installed)."""
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [TWISTD, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


class PluginTests(SynchronousTestCase):
    def test_plugin_is_found_with_tapname_teredo(self) -> None:
        makers = [maker for maker in getPlugins(IServiceMaker) if maker.tapname == "teredo"]
        self.assertTrue(makers)
        self.assertIs(makers[0].options, tap.Options)

    def test_drop_to_is_the_user_twistd_switches_to(self) -> None:
        import pwd

        from twisted.scripts.twistd import ServerOptions

        self.assertEqual(tap.drop_to(tap.Options()), (None, None))  # not under twistd
        nobody = pwd.getpwnam("nobody")
        for argv, expected in ((["teredo"], (None, None)),
                               (["-u", "nobody", "teredo"], (nobody.pw_uid, nobody.pw_gid)),
                               (["-u", "nobody", "-g", "0", "teredo"], (nobody.pw_uid, 0))):
            options = ServerOptions()
            options.parseOptions(argv)
            self.assertEqual(tap.drop_to(options.subOptions), expected, argv)

    def test_options_default_and_flags(self) -> None:
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(options["config"], "/etc/teredo/teredo.yaml")
        for argv in (["-c", "/tmp/x.yaml"], ["--config", "/tmp/x.yaml"], ["--config=/tmp/x.yaml"]):
            options = tap.Options()
            options.parseOptions(argv)
            self.assertEqual(options["config"], "/tmp/x.yaml")

    def test_help_documents_config(self) -> None:
        help_text = str(tap.Options())
        self.assertIn("-c, --config=", help_text)
        self.assertIn("[default: /etc/teredo/teredo.yaml]", help_text)


class MakeServiceTests(SynchronousTestCase):
    def make_service(self, path: str) -> tuple[object, str]:
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        options = tap.Options()
        options.parseOptions(["-c", path])
        try:
            return tap.makeService(options), stderr.getvalue()
        except SystemExit as e:
            return e.code, stderr.getvalue()

    def test_the_reactor_keeps_monotonic_time_before_any_role_exists(self) -> None:
        import twisted.internet

        reactor = task.Clock()  # stands for twistd's reactor, timed by time.time
        self.patch(twisted.internet, "reactor", reactor)
        self.make_service(os.path.join(self.mktemp(), "teredo.yaml"))
        self.assertIs(reactor.seconds, time.monotonic)

    def test_missing_file_exits_78_with_one_line(self) -> None:
        missing = os.path.join(self.mktemp(), "teredo.yaml")
        self.assertEqual(self.make_service(missing), (78, f"{missing}: cannot read: No such file or directory\n"))

    def test_invalid_file_exits_78_with_every_error(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("roles:\n  relay:\n    mtu: 9\n    max_peers: -1\n")
        self.assertEqual(
            self.make_service(path),
            (
                78,
                f"{path}:3: roles.relay.mtu: 9 is out of range 1280..65535\n"
                f"{path}:4: roles.relay.max_peers: -1 must be at least 1\n",
            ),
        )

    def test_valid_file_builds_appliance_from_path_and_config(self) -> None:
        built = []
        fake = types.ModuleType("teredo_appliance.appliance")
        fake.Appliance = lambda path, config, **kwargs: built.append((path, config, kwargs)) or "appliance"
        with mock.patch.dict(sys.modules, {fake.__name__: fake}):
            self.assertEqual(self.make_service(SAMPLE), ("appliance", ""))
        [(path, config, kwargs)] = built
        self.assertEqual((path, config), (SAMPLE, load_config(SAMPLE)))
        self.assertEqual(kwargs["log_sink"].config, config.log)
        self.assertEqual(kwargs["owner"], (None, None))  # no -u/-g: nobody to hand the control socket to

    def _sample_with_keys(self, keys: str | None) -> str:
        """The shipped sample, its console pointed at files of this test."""
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        keys_path = os.path.join(directory, "admin_keys")
        if keys is not None:
            with open(keys_path, "w") as f:
                f.write(keys)
            os.chmod(keys_path, 0o600)
        with open(SAMPLE) as f:
            text = f.read()
        text = text.replace("/etc/teredo/admin_keys", keys_path)
        text = text.replace("/var/lib/teredo/ssh_host_ed25519_key", os.path.join(directory, "host_key"))
        path = os.path.join(directory, "teredo.yaml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_valid_file_builds_a_service(self) -> None:
        key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb1N3CzKPTs2Hw0hLuH/0ZsJ0v0rWUw8DtK2s3iCVcj admin@test\n"
        service, err = self.make_service(self._sample_with_keys(key))
        self.assertEqual(err, "")
        self.assertTrue(IService.providedBy(service))
        self.assertEqual(sorted(child.name for child in service),
                         ["client", "control", "manhole", "metrics", "relay", "server"])

    def test_unusable_console_keys_exit_78_with_one_line(self) -> None:
        path = self._sample_with_keys(None)
        service, err = self.make_service(path)
        self.assertEqual(service, 78)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("authorized_keys file", err)
        self.assertIn("does not exist", err)


class TwistdTests(SynchronousTestCase):
    """The real command line, in a subprocess: what an operator sees."""

    def setUp(self) -> None:
        self.cwd = os.path.abspath(self.mktemp())
        os.mkdir(self.cwd)

    def test_help_lists_teredo(self) -> None:
        result = twistd("--help", cwd=self.cwd)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"\n\s+teredo\s+Teredo server, relay and client roles")

    def test_subcommand_help_documents_config(self) -> None:
        result = twistd("teredo", "--help", cwd=self.cwd)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("-c, --config=", result.stdout)
        self.assertIn("[default: /etc/teredo/teredo.yaml]", result.stdout)

    def assertOneCleanLine(self, result: subprocess.CompletedProcess[str], line: str) -> None:
        self.assertEqual(result.returncode, 78, "EX_CONFIG, which systemd's RestartPreventExitStatus= names")
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertEqual((result.stdout + result.stderr).splitlines(), [line])

    def test_missing_config_exits_nonzero_with_one_line(self) -> None:
        result = twistd("-n", "--pidfile=", "teredo", "-c", "missing.yaml", cwd=self.cwd)
        self.assertOneCleanLine(result, "missing.yaml: cannot read: No such file or directory")

    def test_bad_config_names_file_line_and_key(self) -> None:
        with open(os.path.join(self.cwd, "bad.yaml"), "w") as f:
            f.write("roles:\n  server:\n    bind_address: 300.1.1.1\n")
        result = twistd("-n", "--pidfile=", "teredo", "-c", "bad.yaml", cwd=self.cwd)
        self.assertOneCleanLine(result, "bad.yaml:3: roles.server.bind_address: '300.1.1.1' is not an IPv4 address")

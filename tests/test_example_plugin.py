"""examples/role-plugin: a third party's role, found on sys.path, checked and run like ours.

Everything runs as subprocesses with the example folder on PYTHONPATH, as an operator would
install a plugin; the daemon gets a control socket in a temporary directory, never /run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "role-plugin"
BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{EXAMPLE}:{REPO}"}


class ExampleRolePluginTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir()

    def write(self, text: str) -> Path:
        path = self.dir / "teredo.yaml"
        path.write_text(text)
        return path

    def checkconf(self, path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BIN / "teredo-checkconf", str(path)], cwd="/", env=environment(),
                              capture_output=True, text=True, timeout=60, check=False)

    def test_plugins_on_the_path_include_the_example(self) -> None:
        script = "from teredo_appliance.plugin import role_names; print(' '.join(role_names()))"
        result = subprocess.run([sys.executable, "-c", script], cwd="/", env=environment(),
                                capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "server relay client example"), result.stderr)

    def test_checkconf_validates_the_example_section(self) -> None:
        result = self.checkconf(self.write("roles:\n  example:\n    message: hello\ncontrol: false\n"))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("example: message hello", result.stdout)

    def test_checkconf_reports_a_bad_key_with_file_and_line(self) -> None:
        path = self.write("roles:\n  example:\n    message: hello\n    mesage: typo\n")
        result = self.checkconf(path)
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"{path}:4: roles.example.mesage: unknown key; did you mean 'message'?", result.stderr)

    def test_checkconf_reports_the_missing_required_key(self) -> None:
        path = self.write("roles:\n  example: {}\n")
        result = self.checkconf(path)
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"{path}:2: roles.example.message: required key is missing", result.stderr)

    def test_without_the_plugin_the_key_is_unknown(self) -> None:
        path = self.write("roles:\n  example:\n    message: hello\n")
        result = subprocess.run([BIN / "teredo-checkconf", str(path)], cwd="/",
                                env={**os.environ, "PYTHONPATH": str(REPO)},
                                capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"{path}:2: roles.example: unknown key", result.stderr)

    def test_twistd_teredo_runs_the_example_role(self) -> None:
        short = Path(tempfile.mkdtemp(prefix="teredo-example-"))  # a socket path has at most 107 bytes
        self.addCleanup(shutil.rmtree, short, True)
        socket = short / "control.sock"
        path = self.write(f"roles:\n  example:\n    message: hello from a plugin\ncontrol:\n  socket: {socket}\n")
        log = self.dir / "twistd.log"
        with log.open("w") as out:
            daemon = subprocess.Popen([BIN / "twistd", "-n", "--pidfile=", "--logfile=-", "teredo", "-c", str(path)],
                                      cwd=self.dir, env=environment(), stdout=out, stderr=subprocess.STDOUT)
        self.addCleanup(daemon.wait, 30)
        self.addCleanup(daemon.terminate)
        deadline = time.monotonic() + START_TIMEOUT
        while not socket.exists() and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertTrue(socket.exists(), log.read_text())
        status = subprocess.run([BIN / "teredoctl", "--socket", str(socket), "status", "--json"], env=environment(),
                                capture_output=True, text=True, timeout=30, check=False)
        self.assertEqual(status.returncode, 0, status.stderr)
        report = json.loads(status.stdout)
        self.assertEqual(report["example"], {"role": "example", "running": True, "message": "hello from a plugin"})
        self.assertIn("example role: hello from a plugin", log.read_text())

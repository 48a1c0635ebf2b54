"""`twistd -u/-g teredo` in a real namespace: roles open as root, the daemon runs as nobody,
and a reload that would need root again is refused with one line, not a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.labsupport import lab_skip_reason, skip_unless_lab

NOBODY = 65534
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
TEREDOCTL = os.path.join(os.path.dirname(sys.executable), "teredoctl")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class PrivilegeDropInLab(TestCase):
    timeout = 90

    def setUp(self) -> None:
        skip_unless_lab(lab_skip_reason(need_miredo=False))
        tag = f"{os.getpid() % 100000}"
        self.ns, self.tun = f"tpriv{tag}", f"tpr{tag}"
        _ip("netns", "add", self.ns)
        self.addCleanup(subprocess.run, ["ip", "netns", "del", self.ns], capture_output=True, check=False)
        _ip("-n", self.ns, "link", "set", "lo", "up")
        _ip("-n", self.ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        for link in ("d0", "d1"):
            _ip("-n", self.ns, "link", "set", link, "up")
        for address in ("198.18.0.1", "198.18.0.2", "198.18.0.10"):
            _ip("-n", self.ns, "addr", "add", f"{address}/24", "dev", "d0")
        self.dir = Path(tempfile.mkdtemp(prefix="tpriv"))  # mkdtemp: not under a root-only trial dir
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.dir.chmod(0o755)
        self.config = self.dir / "teredo.yaml"
        self.log = self.dir / "twistd.log"
        self.control = self.dir / "run" / "control.sock"  # its directory is created by the daemon
        self.write(relay=self.tun, server=False)
        self.log.touch(mode=0o666)

    def write(self, relay: str, server: bool) -> None:
        text = "roles:\n"
        if server:
            text += "  server:\n    bind_address: 198.18.0.1\n"
        text += f"  relay:\n    interface: {relay}\n    bind_address: 198.18.0.10\n"
        text += f"control:\n  socket: {self.control}\n"
        self.config.write_text(text)
        self.config.chmod(0o644)

    def start(self) -> int:
        daemon = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, TWISTD, "-n", "--pidfile=", f"--logfile={self.log}",
             "-u", str(NOBODY), "-g", str(NOBODY), "teredo", "-c", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.addCleanup(self.stop, daemon)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if "Teredo relay on" in self.log.read_text():
                return daemon.pid
            self.assertIsNone(daemon.poll(), self.log.read_text())
            time.sleep(0.1)
        self.fail("the relay did not start:\n" + self.log.read_text())

    def stop(self, daemon: subprocess.Popen) -> None:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()

    def reload_and_wait(self, pid: int, count: int) -> str:
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            log = self.log.read_text()
            if log.count("reload of ") >= count:
                return log
            time.sleep(0.1)
        self.fail("no reload outcome was logged:\n" + self.log.read_text())

    def links(self) -> str:
        return subprocess.run(["ip", "-n", self.ns, "link"], capture_output=True, text=True, check=True).stdout

    def test_runs_as_nobody_and_refuses_what_needs_root(self) -> None:
        pid = self.start()
        with open(f"/proc/{pid}/status") as status:
            uid = next(line.split()[1:3] for line in status if line.startswith("Uid:"))
        self.assertEqual(uid, [str(NOBODY), str(NOBODY)])
        self.assertIn(self.tun, self.links())
        # The control socket was made as root, for the user the daemon runs as.
        for path, mode in ((self.control, 0o600), (self.control.parent, 0o755)):
            info = path.stat()
            self.assertEqual((info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)), (NOBODY, NOBODY, mode), path)
        ctl = subprocess.run([TEREDOCTL, "--socket", str(self.control), "status", "--json"],
                             capture_output=True, text=True, timeout=30, check=False)
        self.assertEqual(ctl.returncode, 0, ctl.stderr)
        self.assertTrue(json.loads(ctl.stdout)["relay"]["running"])

        self.write(relay=self.tun + "x", server=False)  # a changed relay needs a new TUN
        log = self.reload_and_wait(pid, 1)
        self.assertIn(f"relay: cannot create TUN '{self.tun}x' after privileges were dropped", log)
        self.write(relay=self.tun, server=True)  # a new server needs its raw socket
        log = self.reload_and_wait(pid, 2)
        self.assertIn("server: cannot open its raw IPv6 socket after privileges were dropped", log)
        self.assertNotIn("Traceback", log)
        self.assertIn(self.tun, self.links())  # the running relay was not touched

        self.write(relay=self.tun, server=False)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while self.tun in self.links() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertNotIn(self.tun, self.links())  # closing the TUN needs no privilege
        self.assertFalse(self.control.exists())  # nor removing the socket from the daemon's own directory

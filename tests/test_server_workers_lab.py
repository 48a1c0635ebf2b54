"""`roles.server.workers: 2` under `twistd -n teredo` in a namespace: both workers answer RSs,
a killed worker is restarted, teredoctl's status sums them, and stopping leaves no process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from benchmarks.qualification_load import LOAD_SOURCE, PRIMARY, SECONDARY, namespace, process_tree, stop
from benchmarks.rs_loadgen import udp_sockets
from teredo_appliance.teredoctl import ask
from tests.labsupport import lab_skip_reason, skip_unless_lab

CHECKOUT = Path(__file__).resolve().parent.parent
CONFIG = """\
roles:
  server:
    bind_address: {primary}
    bind_address2: {secondary}
    rs_rate: 1000000
    rs_burst: 1000000
    workers: 2
control:
  socket: {control}
"""


def _until(what: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.1)
    return what()


class ServerWorkersInNamespace(SynchronousTestCase):
    def test_two_workers_answer_restart_and_stop(self) -> None:
        skip_unless_lab(lab_skip_reason(need_miredo=False))
        rundir = Path(tempfile.mkdtemp(prefix="tqworkers-"))
        control = str(rundir / "control.sock")
        (rundir / "teredo.yaml").write_text(CONFIG.format(primary=PRIMARY, secondary=SECONDARY, control=control))
        with namespace() as ns:
            log = (rundir / "twistd.log").open("wb")
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, str(Path(sys.executable).parent / "twistd"), "--pidfile=", "-n",
                 "teredo", "-c", str(rundir / "teredo.yaml")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env=dict(os.environ, PYTHONPATH=str(CHECKOUT)),
            )
            try:
                self._exercise(proc, ns, control, rundir)
            finally:
                stop(proc)
                log.close()
            self.assertEqual([pid for pid in process_tree(proc.pid) if Path(f"/proc/{pid}").exists()], [],
                             "stopping the appliance left processes")

    def _status(self, control: str) -> dict[str, Any]:
        return ask(control, {"command": "status"})["result"]["server"]

    def _exercise(self, proc: subprocess.Popen, ns: str, control: str, rundir: Path) -> None:
        def running() -> list[int]:
            try:
                return self._status(control)["workers"]["pids"] if Path(control).exists() else []
            except Exception:
                return []

        pids = _until(lambda: len(running()) == 2 and running())
        self.assertEqual(len(pids or []), 2, (rundir / "twistd.log").read_text()[-3000:])
        self.assertEqual(sum(1 for (host, port) in udp_sockets(proc.pid) if port == 3544), 2)  # two addresses
        load = [sys.executable, str(CHECKOUT / "benchmarks" / "rs_loadgen.py"), PRIMARY, "--source", LOAD_SOURCE,
                "--ports", "64", "--warmup", "0.2", "--duration", "1"]
        result = json.loads(subprocess.run(["ip", "netns", "exec", ns, *load], capture_output=True, text=True,
                                           check=True).stdout)
        self.assertGreater(result["valid_ra"], 0)
        self.assertEqual(result["not_valid"], 0)
        # Each worker has its own SO_REUSEPORT sockets: both served a share of the 64 ports.
        time.sleep(1.0)  # a report interval or two
        status = self._status(control)
        answered = status["workers"]["rs_answered"]
        self.assertEqual(len(answered), 2)
        self.assertTrue(all(answered), answered)  # both workers answered a share
        self.assertEqual(status["counters"]["rs-answered"], sum(answered))  # the role reports the sum
        self.assertGreaterEqual(sum(answered), result["valid_ra"])
        os.kill(pids[0], signal.SIGKILL)
        again = _until(lambda: (lambda now: len(now) == 2 and pids[0] not in now and now)(running()))
        self.assertTrue(again, "the killed worker was not restarted")
        self.assertIn(pids[1], again)
        self.assertEqual(self._status(control)["workers"]["restarts"], 1)
        self.assertGreaterEqual(self._status(control)["counters"]["rs-answered"], result["valid_ra"])

"""The appliance in the lab: a multi-role box, and a live reload driven over the real SSH console.

The reload test administers the box as an operator would: it edits the daemon's yaml and
types `reload()` into the console with OpenSSH's `ssh`, or sends SIGHUP. Meanwhile it
watches what must not move: the server's UDP sockets (kernel socket inodes of the
daemon's descriptors, so a rebind shows even at the same address) and its answers to a
client qualifying every 50 ms from behind a NAT.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial import unittest

import teredo_appliance
from teredo_appliance.config import load_config
from teredo_appliance.console import RULE
from teredo_lab import checks, configs, topology
from teredo_lab.lab import OURS, Lab, LabError
from teredo_lab.scenario import Scenario, client_section, ours_missing, relay_section, server_section
from teredo_lab.sshconsole import ConsoleAccess, missing_tools, plain, status_blocks
from tests.labsupport import ScenarioChecks, lab_skip_reason, skip_unless_lab

ROOT = Path(teredo_appliance.__file__).resolve().parent.parent
PROBE_INTERVAL = 0.05  # seconds between the prober's Router Solicitations
MAX_GAP = 1.0  # seconds without a Router Advertisement that count as an interruption
GONE_TIMEOUT = 5.0  # seconds for a removed relay's TUN to disappear
LOG_TAIL = 6000

# Qualifies again and again (authenticated RS, a fresh nonce each) and reports how long
# it ever went without a matching RA. Runs until SIGTERM, then prints one JSON line.
PROBER = """
import json, os, select, signal, socket, sys, time
from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.nd import parse_router_advertisement, router_solicitation
from teredo_appliance.wire.teredo import AuthIndicator, parse_datagram

server, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 0))
rs = router_solicitation()
pending, sent, answered, bad = {}, 0, 0, 0
last = longest = None
next_send = time.monotonic()
while not stopping:
    now = time.monotonic()
    if now >= next_send:
        nonce = os.urandom(8)
        sock.sendto(AuthIndicator(nonce).pack() + rs, (server, port))
        pending[nonce] = now
        if len(pending) > 200:
            del pending[next(iter(pending))]
        sent, next_send = sent + 1, now + interval
    if not select.select([sock], [], [], max(0.0, next_send - time.monotonic()))[0]:
        continue
    data = sock.recv(2048)
    now = time.monotonic()
    try:
        datagram = parse_datagram(data)
        parse_router_advertisement(datagram.packet, datagram.header)
    except ParseError:
        bad += 1
        continue
    if datagram.auth is None or pending.pop(datagram.auth.nonce, None) is None:
        bad += 1
        continue
    answered += 1
    if last is None:
        print("ready", flush=True)
    else:
        longest = max(longest or 0.0, now - last)
    last = now
end = time.monotonic()
longest = None if last is None else max(longest or 0.0, end - last)
print(json.dumps({"sent": sent, "answered": answered, "bad": bad, "longest_gap": longest}), flush=True)
"""


def udp_socket_inodes(pid: int, addresses: tuple[str, ...], port: int) -> dict[str, int]:
    """`address:port` -> socket inode, for `pid`'s own UDP sockets bound there.

    The inode names the kernel socket: a service that closed and reopened its socket at
    the same address gets a new one.
    """
    owned = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            owned.add(int(target[len("socket:[") : -1]))
    found = {}
    for line in Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        hexaddr, hexport = fields[1].split(":")
        address = ".".join(str(b) for b in bytes.fromhex(hexaddr)[::-1])
        inode = int(fields[9])
        if inode in owned and int(hexport, 16) == port and address in addresses:
            found[f"{address}:{port}"] = inode
    return found


def summary_of(output: str) -> dict[str, list[str]]:
    """The reload summary the console printed, e.g. {'started': ['relay'], 'errors': [...]}."""
    found: dict[str, list[str]] = {}
    key = None
    for line in output.splitlines():
        match = re.match(r"^(started|stopped|restarted|unchanged|restored|errors)\s*: (.*)$", line)
        if match:
            key, value = match.groups()
            found[key] = [] if value == "-" else value.split(", ") if key != "errors" else [value]
        elif key == "errors" and line.startswith(" " * 12) and line.strip():
            found[key].append(line.strip())  # further errors, aligned under the first
        else:
            key = None
    if "started" not in found:
        raise AssertionError(f"no reload summary in the console output:\n{output}")
    return found


class ConsoleHelpersTests(unittest.SynchronousTestCase):
    """The lab's view of the console, without root: its yaml section and its output."""

    def test_manhole_section_is_a_valid_config(self) -> None:
        manhole = {"listen": "tcp:2222:interface=127.0.0.1", "authorized_keys": "/k", "host_key": "/h"}
        path = self.mktemp()
        Path(path).write_text(configs.teredo_yaml({"server": server_section()}, manhole=manhole))
        config = load_config(path)
        self.assertEqual(config.manhole.listen, "tcp:2222:interface=127.0.0.1")
        self.assertEqual((config.manhole.authorized_keys, config.manhole.host_key), ("/k", "/h"))
        self.assertIsNotNone(config.roles.server)

    def test_status_blocks_drop_the_echoed_input(self) -> None:
        output = (
            "\x1b[4h>>> Teredo appliance console; help() lists the commands.\r\n>>> s\x1b[1D>>> status()\r\n"
            f"{RULE}\r\nRole                     : server\r\n{RULE}\r\n>>> exit()\r\n>>> "
        )
        self.assertEqual(status_blocks(output), f"{RULE}\nRole                     : server\n{RULE}")
        self.assertNotIn("\x1b", plain(output))
        self.assertRaises(LabError, status_blocks, ">>> status()\r\nNameError\r\n")

    def test_summary_of_reads_every_error(self) -> None:
        output = ("started   : -\nstopped   : -\nrestarted : -\nunchanged : server, manhole\n"
                  "errors    : a.yaml:3: roles.relay.bind_address: bad\n            second error\n>>> ")
        summary = summary_of(output)
        self.assertEqual(summary["unchanged"], ["server", "manhole"])
        self.assertEqual(summary["started"], [])
        self.assertEqual(summary["errors"], ["a.yaml:3: roles.relay.bind_address: bad", "second error"])

    def test_keys_and_access_list(self) -> None:
        if missing_tools():
            raise unittest.SkipTest(missing_tools())
        access = ConsoleAccess(Lab(), directory=self.mktemp())
        access.create_keys()
        self.assertEqual(os.stat(access.authorized_keys).st_mode & 0o777, 0o600)
        listed = access.authorized_keys.read_text()
        self.assertTrue(listed.startswith("ssh-ed25519 "), listed)
        self.assertEqual(listed, Path(f"{access.identity}.pub").read_text())


class MultiRoleBox(ScenarioChecks, unittest.TestCase):
    """Server and relay of ours in ONE twistd process, clients of ours behind their NATs."""

    scenario = Scenario(server=OURS, relay=OURS, client=OURS, box=True)


class LiveReloadInLab(unittest.TestCase):
    """Add the relay to a running server over SSH, fail to break it, then SIGHUP it away."""

    timeout = 180

    def setUp(self) -> None:
        skip_unless_lab(lab_skip_reason(need_miredo=False) or ours_missing({"server", "relay", "client"})
                        or missing_tools())
        self.lab = Lab(topology.Options(box=True), rundir=os.path.abspath(self.mktemp()))
        self.addCleanup(self.lab.down)
        self.lab.up()
        self.console = ConsoleAccess(self.lab)
        self.console.create_keys()

    # -- helpers -------------------------------------------------------------------------

    def logs(self) -> str:
        return "\n".join(f"----- {name}: {self.lab.daemons[name].log}\n{text[-LOG_TAIL:]}"
                         for name, text in self.lab.logs().items())

    def assertWithLogs(self, condition: bool, message: str) -> None:
        if not condition:
            raise self.failureException(f"{message}\n\ndaemon logs (tails):\n{self.logs()}")

    def server_sockets(self) -> dict[str, int]:
        pid = self.lab.daemons["box"].process.pid
        return udp_socket_inodes(pid, (topology.SERVER_ADDRESS, topology.SERVER_ADDRESS2), topology.TEREDO_PORT)

    def relay_tun_exists(self) -> bool:
        return self.lab.run("box", ["ip", "link", "show", topology.RELAY_INTERFACE], check=False).returncode == 0

    def reload_over_ssh(self) -> tuple[str, dict[str, list[str]]]:
        output = self.console.run("box", "reload()\nexit()\n")
        return output, summary_of(output)

    def status_over_ssh(self) -> str:
        return status_blocks(self.console.run("box", "status()\nexit()\n"))

    def start_prober(self, node: str) -> subprocess.Popen[str]:
        """The qualification prober in `node`, once it has seen its first RA."""
        argv = ["env", f"PYTHONPATH={ROOT}", sys.executable, "-c", PROBER,
                topology.SERVER_ADDRESS, str(topology.TEREDO_PORT), str(PROBE_INTERVAL)]
        prober = self.enterContext(self.lab.background(node, argv))
        ready, _, _ = select.select([prober.stdout], [], [], checks.QUALIFY_TIMEOUT)
        line = prober.stdout.readline().strip() if ready else ""
        self.assertWithLogs(line == "ready", f"the prober got no RA from the server: {line!r}")
        return prober

    def stop_prober(self, prober: subprocess.Popen[str]) -> dict:
        prober.send_signal(signal.SIGTERM)  # the lab started it; it prints its tally and exits
        out, err = prober.communicate(timeout=10)
        self.assertEqual(prober.returncode, 0, err)
        return json.loads(out.strip().splitlines()[-1])

    # -- the scenario --------------------------------------------------------------------

    def test_add_relay_over_ssh_refuse_a_broken_file_remove_it_with_sighup(self) -> None:
        lab = self.lab
        box = lab.start_daemon("box", OURS, "box", {"server": server_section()}, manhole=self.console.manhole("box"))
        lab.wait_ready("box")
        self.console.wait("box")
        for client in ("client1", "client2"):
            lab.start_daemon(client, OURS, client, {"client": client_section()})
        network = topology.teredo_network(topology.SERVER_ADDRESS)
        for client in ("client1", "client2"):
            found = checks.wait_teredo_address(lab, client, network)
            self.assertWithLogs(found is not None, f"{client} did not qualify with the server alone")
        sockets = self.server_sockets()
        self.assertEqual(len(sockets), 2, sockets)

        # 1. Add the relay; reload over SSH while a client qualifies every 50 ms.
        prober = self.start_prober("client2")
        lab.write_config("box", {"server": server_section(), "relay": relay_section()})
        output, summary = self.reload_over_ssh()
        time.sleep(2 * MAX_GAP)  # the prober must see answers after the reload too
        probe = self.stop_prober(prober)
        self.assertWithLogs(summary["started"] == ["relay"] and "server" in summary["unchanged"]
                            and not summary["errors"] and not summary["restarted"], f"reload summary:\n{output}")
        self.assertEqual(self.server_sockets(), sockets, "the server's sockets were reopened")
        self.assertWithLogs(probe["longest_gap"] < MAX_GAP, f"qualification answers stopped: {probe}")
        self.assertGreater(probe["answered"], 0.8 * probe["sent"], probe)
        lab.wait_ready("box")  # relay TUN and socket, from the rewritten config
        results = checks.Checks(lab).run()
        self.assertWithLogs(all(r.ok for r in results), "\n".join(r.line() for r in results))

        # 2. A broken file: reload() shows file:line and changes nothing.
        path = lab.write_config("box", {"server": server_section(),
                                        "relay": {**relay_section(), "bind_address": "198.18.0.300"}})
        line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "198.18.0.300" in text)
        output, summary = self.reload_over_ssh()
        self.assertIn(f"{path}:{line}: roles.relay.bind_address:", output)
        self.assertEqual((summary["started"], summary["stopped"], summary["restarted"]), ([], [], []), output)
        self.assertTrue(self.relay_tun_exists())
        self.assertIn("Role                     : relay", self.status_over_ssh())
        self.assertEqual(self.server_sockets(), sockets)

        # 3. Remove the relay from the file; SIGHUP: the relay stops, the server stays.
        lab.write_config("box", {"server": server_section()})
        lab.signal_daemon("box", signal.SIGHUP)
        deadline = time.monotonic() + GONE_TIMEOUT
        while self.relay_tun_exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertWithLogs(not self.relay_tun_exists(), f"{topology.RELAY_INTERFACE} still exists after SIGHUP")
        self.assertTrue(lab.is_running("box"))
        self.assertIn("SIGHUP: reloading", lab.read_log("box"))
        self.assertEqual(self.server_sockets(), sockets)
        report = self.status_over_ssh()
        self.assertNotIn("Role                     : relay", report)
        self.assertIn("Role                     : server", report)
        self.assertIsNone(box.process.poll())

"""Our daemons' SSH console in the lab, reached with the real OpenSSH client.

The demo and the lab tests log in as an operator would: `ssh` with a key listed in the
daemon's authorized_keys, run inside the daemon's namespace (the console listens on that
namespace's loopback), the commands on stdin and `-tt` so the console gets a terminal.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from teredo_appliance.console import RULE
from teredo_lab.lab import POLL, READY_TIMEOUT, Lab, LabError

CONSOLE_HOST = "127.0.0.1"  # the manhole's default: loopback (of the daemon's namespace)
CONSOLE_PORT = 2222
TCP_LISTEN = "0A"  # /proc/net/tcp state column
ADMIN_USER = "admin"  # any name is accepted: the key is the credential
SSH_TIMEOUT = 30.0
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[cDEM78])")
SSH_TOOLS = ("ssh", "ssh-keygen")


def missing_tools() -> str | None:
    """Why the console cannot be reached here (no OpenSSH client), or None."""
    missing = [tool for tool in SSH_TOOLS if shutil.which(tool) is None]
    return f"missing OpenSSH client tools: {', '.join(missing)}" if missing else None


def plain(output: str) -> str:
    """Terminal output without escape sequences or carriage returns."""
    return ANSI.sub("", output).replace("\r", "")


def status_blocks(output: str) -> str:
    """The report `status()` printed, from its first rule to its last, without the echoed input."""
    lines = plain(output).splitlines()
    rules = [i for i, line in enumerate(lines) if line == RULE]
    if len(rules) < 2:
        raise LabError(f"no status report in the console output:\n{plain(output)}")
    return "\n".join(lines[rules[0] : rules[-1] + 1])


class ConsoleAccess:
    """One administrator key pair for every daemon of a lab, and the `ssh` that uses it."""

    def __init__(self, lab: Lab, directory: str | os.PathLike[str] | None = None) -> None:
        """Keys and known_hosts files go to `directory`, by default the lab's run directory."""
        if directory is None and lab.rundir is None:
            raise LabError("the lab is not up: it has no run directory for the console keys yet")
        self.lab = lab
        self.directory = Path(directory or Path(lab.rundir) / "console").absolute()
        self.identity = self.directory / "admin_ed25519"
        self.authorized_keys = self.directory / "authorized_keys"

    def create_keys(self) -> None:
        """An ed25519 key pair (no passphrase) and an authorized_keys file (mode 0600) listing it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "teredo-lab-admin", "-f", str(self.identity)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise LabError(f"ssh-keygen failed: {done.stderr.strip()}")
        fd = os.open(self.authorized_keys, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_public(self.identity).read_text())
        os.chmod(self.authorized_keys, 0o600)  # O_CREAT's mode does not apply to an existing file

    def manhole(self, name: str) -> dict[str, Any]:
        """The `manhole` section for daemon `name` (its own host key, created by the daemon)."""
        return {
            "listen": f"tcp:{CONSOLE_PORT}:interface={CONSOLE_HOST}",
            "authorized_keys": str(self.authorized_keys),
            "host_key": str(self._host_key(name)),
        }

    def wait(self, name: str, timeout: float = READY_TIMEOUT) -> None:
        """Block until daemon `name` accepts SSH connections (listens, host key written)."""
        daemon = self.lab.daemons[name]
        assert daemon.process is not None
        deadline = time.monotonic() + timeout
        while not (_listening(daemon.process.pid, CONSOLE_PORT) and _public(self._host_key(name)).exists()):
            if not self.lab.is_running(name):
                raise LabError(f"{name} exited before its console listened\n{self.lab.read_log(name)[-4000:]}")
            if time.monotonic() > deadline:
                raise LabError(f"{name}: no SSH console on {CONSOLE_HOST}:{CONSOLE_PORT} after {timeout:.0f} s")
            time.sleep(POLL)

    def ssh_argv(self, name: str, *, tty: bool = False) -> list[str]:
        """`ssh` for scripts: never prompts; `tty` forces a terminal even when stdin is a pipe."""
        options = {
            "BatchMode": "yes",
            "StrictHostKeyChecking": "yes",
            "UserKnownHostsFile": str(self.known_hosts(name)),
            "IdentitiesOnly": "yes",
            "IdentityAgent": "none",
            "LogLevel": "ERROR",
            "ConnectTimeout": "10",
        }
        argv = ["ssh", "-F", "/dev/null", *(["-tt"] if tty else [])]
        for key, value in options.items():
            argv += ["-o", f"{key}={value}"]
        return [*argv, *self._destination()]

    def command_line(self, name: str) -> str:
        """What an operator types on the host to log in to daemon `name`'s console."""
        namespace = self.lab.ns(self.lab.daemons[name].node)
        argv = ["ip", "netns", "exec", namespace, "ssh", "-o", f"UserKnownHostsFile={self.known_hosts(name)}",
                "-o", "IdentitiesOnly=yes", *self._destination()]
        return shlex.join(argv)

    def known_hosts(self, name: str) -> Path:
        """A known_hosts file trusting exactly the host key daemon `name` created."""
        path = self.directory / f"{name}.known_hosts"
        public = _public(self._host_key(name)).read_text().strip()
        path.write_text(f"[{CONSOLE_HOST}]:{CONSOLE_PORT} {public}\n")
        return path

    def run(self, name: str, commands: str, timeout: float = SSH_TIMEOUT) -> str:
        """Type `commands` (lines) into daemon `name`'s console; its output without escapes."""
        argv = self.ssh_argv(name, tty=True)
        done = self.lab.run(self.lab.daemons[name].node, argv, stdin=commands, timeout=timeout, check=False)
        if done.returncode != 0:
            raise LabError(f"ssh to {name}'s console failed ({done.returncode}): {done.stderr.strip()}"
                           f"\n{plain(done.stdout)}")
        return plain(done.stdout)

    def _destination(self) -> list[str]:
        return ["-i", str(self.identity), "-p", str(CONSOLE_PORT), f"{ADMIN_USER}@{CONSOLE_HOST}"]

    def _host_key(self, name: str) -> Path:
        return self.directory / f"{name}_host_ed25519_key"


def _public(key: Path) -> Path:
    """Where ssh-keygen and the console put the public half of a key."""
    return key.with_name(key.name + ".pub")


def _listening(pid: int, port: int) -> bool:
    """Something in `pid`'s network namespace listens on TCP/IPv4 `port`."""
    try:
        text = Path(f"/proc/{pid}/net/tcp").read_text()
    except OSError:
        return False
    for line in text.splitlines()[1:]:
        fields = line.split()
        if fields[3] == TCP_LISTEN and int(fields[1].split(":")[1], 16) == port:
            return True
    return False

"""The lab fixture: builds the topology, runs daemons in it, and removes all of it.

Tests use `Lab` directly (`with Lab(options) as lab: ...` or `lab.up()` plus
`addCleanup(lab.down)`); the CLI and the benchmark drive the same object. Every process
the lab starts is recorded in its state file before anything else happens, so
`teredo-lab down` can remove a lab whose owner was killed.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import teredo_appliance
from teredo_lab import anycast, configs, igd, state, topology
from teredo_lab.errors import LabError

MIREDO, OURS = "miredo", "ours"
IMPLS = (MIREDO, OURS)
READY_TIMEOUT = 10.0  # seconds for a server or relay to bind its sockets
COMMAND_TIMEOUT = 30.0
POLL = 0.05
LOG_TAIL = 20000  # characters of a log quoted in an error

CAPTURE = str(Path(__file__).with_name("capture.py"))

# Miredo writes /run/miredo.pid (and miredo-server.pid) under a lock, so a second instance
# on the host refuses to start. Each instance gets its own directory mounted over /run,
# holding its config and pid file: `ip netns exec` has already given the process a mount
# namespace of its own, so this mount never reaches the host.
PRIVATE_RUN = 'mount --bind "$0" /run && exec "$@"'


@dataclass
class Daemon:
    """One Teredo daemon in the lab: Miredo (one role) or ours (any roles, one twistd)."""

    name: str
    impl: str
    node: str
    roles: dict[str, dict[str, Any]]
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    manhole: dict[str, Any] | None = None  # ours only: the yaml's `manhole` section (SSH console)
    control: Path | None = None  # ours only: the control socket (teredoctl --socket)
    metrics: str | None = None  # ours only: the metrics endpoint, if any


class Lab:
    def __init__(
        self,
        options: topology.Options | None = None,
        *,
        prefix: str | None = None,
        rundir: str | os.PathLike[str] | None = None,
        wrap_ours: tuple[str, ...] = (),
    ) -> None:
        """`wrap_ours`: a command prefix for our daemons (see confine.py: run as the unit would)."""
        self.options = options or topology.Options()
        self.wrap_ours = wrap_ours
        self._wanted_prefix = prefix
        self._wanted_rundir = rundir
        self.prefix: str | None = None
        self.rundir: Path | None = None
        self.record: state.LabRecord | None = None
        self.daemons: dict[str, Daemon] = {}
        self._children: dict[int, subprocess.Popen[Any]] = {}
        self._logs: list[IO[bytes]] = []
        self._helpers = itertools.count(1)

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    def up(self) -> None:
        """Create the namespaces, links, addresses, routes, sysctls and NAT rules."""
        if self.prefix is not None:
            raise LabError(f"lab {self.prefix} is already up")
        self.prefix = state.reserve_prefix(self._wanted_prefix)
        self.rundir = Path(self._wanted_rundir or state.STATE_ROOT / self.prefix).absolute()
        self.rundir.mkdir(parents=True, exist_ok=True)
        plan = (anycast.build_plan if self.options.anycast else topology.build_plan)(self.prefix, self.options)
        self.record = state.LabRecord(self.prefix, str(self.rundir), namespaces=plan.namespaces)
        self.record.save()
        try:
            for ns in plan.namespaces:
                _run(["ip", "netns", "add", ns])
                # Before any link exists, so every interface inherits it: see topology.SETTLED_IPV6.
                _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *topology.SETTLED_IPV6])
            for ns, lines in plan.links.items():
                _run(["ip", "-n", ns, "-batch", "-"], stdin="\n".join(lines) + "\n")
            for ns, settings in plan.sysctls.items():
                if settings:
                    _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *settings])
            for ns, rules in plan.iptables.items():
                _run(["ip", "netns", "exec", ns, "iptables-restore"], stdin=rules)
            for ns, rules in plan.iptables_legacy.items():
                _run(["ip", "netns", "exec", ns, "iptables-legacy-restore"], stdin=rules)
            if self.options.upnp:
                igd.start(self)
        except BaseException:
            self.down()
            raise

    def down(self) -> list[str]:
        """Stop every daemon and helper, delete the namespaces; idempotent. Returns warnings."""
        if self.prefix is None:
            return []
        warnings = state.teardown(self.prefix, self.record)
        for child in self._children.values():
            _reap(child)
        for log in self._logs:
            log.close()
        self._children.clear()
        self._logs.clear()
        self.prefix = None
        return warnings

    # -- namespaces and commands -------------------------------------------------------

    def ns(self, node: str) -> str:
        """The namespace of a node (`inet`, `server`, `relay`, `v6host`, `nat1`, `client1`, ...)."""
        return topology.namespace_of(self._prefix(), node, self.options)

    def run(
        self,
        node: str,
        argv: list[str],
        *,
        timeout: float = COMMAND_TIMEOUT,
        stdin: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion in a node's namespace; LabError if it fails and `check`.

        Recorded like a daemon while it runs, so `down` after a crash stops it too.
        """
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        if stdin is not None:
            pipes["stdin"] = subprocess.PIPE
        proc = self._spawn(f"command-{next(self._helpers)}", node, argv, **pipes)
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise LabError(f"`{' '.join(argv)}` in {node} timed out after {timeout:.0f} s") from e
        finally:
            self._stop_process(proc)
        if check and proc.returncode != 0:
            raise LabError(f"`{' '.join(argv)}` in {node} failed ({proc.returncode}): {err.strip()}")
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    @contextmanager
    def background(self, node: str, argv: list[str], *, stdin: bool = False) -> Iterator[subprocess.Popen[str]]:
        """A recorded helper process (stdout/stderr, and stdin if asked, piped), stopped when the block ends."""
        name = f"helper-{next(self._helpers)}"
        pipes = {"stdin": subprocess.PIPE} if stdin else {}
        proc = self._spawn(name, node, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **pipes)
        try:
            yield proc
        finally:
            self._stop_process(proc)

    @contextmanager
    def capture(self, node: str) -> Iterator[Path]:
        """Capture every frame in a node's namespace while the block runs (see capture.py).

        Yields the capture file's path; the file is complete once the block has ended.
        """
        path = self._rundir() / f"capture-{node}-{next(self._helpers)}.jsonl"
        with self.background(node, [sys.executable, CAPTURE, str(path)]) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            started = select.select([proc.stdout], [], [], READY_TIMEOUT)[0]
            if not started or proc.stdout.readline().strip() != "ready":
                reason = proc.stderr.read().strip() if proc.poll() is not None else "no answer"
                raise LabError(f"capture in {node} did not start: {reason}")
            yield path

    def start_service(self, name: str, node: str, argv: list[str], *, env: dict[str, str] | None = None) -> Path:
        """Start a recorded long-lived helper (not a Teredo daemon) logging to `<name>.log`.

        It runs until `down`, which stops it by PID like a daemon. Returns the log's path.
        """
        path = self._rundir() / f"{name}.log"
        log = path.open("ab")
        self._logs.append(log)
        self._spawn(name, node, argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        return path

    def ipv6_addresses(self, node: str) -> list[tuple[str, ipaddress.IPv6Address]]:
        """(interface, address) of every usable IPv6 address in the node (not tentative)."""
        text = self.run(node, ["cat", "/proc/net/if_inet6"]).stdout
        found = []
        for line in text.splitlines():
            hexaddr, _index, _plen, _scope, flags, ifname = line.split()
            if int(flags, 16) & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
                continue
            found.append((ifname, ipaddress.IPv6Address(int(hexaddr, 16))))
        return found

    # -- daemons -----------------------------------------------------------------------

    def config_path(self, name: str) -> Path:
        """Where daemon `name`'s configuration lives (teredo.yaml for ours)."""
        return self.daemons[name].config

    def write_config(self, name: str, roles: dict[str, dict[str, Any]]) -> Path:
        """Rewrite a running daemon's configuration (for reload tests); returns its path."""
        daemon = self.daemons[name]
        daemon.roles = roles
        daemon.config.write_text(_config_text(daemon))
        return daemon.config

    def start_daemon(
        self,
        name: str,
        impl: str,
        node: str,
        roles: dict[str, dict[str, Any]],
        *,
        manhole: dict[str, Any] | None = None,
        metrics: str | None = None,
    ) -> Daemon:
        """Write the daemon's configuration and start it in the node's namespace.

        Miredo runs one role per process (`miredo` or `miredo-server`, in the foreground);
        ours runs every role given in one `twistd -n teredo -c <yaml>`, with the SSH
        console when `manhole` (the yaml section) is given, metrics on the `metrics`
        endpoint if given, and always a control socket of its own in the lab's state
        directory (never the host's /run/teredo); rewrites keep all of them.
        """
        if impl not in IMPLS:
            raise LabError(f"unknown implementation {impl!r} (use {' or '.join(IMPLS)})")
        if impl == MIREDO and len(roles) != 1:
            raise LabError(f"Miredo runs one role per process, not {sorted(roles)}")
        if impl == MIREDO and (manhole is not None or metrics is not None):
            raise LabError("Miredo has no SSH console and no metrics")
        if name in self.daemons and self.is_running(name):
            raise LabError(f"daemon {name} is already running")
        rundir = self._rundir()
        if impl == MIREDO:
            (role,) = roles
            program = configs.MIREDO_PROGRAMS[role]
            private = rundir / f"{name}.run"
            private.mkdir(exist_ok=True)
            config = private / f"{program}.conf"
            argv = ["sh", "-c", PRIVATE_RUN, str(private), program, "-f", "-c", f"/run/{config.name}"]
            env = None
        else:
            config = rundir / f"{name}.yaml"
            # --logfile=-: twistd logs to its stdout, the log file the lab opened, so a daemon
            # confined to an unprivileged user need not be able to open it.
            argv = [*self.wrap_ours, _twistd(), "-n", "--pidfile=", "--logfile=-", "teredo", "-c", str(config)]
            env = _ours_environment()
        control = self._control_directory() / f"{name}.ctl" if impl == OURS else None
        daemon = Daemon(name, impl, node, roles, config, rundir / f"{name}.log", manhole=manhole, control=control,
                        metrics=metrics)
        daemon.config.write_text(_config_text(daemon))
        log = daemon.log.open("ab")
        self._logs.append(log)
        log.write(f"=== teredo-lab: starting {name} ({impl}) in {self.ns(node)}: {' '.join(argv)}\n".encode())
        log.flush()
        daemon.process = self._spawn(name, node, argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.daemons[name] = daemon
        return daemon

    def wait_ready(self, name: str, timeout: float = READY_TIMEOUT) -> None:
        """Block until the daemon's server sockets are bound and its relay TUN exists.

        Clients have nothing to wait for here: their qualification is check 1.
        """
        daemon = self.daemons[name]
        deadline = time.monotonic() + timeout
        while True:
            missing = self._not_ready(daemon)
            if not missing:
                return
            if not self.is_running(name):
                raise LabError(f"{name} ({daemon.impl}) exited while starting\n{self._log_excerpt(name)}")
            if time.monotonic() > deadline:
                raise LabError(
                    f"{name} ({daemon.impl}) not ready after {timeout:.0f} s: {missing}\n{self._log_excerpt(name)}"
                )
            time.sleep(POLL)

    def is_running(self, name: str) -> bool:
        process = self._record().processes.get(name)
        return process is not None and state.is_running(process)

    def stop_daemon(self, name: str) -> None:
        """Stop a daemon (SIGTERM, then SIGKILL after a grace period); its log stays."""
        daemon = self.daemons[name]
        if daemon.process is not None:
            self._stop_process(daemon.process)

    def restart_daemon(self, name: str) -> Daemon:
        """Stop a daemon and start it again with its current configuration."""
        daemon = self.daemons[name]
        self.stop_daemon(name)
        return self.start_daemon(name, daemon.impl, daemon.node, daemon.roles, manhole=daemon.manhole,
                                 metrics=daemon.metrics)

    def signal_daemon(self, name: str, signum: int = signal.SIGHUP) -> None:
        """Send a signal to a running daemon (SIGHUP: reload)."""
        process = self._record().processes.get(name)
        if process is None or not state.is_running(process):
            raise LabError(f"daemon {name} is not running")
        os.kill(process.pid, signum)

    def read_log(self, name: str) -> str:
        return self.daemons[name].log.read_text(errors="replace")

    def logs(self) -> dict[str, str]:
        """Every daemon's log, by daemon name (stopped daemons included)."""
        return {name: self.read_log(name) for name in self.daemons if self.daemons[name].log.exists()}

    # -- internals ---------------------------------------------------------------------

    def _control_directory(self) -> Path:
        """Where our daemons' control sockets go: sticky and world-writable, as /tmp, so a
        daemon confined to an unprivileged user (wrap_ours) can create its socket there,
        as it can in the /run/teredo that systemd's RuntimeDirectory= hands the unit's user."""
        directory = self._record().directory / "control"
        if not directory.is_dir():
            directory.mkdir()
            directory.chmod(0o1777)
        return directory

    def _prefix(self) -> str:
        if self.prefix is None:
            raise LabError("the lab is not up")
        return self.prefix

    def _record(self) -> state.LabRecord:
        if self.record is None or self.prefix is None:
            raise LabError("the lab is not up")
        return self.record

    def _rundir(self) -> Path:
        self._record()
        assert self.rundir is not None
        return self.rundir

    def _spawn(self, name: str, node: str, argv: list[str], **popen: Any) -> subprocess.Popen[Any]:
        record = self._record()
        full = ["ip", "netns", "exec", self.ns(node), *argv]
        popen.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(full, start_new_session=True, **popen)
        found = state.process_start(proc.pid)
        start = found[0] if found else 0
        record.record_process(name, state.ProcessRecord(proc.pid, start, self.ns(node), full))
        self._children[proc.pid] = proc
        return proc

    def _stop_process(self, proc: subprocess.Popen[Any]) -> None:
        """Stop a process the lab started (if it still runs), reap it, drop its record."""
        record = self._record()
        for name, process in list(record.processes.items()):
            if process.pid == proc.pid:
                state.terminate(process)  # also the group of a leader that died unreaped
                record.record_process(name, None)
        _reap(proc)
        self._children.pop(proc.pid, None)

    def _not_ready(self, daemon: Daemon) -> str:
        """What the daemon has not done yet, or "" when it is ready."""
        assert daemon.process is not None
        sockets = _udp_sockets(daemon.process.pid)
        links = _links(daemon.process.pid)
        wanted = []
        for role, section in daemon.roles.items():
            if role == "server":
                for key in ("bind_address", "bind_address2"):
                    if key in section:
                        wanted.append((ipaddress.IPv4Address(section[key]), topology.TEREDO_PORT))
            elif role == "relay":
                address = ipaddress.IPv4Address(section.get("bind_address", "0.0.0.0"))
                wanted.append((address, int(section.get("bind_port", topology.TEREDO_PORT))))
                if section["interface"] not in links:
                    return f"no interface {section['interface']}"
        missing = [f"{a}:{p}" for a, p in wanted if (a, p) not in sockets]
        return f"UDP {', '.join(missing)} not bound" if missing else ""

    def _log_excerpt(self, name: str) -> str:
        text = self.read_log(name)
        return f"--- {self.daemons[name].log} ---\n{text[-LOG_TAIL:]}"


IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40


def _run(
    argv: list[str], *, stdin: str | None = None, timeout: float = COMMAND_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"`{' '.join(argv)}` timed out after {timeout:.0f} s") from e
    if check and done.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _reap(proc: subprocess.Popen[Any]) -> None:
    """Collect a child that teardown already signalled (or that ended by itself)."""
    try:
        proc.wait(timeout=state.TERM_GRACE)
    except subprocess.TimeoutExpired:
        # Still unreaped, the child pins its group ID: the whole group can be killed safely
        # (Miredo's unprivileged helper outlives a SIGKILLed parent).
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _udp_sockets(pid: int) -> set[tuple[ipaddress.IPv4Address, int]]:
    """Bound UDP/IPv4 sockets in the network namespace of `pid`."""
    try:
        text = Path(f"/proc/{pid}/net/udp").read_text()
    except OSError:
        return set()
    bound = set()
    for line in text.splitlines()[1:]:
        hexaddr, hexport = line.split()[1].split(":")
        address = ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(hexaddr), "little"))
        bound.add((address, int(hexport, 16)))
    return bound


def _links(pid: int) -> set[str]:
    try:
        text = Path(f"/proc/{pid}/net/dev").read_text()
    except OSError:
        return set()
    return {line.split(":")[0].strip() for line in text.splitlines()[2:]}


def _config_text(daemon: Daemon) -> str:
    if daemon.impl == OURS:
        control = None if daemon.control is None else str(daemon.control)
        return configs.teredo_yaml(daemon.roles, manhole=daemon.manhole, control=control, metrics=daemon.metrics)
    ((role, section),) = daemon.roles.items()
    return configs.miredo_conf(role, section)


def _twistd() -> str:
    """The twistd of the Python running the lab (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("twistd")
    found = str(beside) if beside.exists() else shutil.which("twistd")
    if not found:
        raise LabError("twistd not found beside the running Python or on PATH")
    return found


def _ours_environment() -> dict[str, str]:
    """twistd must import this very checkout (installed or not) and find its plugin."""
    root = str(Path(teredo_appliance.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env

"""`roles.server.workers: N`: N processes answer on the server ports, supervised by the appliance.

Privilege: the appliance binds every socket while it is still root (port 3544 and the
raw IPv6 socket need CAP_NET_BIND_SERVICE and CAP_NET_RAW): one pair of UDP sockets per
worker, all with SO_REUSEPORT, so the kernel spreads clients over the workers by
address and port, and one raw socket they share. Workers are started afterwards, as
the user twistd dropped to, and inherit their sockets as file descriptors 3, 4 and 5:
a worker can never bind or open anything the appliance did not give it. The appliance
keeps its copies open, so a restarted worker gets the very same sockets back and no
datagram queued meanwhile is lost to a closed socket.

Each worker runs the ordinary `ServerService` (batched, same verdicts) and writes its
counters as one JSON line to its stdout every `REPORT_INTERVAL`; the role's counters are
the sum over the workers (a dead worker's last figures are kept), so status, teredoctl
and the metrics see one server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from ipaddress import IPv4Address, IPv6Network
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import ProcessProtocol

from teredo_appliance.config_model import ServerConfig
from teredo_appliance.roles.base import RoleService
from teredo_appliance.roles.server import ServerService
from teredo_appliance.roles.server_machine import ANSWERED_RS
from teredo_appliance.stats import Counters
from teredo_appliance.wire.constants import TEREDO_PORT
from teredo_appliance.wire.nd import teredo_prefix64

REPORT_INTERVAL = 0.5  # seconds between a worker's counter reports
RESTART_DELAY, RESTART_DELAY_MAX = 1.0, 30.0  # backoff of a worker that keeps dying
STABLE_AFTER = 10.0  # a worker that lived this long starts the backoff afresh
STOP_TIMEOUT = 5.0  # then SIGKILL
MAX_REPORT_LINE = 1 << 16  # a worker's report is a few dozen counters; more is not a report
INHERITED_FDS = (3, 4, 5)  # primary UDP, secondary UDP, raw IPv6 in the worker


def server_role(config: ServerConfig, reactor: Any = None) -> RoleService:
    """The appliance's server role: in process for one worker, supervised processes for more."""
    if config.workers > 1:
        return ServerWorkers(config, reactor)
    return ServerService(config, reactor)


def reuse_port_socket(address: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to address:port in a SO_REUSEPORT group."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Worker(ProcessProtocol):
    """One worker's pipe: its counter reports in, its end reported to the supervisor."""

    def __init__(self, supervisor: ServerWorkers, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.counters = Counters()
        self.started = supervisor.reactor.seconds()
        self.ended: Deferred[None] = Deferred()
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        if len(self._buffer) > MAX_REPORT_LINE:
            self._buffer = b""
        for line in lines[-1:]:  # each report is complete: only the newest matters
            try:
                self.counters = Counters({str(k): int(v) for k, v in json.loads(line).items()})
            except (ValueError, AttributeError, TypeError):
                continue
            self.supervisor.refresh()

    def errReceived(self, data: bytes) -> None:
        self.supervisor.log.warn("server worker {index}: {text}", index=self.index,
                                 text=data.decode(errors="replace").rstrip()[:500])

    def processEnded(self, reason: Any) -> None:
        self.supervisor.worker_ended(self, reason.value)
        self.ended.callback(None)


class ServerWorkers(RoleService):
    """Supervises `config.workers` worker processes serving the two server ports."""

    role = "server"

    def __init__(self, config: ServerConfig, reactor: Any = None, *, port: int = TEREDO_PORT) -> None:
        super().__init__(config, reactor)
        self.port = port
        self.workers: dict[int, _Worker] = {}
        self.restarts = 0
        self._sockets: list[tuple[socket.socket, socket.socket]] = []
        self._raw: socket.socket | None = None
        self._retired = Counters()  # the last report of every worker that ended
        self._delays = [RESTART_DELAY] * config.workers
        self._pending: dict[int, Any] = {}
        prefix32 = config.prefix.network_address.packed[:4]
        self.prefix64 = str(IPv6Network((teredo_prefix64(int(config.bind_address), prefix32), 64)))

    def privilegedStartService(self) -> None:
        """Every socket, while still root; all or nothing."""
        try:
            self._raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
            for _ in range(self.config.workers):
                primary = reuse_port_socket(str(self.config.bind_address), self.port)
                try:
                    secondary = reuse_port_socket(str(self.config.bind_address2), self.port)
                except OSError:
                    primary.close()
                    raise
                self._sockets.append((primary, secondary))
        except OSError:
            self._close()
            raise
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        for index in range(self.config.workers):
            self._spawn(index)
        self.log.info("Teredo server on {primary}:{port} and {secondary}:{port}, prefix {prefix}, {n} workers",
                      primary=str(self.config.bind_address), secondary=str(self.config.bind_address2),
                      port=self.port, prefix=self.prefix64, n=self.config.workers)

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        primary, secondary = self._sockets[index]
        assert self._raw is not None
        settings = {"config": _config_json(self.config), "port": self.port}
        worker = _Worker(self, index)
        argv = [sys.executable, "-m", "teredo_appliance.roles.server_worker", json.dumps(settings)]
        fds = dict(zip(INHERITED_FDS, (primary.fileno(), secondary.fileno(), self._raw.fileno()), strict=True))
        self.reactor.spawnProcess(worker, sys.executable, argv, env=dict(os.environ),
                                  childFDs={0: "w", 1: "r", 2: "r", **fds})
        self.workers[index] = worker

    def worker_ended(self, worker: _Worker, reason: Any) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        self._retired += worker.counters
        self.refresh()
        if not self.running:
            return
        index = worker.index
        if self.reactor.seconds() - worker.started >= STABLE_AFTER:
            self._delays[index] = RESTART_DELAY
        delay = self._delays[index]
        self._delays[index] = min(delay * 2, RESTART_DELAY_MAX)
        self.restarts += 1
        self.log.warn("server worker {index} ended ({reason}); restarting in {delay:.0f} s",
                      index=index, reason=str(reason), delay=delay)
        self._pending[index] = self.reactor.callLater(delay, self._spawn, index)

    def refresh(self) -> None:
        """The role's counters: the sum over live and ended workers (metrics read them)."""
        total = Counters(self._retired)
        for worker in self.workers.values():
            total += worker.counters
        self.counters.clear()
        self.counters.update(total)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for call in self._pending.values():
            call.cancel()
        self._pending.clear()
        ending = []
        for worker in list(self.workers.values()):
            ending.append(worker.ended)
            _signal(worker, signal.SIGTERM)
            kill = self.reactor.callLater(STOP_TIMEOUT, _signal, worker, signal.SIGKILL)
            worker.ended.addBoth(lambda result, kill=kill: kill.cancel() if kill.active() else None)
        done = DeferredList(ending) if ending else succeed(None)
        return done.addCallback(lambda _: self._close())

    def _close(self) -> None:
        for pair in self._sockets:
            for sock in pair:
                sock.close()
        self._sockets = []
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def status(self) -> dict[str, Any]:
        report = super().status()
        report.update({
            "addresses": {
                "primary": f"{self.config.bind_address}:{self.port}",
                "secondary": f"{self.config.bind_address2}:{self.port}",
                "raw_ipv6": self._raw is not None,
            },
            "prefix": self.prefix64,
            "mtu": self.config.mtu,
            "workers": {"configured": self.config.workers, "running": len(self.workers), "restarts": self.restarts,
                        "pids": [w.transport.pid for _, w in sorted(self.workers.items())],
                        "rs_answered": [w.counters[ANSWERED_RS] for _, w in sorted(self.workers.items())]},
        })
        return report


def _signal(worker: _Worker, signum: int) -> None:
    with contextlib.suppress(Exception):  # already gone: its processEnded is on its way
        worker.transport.signalProcess(signum)


def _config_json(config: ServerConfig) -> dict[str, Any]:
    return {"bind_address": str(config.bind_address), "bind_address2": str(config.bind_address2),
            "prefix": str(config.prefix), "mtu": config.mtu, "rs_rate": config.rs_rate, "rs_burst": config.rs_burst}


def config_from_json(values: dict[str, Any]) -> ServerConfig:
    """The worker's side of `_config_json`."""
    return ServerConfig(IPv4Address(values["bind_address"]), IPv4Address(values["bind_address2"]),
                        IPv6Network(values["prefix"]), int(values["mtu"]), float(values["rs_rate"]),
                        int(values["rs_burst"]))

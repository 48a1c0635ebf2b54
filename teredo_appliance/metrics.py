"""Prometheus metrics (the `metrics` section): a collector over the roles' own counters.

Nothing is counted for Prometheus on the packet path: at each scrape the collector reads
what the roles already keep (stats.Counters, peer tables, the client's qualification),
so a scrape costs a walk over a few dozen counters and a packet costs nothing extra. The
text format comes from prometheus_client, served by its Twisted resource.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.twisted import MetricsResource
from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

import teredo_appliance
from teredo_appliance.config import ConfigError
from teredo_appliance.config_model import MetricsConfig
from teredo_appliance.endpoints import listen_at_once, listening_address
from teredo_appliance.plugin import role_names

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from teredo_appliance.view import ApplianceView

log = Logger()


class ApplianceCollector:
    """Reads the running appliance at scrape time; registered in a registry of its own."""

    def __init__(self, appliance: ApplianceView) -> None:
        self.appliance = appliance

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("teredo_up", "1 while the role runs, 0 if it is configured but not running",
                               labels=["role"])
        events = CounterMetricFamily("teredo_events", "Events counted by a role (packets handled, RAs sent, ...)",
                                     labels=["role", "event"])
        drops = CounterMetricFamily("teredo_drops", "Packets or events a role dropped, by reason",
                                    labels=["role", "reason"])
        traffic = CounterMetricFamily("teredo_bytes", "Bytes through a role's UDP socket(s) and TUN device",
                                      labels=["role", "direction"])
        peers = GaugeMetricFamily("teredo_peers", "Peers in a role's table", labels=["role"])
        qualified = GaugeMetricFamily("teredo_client_qualified", "1 while the client holds a Teredo address")
        nat = InfoMetricFamily("teredo_client_nat", "Client NAT type and special behaviour, as Windows shows them")
        announced = GaugeMetricFamily("teredo_announced", "1 while a role's anycast route or addresses are in "
                                      "the kernel for the routing daemon to announce", labels=["role"])
        drained = GaugeMetricFamily("teredo_drained", "1 once a role drained on request (grace over)",
                                    labels=["role"])
        configured = self.appliance.config.roles.enabled()
        running = self.appliance.roles()
        for name in role_names():
            service: Any = running.get(name)
            if service is None:
                if name in configured:
                    up.add_metric([name], 0)
                continue
            up.add_metric([name], 1 if service.running else 0)
            counters = getattr(service, "counters", None)  # a third party's role may count nothing
            if counters is not None:
                for event, count in counters.events().items():
                    events.add_metric([name, event], count)
                for reason, count in counters.drops().items():
                    drops.add_metric([name, reason], count)
                for direction, count in counters.traffic().items():
                    traffic.add_metric([name, direction], count)
            if hasattr(service, "peer_count"):
                peers.add_metric([name], service.peer_count())
            if name == "client":
                qualified.add_metric([], 1 if service.qualified else 0)
                nat.add_metric([], {key: _label(value) for key, value in service.nat_report().items()})
            announcer = getattr(service, "announcer", None)
            if announcer is not None and (name == "relay" or service.config.anycast):
                announced.add_metric([name], 1 if announcer.announced else 0)
                drained.add_metric([name], 1 if announcer.drained else 0)
        build = InfoMetricFamily("teredo_build", "The appliance's version")
        build.add_metric([], {"version": teredo_appliance.__version__})
        yield from (up, events, drops, traffic, peers, qualified, nat, announced, drained, build)


def _label(value: Any) -> str:
    """A status value as a label: yes / no / unknown for booleans, the text otherwise."""
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def make_registry(appliance: ApplianceView) -> CollectorRegistry:
    """The appliance's metrics plus this process's CPU, memory and descriptors."""
    registry = CollectorRegistry()
    registry.register(ApplianceCollector(appliance))
    ProcessCollector(registry=registry)
    return registry


class QuietSite(Site):
    """A scrape every few seconds is not worth an access-log line each."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class MetricsService(Service):
    """Serves /metrics on the `listen` endpoint."""

    def __init__(self, config: MetricsConfig, appliance: ApplianceView, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.registry = make_registry(appliance)
        try:
            self._endpoint = serverFromString(reactor, config.listen)
        except ValueError as error:
            raise ConfigError([f"metrics: listen {config.listen!r} is not an endpoint: {error}"]) from None
        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry=self.registry))
        self.site = QuietSite(root)
        self._port: Any = None
        self.setName("metrics")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._port = listen_at_once(self._endpoint, self.site, "metrics", self.config.listen)
        log.info("metrics: Prometheus scrape endpoint on {address}", address=self.address())

    def stopService(self) -> Any:
        super().stopService()
        port, self._port = self._port, None
        return None if port is None else port.stopListening()

    def address(self) -> str | None:
        return listening_address(self._port)

    def status(self) -> dict[str, Any]:
        return {"role": "metrics", "running": bool(self.running), "listen": self.config.listen,
                "address": self.address()}

"""The UPnP IGD client on Twisted: SSDP discovery, SOAP over HTTP, and a service that keeps
one UDP port mapping alive.

Why our own client and not the `miniupnpc` binding: the binding blocks (discovery alone
waits seconds) and would need a thread per call with timeouts bolted on, it is a compiled
dependency, and it treats an IGD with a reserved external address as "not connected",
which a NAT behind another NAT (and the lab) has. SSDP is one UDP datagram each way and
the control calls are three SOAP POSTs: on the reactor they never block it, and every call
has a timeout. The texts are built and parsed in upnp/messages.py, the timing is
upnp/lease.py.
"""

from __future__ import annotations

import socket
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from teredo_appliance.stats import Counters
from teredo_appliance.upnp import messages
from teredo_appliance.upnp.lease import LeaseSchedule
from teredo_appliance.upnp.messages import Service, UPnPError

TIMEOUT = 5.0  # seconds for each HTTP exchange
# Seconds an SSDP search waits for an answer: an IGD answers within MX seconds (UDA 1.1
# §1.3.2), on a LAN in milliseconds more. With no IGD, the client's qualification waits
# this long, no longer; an IGD that answers late is found by the next attempt.
SEARCH_WINDOW = messages.SSDP_MX + 0.5
MAX_BODY = 65536  # bytes of a description or SOAP answer; an IGD's are a few KiB
DEFAULT_LEASE = 3600  # seconds; 0 would mean "forever" and outlive us after a crash
DESCRIPTION = "teredo-appliance"
NO_IGD = "no-igd"  # the reason (and counter suffix) when no IGD answered the search

log = Logger()


class _Search(DatagramProtocol):
    """Sends one M-SEARCH and fires with the first usable LOCATION it hears."""

    noisy = False  # no "Starting protocol" line per search

    def __init__(self, target: tuple[str, int], found: defer.Deferred[str], counters: Counters) -> None:
        self.target = target
        self.found = found
        self.counters = counters

    def startProtocol(self) -> None:
        try:
            self.transport.write(messages.m_search(), self.target)
        except OSError as e:  # no multicast route (no default route, the LAN down): no IGD to find
            self.found.errback(UPnPError("no-route", f"SSDP: {e}"))

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self.found.called:
            return
        try:
            location = messages.search_location(data[:MAX_BODY])
        except UPnPError as e:
            self.counters.drop(e.reason)
            return
        self.found.callback(location)


class _Body(protocol.Protocol):
    """Collects a response body up to MAX_BODY bytes, then gives up on the connection."""

    def __init__(self, done: defer.Deferred[bytes]) -> None:
        self.done = done
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_BODY:
            self.transport.stopProducing()
            if not self.done.called:
                self.done.errback(UPnPError("http-body-too-large"))
            return
        self.parts.append(data)

    def connectionLost(self, reason: Any) -> None:
        if not self.done.called:
            self.done.callback(b"".join(self.parts))


def local_address_toward(host: str) -> str:
    """Our IPv4 address on the route to `host`: the NewInternalClient of a mapping.

    A connected UDP socket sends nothing; the kernel only picks the source address.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, messages.SSDP_PORT))
        except OSError as e:
            raise UPnPError("no-route", f"{host}: {e}") from e
        return str(probe.getsockname()[0])


class IGDClient:
    """Finds the IGD on the LAN and calls its port-mapping actions; every call has a timeout."""

    def __init__(
        self,
        reactor: Any,
        *,
        ssdp_target: tuple[str, int] = (messages.SSDP_ADDRESS, messages.SSDP_PORT),
        timeout: float = TIMEOUT,
        search_window: float = SEARCH_WINDOW,
        counters: Counters | None = None,
    ) -> None:
        self.reactor = reactor
        self.ssdp_target = ssdp_target
        self.timeout = timeout
        self.search_window = search_window
        self.counters = counters if counters is not None else Counters()
        self.service: Service | None = None
        self.internal_client: str | None = None
        self._agent = Agent(reactor)

    @defer.inlineCallbacks
    def discover(self) -> Any:
        """Find the IGD (SSDP), read its description; fires with its Service, or UPnPError."""
        found: defer.Deferred[str] = defer.Deferred()
        port = self.reactor.listenUDP(0, _Search(self.ssdp_target, found, self.counters))
        found.addTimeout(self.search_window, self.reactor, onTimeoutCancel=lambda *_: _raise(UPnPError(NO_IGD)))
        try:
            location = yield found
        finally:
            yield port.stopListening()
        description = yield self._request(b"GET", location)
        self.service = messages.connection_service(description, location)
        self.internal_client = local_address_toward(_host(self.service.control_url))
        self.counters["upnp.discovered"] += 1
        return self.service

    @defer.inlineCallbacks
    def external_address(self) -> Any:
        answer = yield self._action("GetExternalIPAddress", [])
        return messages.external_address(answer)

    def add_mapping(self, internal_port: int, external_port: int, lease: int) -> defer.Deferred[dict[str, str]]:
        """Map UDP external_port on the IGD to our internal_port for `lease` seconds (or renew)."""
        assert self.internal_client is not None, "discover() first"
        arguments = messages.add_port_mapping(self.internal_client, internal_port, external_port, lease, DESCRIPTION)
        return self._action("AddPortMapping", arguments)

    def delete_mapping(self, external_port: int) -> defer.Deferred[dict[str, str]]:
        return self._action("DeletePortMapping", messages.delete_port_mapping(external_port))

    @defer.inlineCallbacks
    def _action(self, action: str, arguments: list[tuple[str, str]]) -> Any:
        if self.service is None:
            raise UPnPError("no-igd", "discover() first")
        body, soap_action = messages.soap_request(self.service.service_type, action, arguments)
        headers = {b"Content-Type": [b'text/xml; charset="utf-8"'], b"SOAPAction": [soap_action.encode()]}
        document = yield self._request(b"POST", self.service.control_url, body, headers, accept_fault=True)
        return messages.soap_response(document, action)

    @defer.inlineCallbacks
    def _request(
        self,
        method: bytes,
        url: str,
        body: bytes | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
        *,
        accept_fault: bool = False,
    ) -> Any:
        """One HTTP exchange with a timeout; the body (500 allowed for SOAP faults)."""
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        pending = self._agent.request(method, url.encode(), Headers(headers or {}), producer)
        pending.addTimeout(self.timeout, self.reactor, onTimeoutCancel=lambda *_: _raise(UPnPError("timeout", url)))
        try:
            response: IResponse = yield pending
        except UPnPError:
            raise
        except Exception as e:  # refused, unreachable, malformed HTTP: the IGD is not usable
            raise UPnPError("http-failed", f"{url}: {e}") from e
        if response.code != 200 and not (accept_fault and response.code == 500):
            response.deliverBody(_Body(defer.Deferred()))  # read and thrown away
            raise UPnPError("http-status", f"{url}: {response.code}")
        done: defer.Deferred[bytes] = defer.Deferred()
        done.addTimeout(self.timeout, self.reactor, onTimeoutCancel=lambda *_: _raise(UPnPError("timeout", url)))
        response.deliverBody(_Body(done))
        return (yield done)


def _raise(error: Exception) -> Any:
    raise error


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""


class PortMapper(service.Service):
    """Keeps one UDP mapping on the LAN's IGD: map at start, renew at half the lease, delete at stop.

    Failures are counted and retried with back-off (upnp/lease.py); they never stop the
    service. `status()` says what the IGD gave, for the client's status.
    """

    def __init__(
        self,
        client: IGDClient,
        internal_port: int,
        external_port: int | None = None,
        lease: int = DEFAULT_LEASE,
        clock: IReactorTime | None = None,
    ) -> None:
        self.client = client
        self.internal_port = internal_port
        self.external_port = external_port or internal_port
        self.clock = clock or client.reactor
        self.schedule = LeaseSchedule(float(lease))
        self.lease = lease
        self.external: str | None = None
        self.last_error: str | None = None
        self.last_reason: str | None = None
        self.counters = client.counters
        self._timer: Any = None
        self._attempt: defer.Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._attempt = self._map()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return self._release()

    @defer.inlineCallbacks
    def _release(self) -> Any:
        if self._attempt is not None and not self._attempt.called:
            yield self._attempt
        if not self.schedule.is_mapped(self.clock.seconds()):
            return
        try:
            yield self.client.delete_mapping(self.external_port)
        except UPnPError as e:
            self._failed("delete", e)
        else:
            self.counters["upnp.deleted"] += 1
        self.schedule.released()

    @defer.inlineCallbacks
    def _map(self) -> Any:
        try:
            if self.client.service is None:
                yield self.client.discover()
                self.external = str((yield self.client.external_address()))
            yield self.client.add_mapping(self.internal_port, self.external_port, self.lease)
        except Exception as e:  # a UPnPError, or a bug: either way counted and retried
            error = e if isinstance(e, UPnPError) else UPnPError("bug", repr(e))
            self._failed("map", error)
            self.schedule.failed(self.clock.seconds())
            self.client.service = None  # an IGD that restarted listens on a new port: find it again
        else:
            renewal = self.schedule.expires_at is not None
            self.counters["upnp.renewed" if renewal else "upnp.mapped"] += 1
            self.last_error = self.last_reason = None
            self.schedule.mapped(self.clock.seconds())
        if self.running:
            delay = max(0.0, self.schedule.next_at - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._tick)

    def settled(self) -> defer.Deferred[None]:
        """Fires once the attempt under way (if any) has finished."""
        attempt = self._attempt
        if attempt is None or attempt.called:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()
        attempt.addBoth(lambda result: (done.callback(None), result)[1])
        return done

    def _tick(self) -> None:
        self._timer = None
        self._attempt = self._map()

    def _failed(self, what: str, error: UPnPError) -> None:
        """Counted every time; logged as a warning, except a LAN without an IGD (the usual
        case, extensions.upnp being on by default): said once at info, then only counted."""
        self.counters[f"upnp.error.{error.reason}"] += 1
        said_before, self.last_reason = self.last_reason == NO_IGD, error.reason
        self.last_error = str(error)
        if error.reason != NO_IGD:
            log.warn("UPnP {what} failed: {error}", what=what, error=str(error))
        elif not said_before:
            log.info("no UPnP IGD answered on the LAN: the client goes on without a port mapping "
                     "and searches again from time to time")

    def status(self) -> dict[str, Any]:
        now = self.clock.seconds()
        mapped = self.schedule.is_mapped(now)
        return {
            "igd": self.client.service.control_url if self.client.service else None,
            "mapped": mapped,
            "external_address": self.external,
            "external_port": self.external_port if mapped else None,
            "internal_port": self.internal_port,
            "lease_left": round(self.schedule.expires_at - now) if mapped and self.schedule.expires_at else 0,
            "last_error": self.last_error,
        }

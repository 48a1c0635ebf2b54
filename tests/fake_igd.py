"""An in-process UPnP IGD on loopback for the UPnP client's unit tests.

A real SSDP responder (UDP) and a real HTTP server answering the description and the
WANIPConnection:2 actions, recording every action; it can refuse mappings with a
UPnPError code or never answer (for timeouts). It keeps a mapping table like an IGD does.
"""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.web import resource, server

SERVICE = "urn:schemas-upnp-org:service:WANIPConnection:2"

DESCRIPTION = f"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
 <device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:2</deviceType>
  <deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:2</deviceType>
   <deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:2</deviceType>
    <serviceList>
     <service><serviceType>urn:schemas-upnp-org:service:WANIPv6FirewallControl:1</serviceType>
      <controlURL>/ctl/IP6FCtl</controlURL></service>
     <service><serviceType>{SERVICE}</serviceType><controlURL>/ctl/IPConn</controlURL></service>
    </serviceList>
   </device></deviceList>
  </device></deviceList>
 </device>
</root>
""".encode()

FAULT = """<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>
<faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>
<UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>{code}</errorCode>
<errorDescription>{text}</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"""

RESPONSE = """<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
<u:{action}Response xmlns:u="{service}">{args}</u:{action}Response></s:Body></s:Envelope>"""


class _Ssdp(DatagramProtocol):
    def __init__(self, igd: FakeIGD) -> None:
        self.igd = igd

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.igd.searches.append(data)
        if self.igd.answer_search:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n"
                b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
                b"LOCATION: " + self.igd.url("/rootDesc.xml").encode() + b"\r\n\r\n",
                addr,
            )


class _Root(resource.Resource):
    isLeaf = True

    def __init__(self, igd: FakeIGD) -> None:
        super().__init__()
        self.igd = igd

    def render_GET(self, request: server.Request) -> bytes:
        return DESCRIPTION

    def render_POST(self, request: server.Request) -> Any:
        header = (request.getHeader("soapaction") or "").strip('"')
        _, _, action = header.partition("#")
        body = ElementTree.fromstring(request.content.read())
        args = {el.tag.rpartition("}")[2]: el.text or "" for el in body.iter() if not el.tag.startswith("{")}
        self.igd.actions.append((action, args))
        self.igd.action_seen(action)
        if self.igd.hang:
            return server.NOT_DONE_YET
        request.setHeader("content-type", 'text/xml; charset="utf-8"')
        if action in self.igd.refuse:
            request.setResponseCode(500)
            code = self.igd.refuse[action]
            return FAULT.format(code=code, text="ConflictInMappingEntry").encode()
        out = ""
        if action == "GetExternalIPAddress":
            out = f"<NewExternalIPAddress>{self.igd.external}</NewExternalIPAddress>"
        elif action == "AddPortMapping":
            self.igd.mappings[int(args["NewExternalPort"])] = (args["NewInternalClient"], int(args["NewInternalPort"]))
        elif action == "DeletePortMapping":
            self.igd.mappings.pop(int(args["NewExternalPort"]), None)
        return RESPONSE.format(action=action, service=SERVICE, args=out).encode()


class FakeIGD:
    """Start with `start()` (returns the SSDP address to search), stop with `stop()`."""

    def __init__(self, external: str = "198.18.0.200") -> None:
        self.external = external
        self.answer_search = True
        self.hang = False
        self.refuse: dict[str, int] = {}
        self.searches: list[bytes] = []
        self.actions: list[tuple[str, dict[str, str]]] = []
        self.mappings: dict[int, tuple[str, int]] = {}
        self._waiters: dict[str, list[defer.Deferred[None]]] = {}

    def start(self) -> tuple[str, int]:
        self.http = reactor.listenTCP(0, server.Site(_Root(self)), interface="127.0.0.1")
        self.udp = reactor.listenUDP(0, _Ssdp(self), interface="127.0.0.1")
        return ("127.0.0.1", self.udp.getHost().port)

    def stop(self) -> defer.Deferred[Any]:
        return defer.gatherResults([defer.maybeDeferred(self.http.stopListening), self.udp.stopListening()])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http.getHost().port}{path}"

    def wait_for(self, action: str) -> defer.Deferred[None]:
        """Fires when the IGD next receives `action`."""
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.setdefault(action, []).append(waiter)
        return waiter

    def action_seen(self, action: str) -> None:
        for waiter in self._waiters.pop(action, []):
            reactor.callLater(0, waiter.callback, None)

    def count(self, action: str) -> int:
        return sum(1 for name, _ in self.actions if name == action)

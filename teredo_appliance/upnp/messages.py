"""SSDP search and the IGD's SOAP calls as text: built and parsed here, sent by upnp/client.py.

UPnP Device Architecture 1.1 §1.3.2 (M-SEARCH and its unicast answer), §2.3 (the device
description), §3.2 (SOAP actions and the UPnPError fault); the actions and their argument
order come from the WANIPConnection:1 and :2 service templates. The IGD is a device on the
LAN we do not control: every parse raises UPnPError with a stable `reason`, never anything
else, and documents with a DOCTYPE (entity expansion) are refused.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit
from xml.etree import ElementTree

SSDP_ADDRESS = "239.255.255.250"  # UDA 1.1 §1.1.2
SSDP_PORT = 1900
# Seconds a device may wait before answering (UDA 1.1 §1.3.2: 1 to 5). The least, since a
# client with no IGD on its LAN waits this long (and a little) before qualifying.
SSDP_MX = 1
IGD_DEVICE = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
# Services that can map a port, the newer first (a :2 IGD also answers the :1 search).
CONNECTION_SERVICES = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
SOAP_ENVELOPE = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ENCODING = "http://schemas.xmlsoap.org/soap/encoding/"
CONTROL_NAMESPACE = "urn:schemas-upnp-org:control-1-0"
UDP = "UDP"


class UPnPError(Exception):
    """An IGD that could not be found, reached or understood, or that refused: `reason` names it.

    `code` is the IGD's UPnPError code when it sent one (718: the mapping conflicts).
    """

    def __init__(self, reason: str, detail: str = "", code: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.code = code


class Service(NamedTuple):
    """Where to send SOAP actions: the control URL and the service type they name."""

    control_url: str
    service_type: str


def m_search(target: str = IGD_DEVICE, mx: int = SSDP_MX) -> bytes:
    """An SSDP M-SEARCH request for `target` (UDA 1.1 §1.3.2)."""
    return (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {SSDP_ADDRESS}:{SSDP_PORT}\r\n"
        'MAN: "ssdp:discover"\r\n'
        f"MX: {mx}\r\n"
        f"ST: {target}\r\n"
        "\r\n"
    ).encode()


def search_location(datagram: bytes) -> str:
    """The LOCATION (description URL) of an SSDP search answer; UPnPError if there is none."""
    try:
        lines = datagram.decode("ascii").split("\r\n")
    except UnicodeDecodeError as e:
        raise UPnPError("ssdp-not-ascii") from e
    if not lines[0].startswith("HTTP/1.1 200"):
        raise UPnPError("ssdp-not-ok", lines[0][:80])
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "location":
            location = value.strip()
            if urlsplit(location).scheme != "http":
                raise UPnPError("ssdp-bad-location", location[:200])
            return location
    raise UPnPError("ssdp-no-location")


def _xml(document: bytes, what: str) -> ElementTree.Element:
    if b"<!DOCTYPE" in document or b"<!ENTITY" in document:
        raise UPnPError(f"{what}-doctype")
    try:
        return ElementTree.fromstring(document)
    except ElementTree.ParseError as e:
        raise UPnPError(f"{what}-not-xml", str(e)) from e


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def connection_service(description: bytes, location: str) -> Service:
    """The port-mapping service of an IGD's device description (UDA 1.1 §2.3)."""
    root = _xml(description, "description")
    found: dict[str, str] = {}
    base = location
    for element in root.iter():
        if _local(element.tag) == "URLBase" and element.text:
            base = element.text.strip()
        if _local(element.tag) != "service":
            continue
        fields = {_local(child.tag): (child.text or "").strip() for child in element}
        if fields.get("serviceType") in CONNECTION_SERVICES and fields.get("controlURL"):
            found.setdefault(fields["serviceType"], fields["controlURL"])
    for service_type in CONNECTION_SERVICES:
        if service_type in found:
            url = urljoin(base, found[service_type])
            if urlsplit(url).scheme != "http":
                raise UPnPError("description-bad-control-url", url[:200])
            return Service(url, service_type)
    raise UPnPError("description-no-wan-connection")


def soap_request(service_type: str, action: str, arguments: list[tuple[str, str]]) -> tuple[bytes, str]:
    """The SOAP body of an action and its SOAPACTION header value (UDA 1.1 §3.2.1)."""
    args = "".join(f"<{name}>{_escape(value)}</{name}>" for name, value in arguments)
    body = (
        '<?xml version="1.0"?>\r\n'
        f'<s:Envelope xmlns:s="{SOAP_ENVELOPE}" s:encodingStyle="{SOAP_ENCODING}">'
        f'<s:Body><u:{action} xmlns:u="{service_type}">{args}</u:{action}></s:Body></s:Envelope>\r\n'
    )
    return body.encode(), f'"{service_type}#{action}"'


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def soap_response(document: bytes, action: str) -> dict[str, str]:
    """The out-arguments of `action`'s response, or UPnPError (with the IGD's code on a fault)."""
    root = _xml(document, "soap")
    for element in root.iter():
        name = _local(element.tag)
        if name == f"{action}Response":
            return {_local(child.tag): (child.text or "").strip() for child in element}
        if name == "UPnPError":
            fields = {_local(child.tag): (child.text or "").strip() for child in element}
            try:
                code = int(fields.get("errorCode", ""))
            except ValueError:
                code = None
            raise UPnPError("igd-refused", f"{action}: {code} {fields.get('errorDescription', '')}".strip(), code)
    raise UPnPError("soap-no-response", action)


def add_port_mapping(
    internal_client: str, internal_port: int, external_port: int, lease: int, description: str
) -> list[tuple[str, str]]:
    """AddPortMapping's in-arguments, in the template's order, for one UDP mapping."""
    return [
        ("NewRemoteHost", ""),
        ("NewExternalPort", str(external_port)),
        ("NewProtocol", UDP),
        ("NewInternalPort", str(internal_port)),
        ("NewInternalClient", internal_client),
        ("NewEnabled", "1"),
        ("NewPortMappingDescription", description),
        ("NewLeaseDuration", str(lease)),
    ]


def delete_port_mapping(external_port: int) -> list[tuple[str, str]]:
    return [("NewRemoteHost", ""), ("NewExternalPort", str(external_port)), ("NewProtocol", UDP)]


def external_address(arguments: dict[str, str]) -> ipaddress.IPv4Address:
    """GetExternalIPAddress's answer. A reserved address is returned, not refused: a NAT
    behind another NAT (or the lab, in 198.18/15) still maps ports that work."""
    try:
        return ipaddress.IPv4Address(arguments.get("NewExternalIPAddress", ""))
    except ValueError as e:
        raise UPnPError("igd-bad-external-address", str(e)) from e

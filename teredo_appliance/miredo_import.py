"""Turn a miredo.conf or miredo-server.conf into the equivalent teredo.yaml.

Miredo's files are `Directive value` lines with `#` comments, directive names matched
without regard to case. RelayType picks the role of miredo.conf (client unless relay,
cone or restricted); ServerBindAddress makes a miredo-server.conf a server. Values are
copied as written, never resolved (a hostname ServerAddress stays a hostname) and then
checked by our own validator, so what comes out is a file `teredo-checkconf` accepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

import yaml

CLIENT_TYPES = ("client", "autoclient")
RELAY_TYPES = ("relay", "cone", "restricted")

# Miredo directive (lower case) -> our key, per role.
SERVER_KEYS = {"serverbindaddress": "bind_address", "serverbindaddress2": "bind_address2",
               "prefix": "prefix", "interfacemtu": "mtu"}
RELAY_KEYS = {"interfacename": "interface", "bindaddress": "bind_address", "bindport": "bind_port",
              "prefix": "prefix", "interfacemtu": "mtu"}
CLIENT_KEYS = {"serveraddress": "server_address", "serveraddress2": "server_address2",
               "interfacename": "interface", "bindaddress": "bind_address", "bindport": "bind_port",
               "interfacemtu": "mtu", "refreshinterval": "refresh_interval"}
# Miredo directives with no counterpart here, and why.
WITHOUT_EQUIVALENT = {
    "syslogfacility": "no equivalent: the daemon logs through twistd (journald under systemd)",
    "relaytype": "",  # consumed: it chooses the role
}
MIREDO_PREFIX_LENGTH = 32  # Miredo's Prefix is written as an address; RFC 4380 §2.6 makes it a /32
_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)(?:\s+(.*?))?\s*$")


@dataclass
class Conversion:
    """The YAML document, and one `FILE:LINE: Directive: message` per line not carried over."""

    document: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def yaml_text(self, source: str) -> str:
        header = f"# teredo.yaml converted from {source} by teredo-checkconf --from-miredo\n"
        return header + yaml.safe_dump(self.document, sort_keys=False, default_flow_style=False)


def directives(text: str) -> list[tuple[int, str, str]]:
    """(line number, directive as written, value) of each non-comment line; bad lines have name ''."""
    found = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0]
        if not line.strip():
            continue
        match = _LINE.match(line)
        found.append((number, match.group(1), match.group(2) or "") if match else (number, "", line.strip()))
    return found


def looks_like_miredo(text: str) -> bool:
    """Whether a file (one that failed as YAML) is a Miredo configuration: a hint is due."""
    known = {*SERVER_KEYS, *RELAY_KEYS, *CLIENT_KEYS, *WITHOUT_EQUIVALENT}
    return any(name.lower() in known for _, name, value in directives(text) if value)


def _is_ipv4(value: str) -> bool:
    try:
        IPv4Address(value)
    except ValueError:
        return False
    return True


def _value(key: str, value: str) -> Any:
    if key in ("bind_port", "mtu") and value.isdigit():
        return int(value)
    if key == "refresh_interval" and re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value) if "." in value else int(value)
    if key == "prefix" and "/" not in value:
        return f"{value}/{MIREDO_PREFIX_LENGTH}"
    return value


def convert(text: str, filename: str) -> Conversion:
    """The teredo.yaml equivalent of a Miredo file (not yet validated: see checkconf)."""
    lines = directives(text)
    names = {name.lower() for _, name, _ in lines}
    notes: list[str] = []
    role, keys = "client", CLIENT_KEYS
    for number, name, value in lines:
        if name.lower() != "relaytype":
            continue
        kind = value.lower()
        if kind in RELAY_TYPES:
            role, keys = "relay", RELAY_KEYS
            if kind == "cone":
                notes.append(f"{filename}:{number}: RelayType: cone: this relay also sends direct bubbles"
                             " (as restricted), which a cone relay may skip; harmless")
        elif kind not in CLIENT_TYPES:
            notes.append(f"{filename}:{number}: RelayType: {value!r} is not one of "
                         f"{', '.join(CLIENT_TYPES + RELAY_TYPES)}; converted as a client")
    if names & {"serverbindaddress", "serverbindaddress2"}:
        role, keys = "server", SERVER_KEYS
    section: dict[str, Any] = {}
    for number, name, value in lines:
        lower = name.lower()
        if not name:
            notes.append(f"{filename}:{number}: cannot read {value!r} (expected `Directive value`); ignored")
        elif lower == "serveraddress2" and not _is_ipv4(value):
            notes.append(f"{filename}:{number}: {name}: {value!r}: the secondary address must be an IPv4"
                         " address here (Miredo ignores it too); left out: primary + 1")
        elif lower in keys:
            section[keys[lower]] = _value(keys[lower], value)
        elif lower in WITHOUT_EQUIVALENT:
            if WITHOUT_EQUIVALENT[lower]:
                notes.append(f"{filename}:{number}: {name}: {WITHOUT_EQUIVALENT[lower]}; ignored")
        elif lower in {*SERVER_KEYS, *RELAY_KEYS, *CLIENT_KEYS}:
            notes.append(f"{filename}:{number}: {name}: does not apply to a {role}; ignored")
        else:
            notes.append(f"{filename}:{number}: {name}: unknown Miredo directive; ignored")
    return Conversion({"roles": {role: section}}, notes)

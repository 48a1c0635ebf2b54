"""Immutable, validated configuration values: what every other module reads.

The YAML loader in `config.py` builds these; roles and the appliance only ever see
these frozen dataclasses, so two loads of an unchanged file compare equal and a
reload can diff them section by section.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass, field
from ipaddress import IPv4Address, IPv6Network
from typing import Any

from teredo_appliance.wire.constants import DEFAULT_PREFIX, MIN_MTU, TEREDO_PORT

GLOBAL_UNICAST = IPv6Network("2000::/3")  # RFC 4291 §2.4, RFC 3587: what a relay serves by default
TEREDO_MTU = MIN_MTU  # RFC 4380 §5.1.2
ANY_IPV4 = IPv4Address("0.0.0.0")
# Router Solicitations answered per source IPv4 address: a client sends one every 30 s
# (RFC 4380 §5.2.7), so 20/s serves 600 clients behind one NAT address, while a forged
# source (the server as a reflector) gets 20 RAs a second, not line rate.
DEFAULT_RS_RATE = 20.0
DEFAULT_RS_BURST = 40
# Anycast (twistd-teredo(8), "Scaling out"): how long a stopping role keeps serving after it
# withdrew its route or addresses, so the routing daemon and the upstream move new flows
# elsewhere first. The lab measured ~0.01 s for BIRD to hear a withdrawal and no loss at 5 s.
DEFAULT_DRAIN_GRACE = 3.0
RTPROT_STATIC = 4  # include/uapi/linux/rtnetlink.h: what `ip route add` (and pyroute2) marks
KERNEL_ROUTE_METRIC = 1024  # the kernel's default metric of an IPv6 route


@dataclass(frozen=True)
class ServerConfig:
    bind_address: IPv4Address
    bind_address2: IPv4Address
    prefix: IPv6Network = DEFAULT_PREFIX
    mtu: int = TEREDO_MTU
    rs_rate: float = DEFAULT_RS_RATE
    rs_burst: int = DEFAULT_RS_BURST
    anycast: bool = False  # both addresses as /32s on a TUN of the server's own (withdrawn on drain)
    anycast_interface: str = "teredo-anycast"  # that TUN: the kernel deletes it when the process dies
    drain_grace: float = DEFAULT_DRAIN_GRACE  # seconds served after withdrawing, on stop
    workers: int = 1  # processes serving the ports; 1: the appliance process itself


@dataclass(frozen=True)
class RelayConfig:
    interface: str = "teredo-relay"
    bind_address: IPv4Address = ANY_IPV4
    bind_port: int = TEREDO_PORT
    prefix: IPv6Network = DEFAULT_PREFIX
    mtu: int = TEREDO_MTU
    max_peers: int = 65536
    bubbles_per_second: int = 1000  # relay-wide cap on discovery bubbles
    served_prefixes: tuple[IPv6Network, ...] = (GLOBAL_UNICAST,)  # native destinations forwarded to
    route_protocol: int = RTPROT_STATIC  # kernel protocol number of the route to `prefix`
    route_metric: int = KERNEL_ROUTE_METRIC  # and its metric: a routing daemon matches on both
    drain_grace: float = DEFAULT_DRAIN_GRACE  # seconds served after withdrawing the route, on stop
    anycast: bool = False  # bind_address as a /32 on the TUN, announced and withdrawn with the route


@dataclass(frozen=True)
class ClientExtensions:
    """RFC 6081 extensions the client may use; each stays compatible with RFC 4380 peers such as Miredo."""

    upnp: bool = True  # RFC 6081 §5.3: a port mapping from the LAN's UPnP IGD before qualifying
    symmetric_nat: bool = True  # RFC 6081 §5.2: an address behind a symmetric NAT all the same
    hairpinning: bool = True  # RFC 6081 Hairpinning Extension: Alternate Address trailers, tried behind one NAT
    server_load_reduction: bool = True  # RFC 6081 §5.7: a peer that advertised it is rediscovered directly first


@dataclass(frozen=True)
class ClientConfig:
    server_address: str  # hostname or IPv4 literal; resolved at run time, never at load
    server_address2: IPv4Address | None = None  # None: primary + 1 (what Windows assumes)
    fallback_servers: tuple[str, ...] = ()
    interface: str = "teredo"
    bind_address: IPv4Address = ANY_IPV4
    bind_port: int = 0
    refresh_interval: float = 30.0
    mtu: int = TEREDO_MTU
    prefix: IPv6Network = DEFAULT_PREFIX  # the only prefix an RA may give us
    hook: str | None = None  # Miredo-compatible up/down script
    local_discovery: bool = True  # RFC 4380 §5.2.8: bubbles to 224.0.0.253 on the LAN
    extensions: ClientExtensions = ClientExtensions()


class RolesConfig:
    """The enabled roles' frozen configs by role name, in start order (the loader adds them in
    the order of the role plugins). `roles.client` is the client's config, None if disabled;
    any role plugin's name works the same way."""

    __slots__ = ("_sections",)

    def __init__(self, **sections: Any) -> None:
        object.__setattr__(self, "_sections", {name: s for name, s in sections.items() if s is not None})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._sections.get(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RolesConfig) and self._sections == other._sections

    def __hash__(self) -> int:
        return hash(frozenset(self._sections.items()))

    def __repr__(self) -> str:
        return f"RolesConfig({', '.join(f'{name}={section!r}' for name, section in self._sections.items())})"

    def enabled(self) -> dict[str, Any]:
        """The configured roles by name, in start order."""
        return dict(self._sections)


@dataclass(frozen=True)
class ManholeConfig:
    listen: str = "tcp:2222:interface=127.0.0.1"
    authorized_keys: str = "/etc/teredo/admin_keys"
    host_key: str = "/var/lib/teredo/ssh_host_ed25519_key"
    max_unauthenticated: int = 10  # connections waiting for login at once (OpenSSH MaxStartups)
    login_grace_time: float = 60.0  # seconds a connection may take to log in (OpenSSH LoginGraceTime)


@dataclass(frozen=True)
class ControlConfig:
    """The local control socket `teredoctl` talks to (on unless the file says `control: false`)."""

    socket: str = "/run/teredo/control.sock"


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus scrape endpoint (off unless the file has a `metrics` section)."""

    listen: str = "tcp:9100:interface=127.0.0.1"


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"  # text (twistd's classic lines) or json (one object per line)
    namespaces: tuple[tuple[str, str], ...] = ()  # (logger namespace, level): overrides `level` there


@dataclass(frozen=True)
class Config:
    roles: RolesConfig
    manhole: ManholeConfig | None = None
    log: LogConfig = field(default_factory=LogConfig)
    # None: off. The YAML loader turns an absent `control` section into ControlConfig().
    control: ControlConfig | None = None
    metrics: MetricsConfig | None = None

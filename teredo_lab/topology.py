"""The lab's addresses and the plan that builds them: pure data, no I/O.

Everything lives in namespaces named `<prefix>-<node>`; even the "Internet" bridge has a
namespace of its own, so nothing touches (or routes to) the host's interfaces. Veths are
created directly inside their namespaces and never exist in the host namespace, yet every
interface name still carries the run prefix so listings from several labs never mix.
Addresses come from 198.18.0.0/15 because Miredo refuses loopback and RFC 1918 as
non-global, and from 2001:db8::/32 for native IPv6.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from teredo_appliance.wire.constants import IFNAMSIZ, TEREDO_PORT

INTERNET = ipaddress.IPv4Network("198.18.0.0/24")
IPV6_NET = ipaddress.IPv6Network("2001:db8:1::/64")
TEREDO_PREFIX = ipaddress.IPv6Network("2001::/32")

SERVER_ADDRESS = "198.18.0.1"
SERVER_ADDRESS2 = "198.18.0.2"
SERVER_V6 = "2001:db8:1::3"
SERVER2_ADDRESS = "198.18.0.5"
SERVER2_ADDRESS2 = "198.18.0.6"
SERVER2_V6 = "2001:db8:1::5"
RELAY_ADDRESS = "198.18.0.10"
RELAY_PORT = TEREDO_PORT
RELAY_V6 = "2001:db8:1::1"
IPV6_HOST = "2001:db8:1::2"
NAT1_WAN = "198.18.0.100"
NAT2_WAN = "198.18.0.200"
NAT1_LAN = ipaddress.IPv4Network("198.19.0.0/24")
NAT2_LAN = ipaddress.IPv4Network("198.19.1.0/24")
CLIENT1_ADDRESS = "198.19.0.2"
CLIENT2_ADDRESS = "198.19.1.2"
CLIENT3_ADDRESS = "198.19.0.3"  # a third client beside client 1, on NAT 1's LAN
# The hostile host on the lab's Internet: a global address to attack from, a second one
# that plays silent Teredo hosts (nothing listens there), and a link-local one, which no
# Teredo node may ever accept as a mapping or send to (RFC 4380 §5.2.9, §5.3.1 rule 3).
HOSTILE_ADDRESS = "198.18.0.66"
HOSTILE_SILENT = "198.18.0.67"
HOSTILE_LINK_LOCAL = "169.254.0.66"
LINK_LOCAL_V4 = ipaddress.IPv4Network("169.254.0.0/16")

STUN_PORT = 3478  # RFC 5389 §18.4: where the UPnP router's STUN responder listens (see lab/igd.py)

CLIENT_INTERFACE = "teredo"  # the clients' TUN, for Miredo and ours alike
RELAY_INTERFACE = "teredo-relay"

NAT_TYPES = ("cone", "symmetric")
IGD_CHAIN = "MINIUPNPD"  # miniupnpd's default chain names (nat and filter)
IGD_POSTROUTING_CHAIN = "MINIUPNPD-POSTROUTING"

# What a node's uplink is called inside its own namespace, after the prefix.
WAN, LAN, ETH, BRIDGE = "wan", "lan", "eth", "br"
# NAT 1's hairpin loop: a veth pair inside its namespace, with fixed MACs so that the
# route into one end needs no ARP (see _plan_hairpin).
HAIRPIN_OUT, HAIRPIN_IN = "hpo", "hpi"
HAIRPIN_OUT_MAC, HAIRPIN_IN_MAC = "02:00:c6:12:00:01", "02:00:c6:12:00:02"
HAIRPIN_TABLE = 100
LOCAL_RULE_PREF = 1000  # the kernel's `lookup local` rule, moved behind the hairpin rule


def teredo_network(server: str, prefix: ipaddress.IPv6Network = TEREDO_PREFIX) -> ipaddress.IPv6Network:
    """The /64 a server advertises: prefix(32) | server IPv4(32) (RFC 4380 §4)."""
    value = int(prefix.network_address) | (int(ipaddress.IPv4Address(server)) << 64)
    return ipaddress.IPv6Network((value, 64))


@dataclass(frozen=True)
class Options:
    """Shape of one lab: which optional parts it has."""

    second_server: bool = False  # a second server namespace at 198.18.0.5/.6
    box: bool = False  # server and relay share one namespace (a multi-role box)
    nat2: str = "cone"  # "symmetric": NAT 2 maps every destination to a new port
    hostile: bool = False  # a hostile host on the Internet bridge (198.18.0.66/.67, 169.254.0.66)
    upnp: bool = False  # NAT 2 runs a UPnP IGD (miniupnpd); only on a symmetric NAT 2
    client3: bool = False  # a third client on NAT 1's LAN (198.19.0.3), beside client 1
    hairpin: bool = False  # NAT 1 hairpins: LAN -> its public address comes back in as from outside
    anycast: bool = False  # two boxes behind an upstream router running BIRD (see lab/anycast.py)

    def __post_init__(self) -> None:
        if self.nat2 not in NAT_TYPES:
            raise ValueError(f"nat2 must be one of {', '.join(NAT_TYPES)}, not {self.nat2!r}")
        if self.upnp and self.nat2 != "symmetric":
            raise ValueError("upnp needs nat2=symmetric: the IGD is what makes a symmetric NAT usable")


@dataclass
class Plan:
    """Commands per namespace, in order: `ip -batch` lines, sysctls, iptables-restore input."""

    namespaces: list[str] = field(default_factory=list)
    links: dict[str, list[str]] = field(default_factory=dict)
    sysctls: dict[str, list[str]] = field(default_factory=dict)
    iptables: dict[str, str] = field(default_factory=dict)
    # iptables-legacy-restore input: a NAT whose IGD (miniupnpd, iptables flavour) writes
    # the legacy tables keeps its own rules there too, so their order is defined.
    iptables_legacy: dict[str, str] = field(default_factory=dict)


def namespace_of(prefix: str, node: str, options: Options) -> str:
    """Namespace of a node; in a box lab, server and relay are the node `box`."""
    if options.box and node in ("server", "relay"):
        node = "box"
    return f"{prefix}-{node}"


def nodes(options: Options) -> list[str]:
    """Node names of a lab, the Internet first (everything else plugs into it)."""
    core = ["box"] if options.box else ["server", "relay"]
    extra = ["server2"] if options.second_server else []
    extra += ["hostile"] if options.hostile else []
    clients = ["client1", "client2", "client3"] if options.client3 else ["client1", "client2"]
    return ["inet", *core, *extra, "v6host", "nat1", "nat2", *clients]


def _nat_rules(wan: str, symmetric: bool, upnp: bool = False, hairpin: tuple[str, str, str] | None = None) -> str:
    """NAT and filter rules; with `upnp`, the chains miniupnpd fills hooked in first; with
    `hairpin` (the loop's out and in ends, the public address), what goes round the loop leaves with the public
    address, and what comes back in matches a mapping or is dropped unconfirmed."""
    masquerade = "-j MASQUERADE --random-fully" if symmetric else "-j MASQUERADE"
    # miniupnpd adds a DNAT per mapping to nat MINIUPNPD, an ACCEPT to filter MINIUPNPD, and
    # a port-keeping MASQUERADE to MINIUPNPD-POSTROUTING, which must come before ours.
    nat_chains = f":{IGD_CHAIN} - [0:0]\n:{IGD_POSTROUTING_CHAIN} - [0:0]\n" if upnp else ""
    nat_hooks = (
        f"-A PREROUTING -i {wan} -j {IGD_CHAIN}\n-A POSTROUTING -o {wan} -j {IGD_POSTROUTING_CHAIN}\n" if upnp else ""
    )
    filter_chain = f":{IGD_CHAIN} - [0:0]\n" if upnp else ""
    filter_hook = f"-A FORWARD -i {wan} ! -o {wan} -j {IGD_CHAIN}\n" if upnp else ""
    # The INPUT drop is what home routers do; without it, conntrack confirms an entry for
    # a peer's early bubble and then remaps the client's port, which breaks hole punching.
    loop_out = "" if hairpin is None else f"-A POSTROUTING -o {hairpin[0]} -j SNAT --to-source {hairpin[2]}\n"
    loop_in = "" if hairpin is None else f"-A INPUT -i {hairpin[1]} -m conntrack --ctstate NEW -j DROP\n"
    return (
        "*nat\n"
        f"{nat_chains}{nat_hooks}"
        f"-A POSTROUTING -o {wan} {masquerade}\n"
        f"{loop_out}"
        "COMMIT\n"
        "*filter\n"
        f"{filter_chain}"
        f"-A INPUT -i {wan} -m conntrack --ctstate NEW -j DROP\n"
        f"{loop_in}"
        f"{filter_hook}"
        "COMMIT\n"
    )


# The lab models hosts whose addresses settled long ago. Duplicate address detection
# would leave a new interface's link-local tentative for a second or two, during which
# the kernel sends no neighbor solicitation and silently drops what it should route: the
# first packets of a test then wait for a Teredo retry (2 s) instead of being forwarded.
SETTLED_IPV6 = ("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")


def _plan_hostile(plan: Plan, ns: Callable[[str], str], plug: Callable[..., None], eth: str) -> None:
    """The hostile host, and the routes that make a leak visible instead of impossible.

    Server and relay get an on-link route to 169.254.0.0/16, so a datagram they wrongly
    send to a link-local mapping really leaves them (and is caught at the hostile host);
    the server gets a default IPv6 route to the IPv6 host, so a packet it wrongly emits to
    a non-global destination (ULA, site-local) really crosses the native link.
    """
    plug("hostile", "hst", eth, (HOSTILE_ADDRESS, HOSTILE_SILENT), ())
    plan.links[ns("hostile")].append(f"addr add {HOSTILE_LINK_LOCAL}/{LINK_LOCAL_V4.prefixlen} dev {eth}")
    for node in ("server", "relay"):
        if f"route add {LINK_LOCAL_V4} dev {eth}" not in plan.links[ns(node)]:  # once in a box
            plan.links[ns(node)].append(f"route add {LINK_LOCAL_V4} dev {eth}")
    plan.links[ns("server")].append(f"route add default via {IPV6_HOST}")


def build_plan(prefix: str, options: Options) -> Plan:
    """Everything `up` does, as data, so it can be checked without root."""
    plan = Plan()

    def ns(node: str) -> str:
        return namespace_of(prefix, node, options)

    def ifname(tag: str) -> str:
        name = f"{prefix}-{tag}"
        if len(name) >= IFNAMSIZ:
            raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ - 1} bytes")
        return name

    for node in nodes(options):
        plan.namespaces.append(ns(node))
        plan.links[ns(node)] = ["link set lo up"]
        plan.sysctls[ns(node)] = []
    inet = ns("inet")
    bridge = ifname(BRIDGE)
    plan.links[inet] += [f"link add {bridge} type bridge mcast_snooping 0", f"link set {bridge} up"]
    plan.sysctls[inet].append("net.ipv6.conf.all.disable_ipv6=1")  # a wire, not a host

    def plug(node: str, tag: str, inner: str, v4: tuple[str, ...], v6: tuple[str, ...]) -> None:
        """A veth from the bridge into `node`, and the node's addresses on it."""
        port = ifname(tag)
        plan.links[inet] += [
            f"link add {port} type veth peer name {inner} netns {ns(node)}",
            f"link set {port} master {bridge} up",
        ]
        plan.links[ns(node)].append(f"link set {inner} up")
        plan.links[ns(node)] += [f"addr add {a}/{INTERNET.prefixlen} dev {inner}" for a in v4]
        plan.links[ns(node)] += [f"addr add {a}/{IPV6_NET.prefixlen} dev {inner} nodad" for a in v6]

    eth = ifname(ETH)
    relay_route = f"route add {TEREDO_PREFIX} via {RELAY_V6}"
    if options.box:
        plug("box", "box", eth, (SERVER_ADDRESS, SERVER_ADDRESS2, RELAY_ADDRESS), (RELAY_V6, SERVER_V6))
        plan.sysctls[ns("box")].append("net.ipv6.conf.all.forwarding=1")
    else:
        plug("server", "srv", eth, (SERVER_ADDRESS, SERVER_ADDRESS2), (SERVER_V6,))
        plan.links[ns("server")].append(relay_route)
        plug("relay", "rly", eth, (RELAY_ADDRESS,), (RELAY_V6,))
        plan.sysctls[ns("relay")].append("net.ipv6.conf.all.forwarding=1")
    if options.second_server:
        plug("server2", "srv2", eth, (SERVER2_ADDRESS, SERVER2_ADDRESS2), (SERVER2_V6,))
        plan.links[ns("server2")].append(relay_route)
    plug("v6host", "v6h", eth, (), (IPV6_HOST,))
    plan.links[ns("v6host")].append(relay_route)
    if options.hostile:
        _plan_hostile(plan, ns, plug, eth)

    nat1_hosts = [("client1", "h1", CLIENT1_ADDRESS)]
    nat1_hosts += [("client3", "h3", CLIENT3_ADDRESS)] if options.client3 else []
    for nat, hosts, wan_address, lan_net, symmetric, upnp in (
        ("nat1", nat1_hosts, NAT1_WAN, NAT1_LAN, False, False),
        ("nat2", [("client2", None, CLIENT2_ADDRESS)], NAT2_WAN, NAT2_LAN, options.nat2 == "symmetric", options.upnp),
    ):
        wan, lan = ifname(WAN), ifname(LAN)
        plug(nat, nat, wan, (wan_address,), ())
        router = next(lan_net.hosts())
        if nat == "nat1":
            # A bridge with a veth per host, so the hosts share one link: multicast
            # (local discovery, RFC 4380 §5.2.8) reaches them all.
            plan.links[ns(nat)].append(f"link add {lan} type bridge mcast_snooping 0")
        for client, tag, client_address in hosts:
            if tag is None:
                plan.links[ns(nat)].append(f"link add {lan} type veth peer name {eth} netns {ns(client)}")
            else:
                port = ifname(tag)
                plan.links[ns(nat)] += [
                    f"link add {port} type veth peer name {eth} netns {ns(client)}",
                    f"link set {port} master {lan} up",
                ]
            plan.links[ns(client)] += [
                f"link set {eth} up",
                f"addr add {client_address}/{lan_net.prefixlen} dev {eth}",
                f"route add default via {router}",
            ]
        plan.links[ns(nat)] += [f"link set {lan} up", f"addr add {router}/{lan_net.prefixlen} dev {lan}"]
        plan.sysctls[ns(nat)] += ["net.ipv4.ip_forward=1", f"net.ipv6.conf.{wan}.disable_ipv6=1"]
        hairpin = _plan_hairpin(plan, ns(nat), ifname, lan, wan_address) if nat == "nat1" and options.hairpin else None
        rules = plan.iptables_legacy if upnp else plan.iptables
        rules[ns(nat)] = _nat_rules(wan, symmetric, upnp, hairpin)
    return plan


def _plan_hairpin(plan: Plan, nat: str, ifname: Callable[[str], str], lan: str, public: str) -> tuple[str, str, str]:
    """A NAT that hairpins, as LAB-NOTES describes: LAN traffic to the NAT's own public
    address is routed into a veth loop instead of delivered locally, leaves the loop's
    out end with the public address as its source (SNAT, ports kept), and comes back in
    at the other end as if from outside, where conntrack finds the mapping of the LAN
    peer it is for (one that has sent to this sender's public mapping: as on real NATs).
    Returns (out end, in end, public address) for the NAT rules."""
    out, into = ifname(HAIRPIN_OUT), ifname(HAIRPIN_IN)
    plan.links[nat] += [
        f"link add {out} address {HAIRPIN_OUT_MAC} type veth peer name {into} address {HAIRPIN_IN_MAC}",
        f"link set {out} up",
        f"link set {into} up",
        f"rule add pref {LOCAL_RULE_PREF} lookup local",
        "rule del pref 0 lookup local",
        f"rule add pref {HAIRPIN_TABLE} iif {lan} to {public}/32 lookup {HAIRPIN_TABLE}",
        f"route add {public}/32 dev {out} table {HAIRPIN_TABLE}",
        f"neigh add {public} lladdr {HAIRPIN_IN_MAC} dev {out} nud permanent",
    ]
    # Back in at the loop's far end with a local address as source: accept it (a martian
    # otherwise), and without a reverse-path check (the route back is the LAN, not the loop).
    plan.sysctls[nat] += [
        "net.ipv4.conf.all.rp_filter=0",
        f"net.ipv4.conf.{into}.rp_filter=0",
        f"net.ipv4.conf.{into}.accept_local=1",
    ]
    return out, into, public

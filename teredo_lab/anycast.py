"""The anycast lab (`teredo-lab up --anycast`): two appliance boxes behind an upstream router.

    client1 (ours) ─┐                      ┌─ box1: ours (server + relay) + BIRD ─┐
    client3 (Miredo)┴ nat1 ─┐              │                                      │
                            inet ── upstream (BIRD, ECMP) ─────────────── v6host
    client2 (ours) ── nat2 ─┘              │                                      │
                                           └─ box2: ours (server + relay) + BIRD ─┘

Every box serves the same anycast server /32s (on its server's anycast TUN) and routes 2001::/32 to its relay;
each box's BIRD announces them to the upstream over BGP with BFD, and the upstream spreads
flows over the boxes by an address-only hash. Each relay's IPv4 side is the box's own
unicast address: the native host's ECMP path picks the relay, that relay answers the
client's echo test, and the client sends to that very relay (RFC 4380 §5.2.9), so both
directions of a flow and the relay's bubble handshake stay on one box. Addresses:
198.18.0.0/15 and 2001:db8::/32 only.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from teredo_appliance.teredoctl import Unreachable, ask
from teredo_lab import bird, topology
from teredo_lab.errors import LabError


class Lab(Protocol):
    """What the anycast scenario needs of teredo_lab.lab.Lab (which imports this module)."""

    rundir: Path | None
    daemons: dict[str, Any]

    def run(self, node: str, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]: ...

    def background(self, node: str, argv: list[str]) -> AbstractContextManager[subprocess.Popen[str]]: ...

    def start_service(self, name: str, node: str, argv: list[str]) -> Path: ...

    def start_daemon(self, name: str, impl: str, node: str, roles: dict[str, dict[str, Any]]) -> Any: ...

    def wait_ready(self, name: str) -> None: ...


UPSTREAM_INET = "198.18.0.254"  # the upstream on the lab's Internet: the NATs' default router
SERVER_ANYCAST = ("198.18.5.1", "198.18.5.2")
# Per box: its link to the upstream (the upstream is .1 / ::1, the box .2 / ::2).
BOX_LINKS = {
    "box1": (ipaddress.IPv4Network("198.18.1.0/24"), ipaddress.IPv6Network("2001:db8:11::/64")),
    "box2": (ipaddress.IPv4Network("198.18.2.0/24"), ipaddress.IPv6Network("2001:db8:12::/64")),
}
BOXES = tuple(BOX_LINKS)
# The IPv6 host has several addresses, so that its flows to one client spread over the boxes.
V6HOST_ADDRESSES = tuple(f"2001:db8:1::{n}" for n in range(2, 10))
UPSTREAM_V6 = "2001:db8:1::1"
NODES = ["inet", "upstream", *BOXES, "v6host", "nat1", "nat2", "client1", "client2", "client3"]
# The upstream hashes IPv6 flows on source and destination address only (LAB-NOTES).
UPSTREAM_SYSCTLS = [
    "net.ipv4.ip_forward=1",
    "net.ipv6.conf.all.forwarding=1",
    "net.ipv6.fib_multipath_hash_policy=3",
    "net.ipv6.fib_multipath_hash_fields=0x0003",
]
CONVERGE_TIMEOUT = 20.0


def _host(network: ipaddress.IPv4Network | ipaddress.IPv6Network, n: int) -> str:
    return str(network.network_address + n)


def build_plan(prefix: str, options: topology.Options) -> topology.Plan:
    """The anycast topology as data (see the module docstring)."""
    plan = topology.Plan()

    def ns(node: str) -> str:
        return topology.namespace_of(prefix, node, options)

    def ifname(tag: str) -> str:
        name = f"{prefix}-{tag}"
        if len(name.encode()) >= topology.IFNAMSIZ:
            raise ValueError(f"interface name {name!r} is longer than {topology.IFNAMSIZ - 1} bytes")
        return name

    for node in NODES:
        plan.namespaces.append(ns(node))
        plan.links[ns(node)] = ["link set lo up"]
        plan.sysctls[ns(node)] = []
    inet, up, eth = ns("inet"), ns("upstream"), ifname(topology.ETH)
    bridge = ifname(topology.BRIDGE)
    plan.links[inet] += [f"link add {bridge} type bridge mcast_snooping 0", f"link set {bridge} up"]
    plan.sysctls[inet].append("net.ipv6.conf.all.disable_ipv6=1")

    def veth(a: str, a_if: str, b: str, b_if: str) -> None:
        plan.links[ns(a)] += [f"link add {a_if} type veth peer name {b_if} netns {ns(b)}", f"link set {a_if} up"]
        plan.links[ns(b)].append(f"link set {b_if} up")

    def on_bridge(node: str, tag: str, address: str) -> None:
        port = ifname(tag)
        plan.links[inet] += [f"link add {port} type veth peer name {eth} netns {ns(node)}",
                             f"link set {port} master {bridge} up"]
        plan.links[ns(node)] += [f"link set {eth} up", f"addr add {address}/{topology.INTERNET.prefixlen} dev {eth}"]

    on_bridge("upstream", "ups", UPSTREAM_INET)
    plan.sysctls[up] += UPSTREAM_SYSCTLS
    for box, (net4, net6) in BOX_LINKS.items():
        up_if = ifname(box[0] + box[-1])  # b1, b2
        veth("upstream", up_if, box, eth)
        plan.links[up] += [f"addr add {_host(net4, 1)}/{net4.prefixlen} dev {up_if}",
                           f"addr add {_host(net6, 1)}/{net6.prefixlen} dev {up_if} nodad"]
        plan.links[ns(box)] += [
            f"addr add {_host(net4, 2)}/{net4.prefixlen} dev {eth}",
            f"addr add {_host(net6, 2)}/{net6.prefixlen} dev {eth} nodad",
            f"route add default via {_host(net4, 1)}",
            f"route add default via {_host(net6, 1)}",
        ]
        plan.sysctls[ns(box)].append("net.ipv6.conf.all.forwarding=1")
    v6 = ifname("v6")
    veth("upstream", v6, "v6host", eth)
    plan.links[up].append(f"addr add {UPSTREAM_V6}/{topology.IPV6_NET.prefixlen} dev {v6} nodad")
    plan.links[ns("v6host")] += [f"addr add {a}/{topology.IPV6_NET.prefixlen} dev {eth} nodad"
                                 for a in V6HOST_ADDRESSES]
    plan.links[ns("v6host")].append(f"route add default via {UPSTREAM_V6}")

    for nat, wan_address, lan_net, hosts in (
        ("nat1", topology.NAT1_WAN, topology.NAT1_LAN,
         [("client1", "h1", topology.CLIENT1_ADDRESS), ("client3", "h3", topology.CLIENT3_ADDRESS)]),
        ("nat2", topology.NAT2_WAN, topology.NAT2_LAN, [("client2", "h2", topology.CLIENT2_ADDRESS)]),
    ):
        wan, lan = ifname(topology.WAN), ifname(topology.LAN)
        port = ifname(nat)
        plan.links[inet] += [f"link add {port} type veth peer name {wan} netns {ns(nat)}",
                             f"link set {port} master {bridge} up"]
        router = next(lan_net.hosts())
        plan.links[ns(nat)] += [
            f"link set {wan} up",
            f"addr add {wan_address}/{topology.INTERNET.prefixlen} dev {wan}",
            f"route add default via {UPSTREAM_INET}",
            f"link add {lan} type bridge mcast_snooping 0",
        ]
        for client, tag, address in hosts:
            veth(nat, ifname(tag), client, eth)
            plan.links[ns(nat)].append(f"link set {ifname(tag)} master {lan}")
            plan.links[ns(client)] += [f"addr add {address}/{lan_net.prefixlen} dev {eth}",
                                       f"route add default via {router}"]
        plan.links[ns(nat)] += [f"link set {lan} up", f"addr add {router}/{lan_net.prefixlen} dev {lan}"]
        plan.sysctls[ns(nat)] += ["net.ipv4.ip_forward=1", f"net.ipv6.conf.{wan}.disable_ipv6=1"]
        plan.iptables[ns(nat)] = topology._nat_rules(wan, symmetric=False)
    return plan


def relay_address(box: str) -> str:
    """The box's own unicast address, where its relay listens."""
    return _host(BOX_LINKS[box][0], 2)


def box_roles(box: str) -> dict[str, dict[str, Any]]:
    """Ours on a box: the anycast server, and the relay on the box's unicast address with
    its route to 2001::/32 announced for BIRD."""
    return {
        "server": {"bind_address": SERVER_ANYCAST[0], "bind_address2": SERVER_ANYCAST[1], "anycast": True},
        "relay": {"interface": topology.RELAY_INTERFACE, "bind_address": relay_address(box),
                  "route_protocol": bird.ROUTE_PROTOCOL},
    }


def client_roles() -> dict[str, dict[str, Any]]:
    return {"client": {"server_address": SERVER_ANYCAST[0], "server_address2": SERVER_ANYCAST[1],
                       "interface": topology.CLIENT_INTERFACE}}


def _rundir(lab: Lab) -> Path:
    if lab.rundir is None:
        raise LabError("the lab is not up")
    return lab.rundir


def start_bird(lab: Lab, node: str) -> None:
    """BIRD in the node's namespace, in the foreground with its own config, socket and pid
    file, recorded by the lab (stopped by PID at `down`)."""
    rundir = _rundir(lab)
    conf = rundir / f"bird-{node}.conf"
    if node == "upstream":
        boxes = [(box, _host(n4, 2), _host(n6, 2)) for box, (n4, n6) in BOX_LINKS.items()]
        conf.write_text(bird.upstream_conf(UPSTREAM_INET, boxes))
    else:
        net4, net6 = BOX_LINKS[node]
        conf.write_text(bird.box_conf(_host(net4, 2), _host(net4, 1), _host(net6, 1), SERVER_ANYCAST))
    argv = ["bird", "-f", "-c", str(conf), "-s", str(bird_socket(lab, node)), "-P", str(rundir / f"bird-{node}.pid")]
    lab.start_service(f"bird-{node}", node, argv)


def bird_socket(lab: Lab, node: str) -> str:
    return str(_rundir(lab) / f"bird-{node}.ctl")


def start(lab: Lab) -> None:
    """BIRD everywhere, ours on both boxes, then the clients (two of ours, one Miredo)."""
    for node in ("upstream", *BOXES):
        start_bird(lab, node)
    for box in BOXES:
        lab.start_daemon(box, "ours", box, box_roles(box))
    for box in BOXES:
        lab.wait_ready(box)
    wait_paths(lab, len(BOXES))
    lab.start_daemon("client1", "ours", "client1", client_roles())
    lab.start_daemon("client2", "ours", "client2", client_roles())
    lab.start_daemon("client3", "miredo", "client3", client_roles())


def paths(lab: Lab) -> dict[str, int]:
    """How many boxes the upstream routes each anycast destination to."""
    found = {}
    for family, destination in (("-4", SERVER_ANYCAST[0]), ("-6", "2001::/32")):
        text = lab.run("upstream", ["ip", family, "route", "show", destination], check=False).stdout
        found[destination] = text.count("nexthop") or (1 if text.strip() else 0)
    return found


def wait_paths(lab: Lab, wanted: int, timeout: float = CONVERGE_TIMEOUT) -> float:
    """Wait until the upstream has `wanted` paths for every anycast destination; seconds taken."""
    started = time.monotonic()
    while True:
        found = paths(lab)
        if all(n == wanted for n in found.values()):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise LabError(f"the upstream has {found} paths after {timeout:.0f} s, not {wanted} each")
        time.sleep(0.1)


def relay_counters(lab: Lab, box: str) -> dict[str, int]:
    """The relay's counters on a box, from its control socket (teredoctl status --json)."""
    daemon = lab.daemons[box]
    try:
        answer = ask(str(daemon.control), {"command": "status"})
    except Unreachable as e:
        raise LabError(f"{box}: {e}") from e
    return dict(answer["result"]["relay"]["counters"])


# -- measuring loss under failover -------------------------------------------------------

PROBE_INTERVAL = 0.1  # seconds between probes, both ways
# A one-way UDP stream: the sender numbers its datagrams, the receiver prints what arrived.
UDP_SEND = (
    "import socket,sys,time\n"
    "s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n"
    "for i in range(int(sys.argv[3])):\n"
    "    s.sendto(str(i).encode(),(sys.argv[1],int(sys.argv[2]))); time.sleep(float(sys.argv[4]))\n"
)
UDP_RECEIVE = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM); s.bind((sys.argv[1],int(sys.argv[2])))\n"
    "s.settimeout(float(sys.argv[3])); print('ready',flush=True); got=[]\n"
    "try:\n"
    "    while True: got.append(s.recv(64).decode())\n"
    "except OSError: pass\n"
    "print(' '.join(got),flush=True)\n"
)


def longest_gap(received: set[int], count: int) -> tuple[int, float]:
    """(probes lost, the longest run of lost probes in seconds) out of `count` sent."""
    longest = run = 0
    for seq in range(count):
        run = 0 if seq in received else run + 1
        longest = max(longest, run)
    return count - len(received), longest * PROBE_INTERVAL


def ping_seqs(output: str) -> set[int]:
    """The icmp_seq numbers (from 0) that got an answer, from `ping -n` output."""
    return {int(word.split("=")[1]) - 1 for line in output.splitlines() if "bytes from" in line
            for word in line.split() if word.startswith("icmp_seq=")}


def measure(lab: Lab, client: str, client_address: str, native: str, one_way: str, seconds: float,
            event: Any, at: float = 2.0) -> dict[str, tuple[int, float]]:
    """Probe every 0.1 s for `seconds` while `event()` runs `at` seconds in: a ping each way
    with `native`, and a UDP stream to `one_way` (another of the host's addresses, which
    never sends to the client). Returns {flow: (lost, longest gap s)}."""
    import sys

    count = int(seconds / PROBE_INTERVAL)
    ping = ["ping", "-6", "-n", "-i", str(PROBE_INTERVAL), "-W", "1", "-c", str(count)]
    receive = [sys.executable, "-c", UDP_RECEIVE, one_way, "9000", "3"]
    send = [sys.executable, "-c", UDP_SEND, one_way, "9000", str(count), str(PROBE_INTERVAL)]
    with lab.background("v6host", receive) as sink:
        assert sink.stdout is not None
        if sink.stdout.readline().strip() != "ready":
            raise LabError("UDP receiver did not start")
        with lab.background("v6host", [*ping, "-I", native, client_address]) as inbound, \
                lab.background(client, [*ping, native]) as outbound, lab.background(client, send):
            time.sleep(at)
            event()
            out_in, _ = inbound.communicate(timeout=seconds + 10)
            out_out, _ = outbound.communicate(timeout=seconds + 10)
        got, _ = sink.communicate(timeout=seconds + 10)
    lines = got.strip().splitlines()
    udp = {int(n) for n in lines[-1].split()} if lines else set()
    return {
        "native -> client (ping)": longest_gap(ping_seqs(out_in), count),
        "client -> native (ping)": longest_gap(ping_seqs(out_out), count),
        "client -> native (UDP, client sends only)": longest_gap(udp, count),
    }

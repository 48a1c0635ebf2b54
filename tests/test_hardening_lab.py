"""Hostile traffic against our server, relay, clients and SSH console, seen from outside.

A hostile host on the lab's Internet (topology.Options.hostile) sends well-formed but
malicious Teredo traffic with raw and UDP sockets (teredo_lab.attacks), while
captures run at the places each packet must not reach: the native IPv6 link (the IPv6
host), the relay's namespace (its TUN and its uplink) and the hostile host itself (the
"chosen" addresses a daemon must not be steered into flooding). The scenario runs once
per class; each rule is its own test, failing with what arrived where.

The pure parts (plan, packet builders, capture decoding, the verdicts) are tested first,
without root.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import select
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from twisted.trial import unittest

import teredo_appliance
from teredo_appliance.wire.address import TeredoAddress, int_to_ipv4, ipv4_to_int
from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.ipv6 import HEADER_LENGTH, NEXT_HEADER_ICMPV6, checksum_ok, parse_header
from teredo_appliance.wire.nd import parse_router_advertisement, teredo_prefix64
from teredo_appliance.wire.teredo import Datagram, build_bubble, is_bubble, parse_datagram
from teredo_lab import attacks, checks, cli, topology
from teredo_lab.capture import ETH_P_IP, ETH_P_IPV6, Frame, ipv6_packets, read_frames, udp_datagrams
from teredo_lab.lab import OURS, Lab, LabError
from teredo_lab.scenario import Scenario, ours_missing, start
from teredo_lab.sshconsole import CONSOLE_HOST, CONSOLE_PORT, ConsoleAccess, missing_tools
from tests.labsupport import lab_skip_reason, skip_unless_lab

ROOT = Path(teredo_appliance.__file__).resolve().parent.parent
CAPTURED = ("server", "relay", "v6host", "hostile", "client1")  # where each attack is watched
SILENT_HOSTS = 100
SILENT_BASE_PORT = 41000
MAX_BUBBLES_PER_SILENT_HOST = 4  # two rounds of direct + indirect bubble
INDIRECT_BUBBLES = 50
MAX_CLIENT_BUBBLES = 4  # RFC 4380 §5.2.6 as Miredo applies it: 4 per 300 s ...
MIN_BUBBLE_GAP = 1.9  # ... 2 s apart (less 0.1 s of capture timestamp jitter)
BUBBLE_WATCH = 9.0  # seconds of capture after the bubble attacks: room for every retry
IDLE_CONNECTIONS = 300
CONSOLE_FD_HEADROOM = 100  # descriptors idle peers may cost at most (OpenSSH's MaxStartups hard cap)
PASTE_BYTES = 64 * 1024
RS_PROBES = 10
RS_PROBE_INTERVAL = 0.3
LOG_TAIL = 4000


def teredo(address: bytes | ipaddress.IPv6Address) -> bool:
    return ipaddress.IPv6Address(address) in topology.TEREDO_PREFIX


def describe(frame: Frame) -> str:
    """One line naming a captured IPv6 packet: where, source, destination, hop limit, type."""
    header = parse_header(frame.packet)
    kind = f"icmpv6 type {frame.packet[HEADER_LENGTH]}" if header.next_header == NEXT_HEADER_ICMPV6 else \
        f"next header {header.next_header}"
    return (f"{frame.interface} {'out' if frame.outgoing else 'in'}: {ipaddress.IPv6Address(header.source)} -> "
            f"{ipaddress.IPv6Address(header.destination)} hop limit {header.hop_limit}, {kind}")


def marked(frames: Iterable[Frame], identifier: int) -> list[Frame]:
    return [f for f in ipv6_packets(frames) if attacks.is_marked_echo(f.packet, identifier)]


def teredo_neighbor_advertisements(frames: Iterable[Frame]) -> list[Frame]:
    """NAs on a native link whose source is a Teredo address: only a server can have put them there."""
    found = []
    for frame in ipv6_packets(frames):
        header = parse_header(frame.packet)
        if (header.next_header == NEXT_HEADER_ICMPV6 and len(frame.packet) > HEADER_LENGTH
                and frame.packet[HEADER_LENGTH] == attacks.ICMPV6_NEIGHBOR_ADVERTISEMENT and teredo(header.source)):
            found.append(frame)
    return found


def teredo_arrivals(frames: Iterable[Frame], to: str) -> list[Datagram]:
    """The Teredo payloads (parsed; unparsable ones skipped) of UDP datagrams that arrived at IPv4 `to`."""
    found = []
    for datagram in udp_datagrams(f for f in frames if not f.outgoing):
        if str(datagram.destination) == to:
            with contextlib.suppress(ParseError):
                found.append(parse_datagram(datagram.payload))
    return found


def inner_packets(datagrams: Iterable[Datagram]) -> list[Frame]:
    """The IPv6 packets inside Teredo datagrams, as frames, for the same filters as captured IPv6."""
    return [Frame(0.0, "teredo", False, ETH_P_IPV6, d.packet) for d in datagrams]


def forged_ra_from(datagram: Datagram, hostile_server: str) -> bool:
    """Whether a Teredo datagram is an RA advertising the hostile server's prefix."""
    try:
        ra = parse_router_advertisement(datagram.packet, datagram.header)
    except ParseError:
        return False
    return any(prefix == teredo_prefix64(ipv4_to_int(hostile_server)) for prefix, _length in ra.prefixes)


def bubbles_by_destination(frames: Iterable[Frame], to: str) -> dict[ipaddress.IPv6Address, list[float]]:
    """Times of the Teredo bubbles sent to IPv4 `to`, by the bubble's IPv6 destination."""
    found: dict[ipaddress.IPv6Address, list[float]] = defaultdict(list)
    for datagram in udp_datagrams(frames):
        if str(datagram.destination) != to:
            continue
        try:
            parsed = parse_datagram(datagram.payload)
        except ParseError:
            continue
        if is_bubble(parsed.header):
            found[ipaddress.IPv6Address(parsed.header.destination)].append(datagram.frame.time)
    return found


def pacing_problem(times: list[float], limit: int, gap: float) -> str | None:
    """Why `times` break "at most `limit`, at least `gap` s apart", or None."""
    times = sorted(times)
    if len(times) > limit:
        return f"{len(times)} datagrams (at most {limit} allowed)"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    if gaps and min(gaps) < gap:
        return f"datagrams {min(gaps):.2f} s apart (at least {gap} s required)"
    return None


class HostileScaffoldingTests(unittest.SynchronousTestCase):
    """The plan, the packets and the capture decoding, without root."""

    def test_hostile_node_is_on_the_internet_with_three_addresses(self) -> None:
        plan = topology.build_plan("tl1234", topology.Options(hostile=True))
        self.assertIn("tl1234-hostile", plan.namespaces)
        hostile = plan.links["tl1234-hostile"]
        for address in ("198.18.0.66/24", "198.18.0.67/24", "169.254.0.66/16"):
            self.assertTrue(any(f"addr add {address} dev tl1234-eth" in line for line in hostile), address)
        self.assertIn("link add tl1234-hst type veth peer name tl1234-eth netns tl1234-hostile",
                      plan.links["tl1234-inet"])
        self.assertIn("route add 169.254.0.0/16 dev tl1234-eth", plan.links["tl1234-relay"])
        self.assertIn("route add default via 2001:db8:1::2", plan.links["tl1234-server"])
        self.assertNotIn("tl1234-hostile", topology.build_plan("tl1234", topology.Options()).namespaces)

    def test_hostile_box_routes_link_local_once(self) -> None:
        box = topology.build_plan("tl1234", topology.Options(hostile=True, box=True)).links["tl1234-box"]
        self.assertEqual(box.count("route add 169.254.0.0/16 dev tl1234-eth"), 1)

    def test_teredo_source_embeds_the_sender_mapping(self) -> None:
        address = TeredoAddress.unpack(attacks.teredo_address("198.18.0.1", "198.18.0.66", attacks.HOSTILE_PORT))
        self.assertEqual((int_to_ipv4(address.server), int_to_ipv4(address.mapped_ip)), ("198.18.0.1", "198.18.0.66"))
        self.assertEqual(address.mapped_port, attacks.HOSTILE_PORT)
        self.assertEqual(address.flags, 0)

    def test_neighbor_advertisement_is_valid_nd(self) -> None:
        source, target = attacks.packed("2001::1"), attacks.packed("2001:db8:1::2")
        packet = attacks.neighbor_advertisement(source, target)
        header = parse_header(packet)
        self.assertEqual((header.hop_limit, packet[HEADER_LENGTH]), (255, 136))
        self.assertTrue(checksum_ok(packet, header))
        self.assertEqual(packet[HEADER_LENGTH + 8 :], target)  # the target address
        self.assertEqual(teredo_neighbor_advertisements([Frame(0, "eth", False, ETH_P_IPV6, packet)]),
                         [Frame(0, "eth", False, ETH_P_IPV6, packet)])

    def test_marked_echo_is_recognised_by_kind_only(self) -> None:
        packet = attacks.marked_echo(attacks.packed("2001::1"), attacks.packed("fd00::1"), attacks.ECHO_NON_GLOBAL,
                                     hop_limit=1)
        self.assertEqual(parse_header(packet).hop_limit, 1)
        self.assertTrue(attacks.is_marked_echo(packet))
        self.assertTrue(attacks.is_marked_echo(packet, attacks.ECHO_NON_GLOBAL))
        self.assertFalse(attacks.is_marked_echo(packet, attacks.ECHO_NORMAL))
        self.assertFalse(attacks.is_marked_echo(packet[:20]))

    def test_forged_ra_parses_as_another_servers_ra(self) -> None:
        for nonce in (None, b"12345678"):
            datagram = parse_datagram(attacks.forged_ra("198.18.0.66", "198.18.0.66", 40066, nonce))
            ra = parse_router_advertisement(datagram.packet, datagram.header)
            self.assertEqual(ra.prefixes, ((bytes.fromhex("20010000c6120042") + bytes(8), 64),))
            self.assertEqual(datagram.auth.nonce if datagram.auth else None, nonce)
            self.assertEqual((int_to_ipv4(datagram.origin.ip), datagram.origin.port), ("198.18.0.66", 40066))

    def test_forged_ipv4_udp_decodes_like_a_captured_one(self) -> None:
        packet = attacks.ipv4_udp("198.18.0.1", 3544, "198.18.0.100", 1234, b"payload")
        (datagram,) = udp_datagrams([Frame(1.0, "eth", True, ETH_P_IP, packet + b"\0\0")])  # padded frame
        self.assertEqual((str(datagram.source), datagram.source_port), ("198.18.0.1", 3544))
        self.assertEqual((str(datagram.destination), datagram.destination_port), ("198.18.0.100", 1234))
        self.assertEqual(datagram.payload, b"payload")

    def test_capture_file_round_trip_skips_a_torn_line(self) -> None:
        path = Path(self.mktemp())
        row = {"t": 2.5, "if": "tl1-eth", "out": True, "proto": ETH_P_IPV6, "hex": "60"}
        path.write_text(json.dumps(row) + "\n" + '{"t": 3, "if"')
        self.assertEqual(read_frames(path), [Frame(2.5, "tl1-eth", True, ETH_P_IPV6, b"\x60")])

    def test_bubbles_are_counted_per_destination(self) -> None:
        peer = attacks.teredo_address("198.18.0.67", "198.18.0.67", 41000)
        me = attacks.packed("fe80::ffff:ffff:ffff")
        bubble = build_bubble(me, peer)
        frames = [Frame(t, "eth", True, ETH_P_IP, attacks.ipv4_udp("198.18.0.10", 3544, "198.18.0.67", port, bubble))
                  for t, port in ((1.0, 3544), (1.0, 41000), (3.0, 3544))]
        frames.append(Frame(4.0, "eth", True, ETH_P_IP, attacks.ipv4_udp("198.18.0.10", 3544, "198.18.0.1", 3544,
                                                                          bubble)))
        self.assertEqual(bubbles_by_destination(frames, "198.18.0.67"), {ipaddress.IPv6Address(peer): [1.0, 1.0, 3.0]})

    def test_arrivals_and_forged_ra_recognition(self) -> None:
        forged = attacks.forged_ra("198.18.0.66", "198.18.0.66", 40066, None)
        frames = [Frame(1.0, "eth", False, ETH_P_IP, attacks.ipv4_udp("198.18.0.1", 3544, "198.19.0.2", 5, forged)),
                  Frame(1.0, "eth", True, ETH_P_IP, attacks.ipv4_udp("198.19.0.2", 5, "198.18.0.1", 3544, forged)),
                  Frame(1.0, "eth", False, ETH_P_IP, attacks.ipv4_udp("198.18.0.1", 3544, "198.19.0.2", 5, b"junk"))]
        (arrived,) = teredo_arrivals(frames, "198.19.0.2")
        self.assertTrue(forged_ra_from(arrived, "198.18.0.66"))
        echo = attacks.marked_echo(attacks.packed("2001::1"), attacks.packed("fd00::1"), attacks.ECHO_NON_GLOBAL)
        self.assertEqual(len(marked(inner_packets([arrived, parse_datagram(echo)]), attacks.ECHO_NON_GLOBAL)), 1)
        self.assertFalse(forged_ra_from(arrived, "198.18.0.1"))

    def test_cli_builds_a_hostile_lab(self) -> None:
        args = cli._parser().parse_args(["up", "--hostile", "--server", "ours"])
        self.assertTrue(cli._scenario(args).options.hostile)
        self.assertFalse(cli._scenario(cli._parser().parse_args(["up"])).options.hostile)

    def test_pacing(self) -> None:
        self.assertIsNone(pacing_problem([0.0, 2.0, 4.1], 4, 1.9))
        self.assertIn("5 datagrams", pacing_problem([0, 2, 4, 6, 8], 4, 1.9))
        self.assertIn("0.50 s apart", pacing_problem([0.0, 0.5], 4, 1.9))


class HostileRun:
    """One run of the whole hostile scenario; `findings` maps a rule to (held, what was seen)."""

    scenario = Scenario(server=OURS, relay=OURS, client=OURS, hostile=True)

    def __init__(self) -> None:
        self.findings: dict[str, tuple[bool, str]] = {}
        self.report = ""

    def execute(self) -> HostileRun:
        rundir = os.path.abspath("lab-hostile")
        with Lab(self.scenario.options, rundir=rundir) as lab:
            self.lab = lab
            try:
                self._attack(lab)
            except Exception:  # reported by every test: the lab is built once, not once per test
                self.report = f"the run stopped early:\n{traceback.format_exc()}"
            self.report += "\n\ndaemon logs (tails):\n" + "\n".join(
                f"----- {name}: {lab.daemons[name].log}\n{text[-LOG_TAIL:]}" for name, text in lab.logs().items())
        return self

    def verdict(self, name: str, problems: list[str], fine: str) -> None:
        self.findings[name] = (not problems, "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else "")
                               if problems else fine)

    def attacker(self, node: str, *argv: str, timeout: float = 30.0) -> dict:
        done = self.lab.run(node, ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "teredo_lab.attacks",
                                   *argv], timeout=timeout)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def _attack(self, lab: Lab) -> None:
        console = ConsoleAccess(lab)
        console.create_keys()
        start(lab, self.scenario, manhole=lambda name: console.manhole(name) if name == "server" else None)
        console.wait("server")
        runner = checks.Checks(lab)
        (qualified,) = runner.run((1,))
        if not qualified.ok:
            raise LabError(f"the clients did not qualify before any attack: {qualified.detail}")
        client1 = runner.address("client1")
        mapping = TeredoAddress.unpack(client1.packed)
        addresses_before = self._client1_addresses()
        silent = [ipaddress.IPv6Address(attacks.teredo_address(topology.HOSTILE_SILENT, topology.HOSTILE_SILENT,
                                                               SILENT_BASE_PORT + i)) for i in range(SILENT_HOSTS)]
        link_local_peer = ipaddress.IPv6Address(attacks.teredo_address(
            topology.SERVER_ADDRESS, topology.HOSTILE_LINK_LOCAL, attacks.LINK_LOCAL_PORT))

        with contextlib.ExitStack() as stack:
            paths = {node: stack.enter_context(lab.capture(node)) for node in CAPTURED}
            h, s = topology.HOSTILE_ADDRESS, topology.SERVER_ADDRESS
            self.attacker("hostile", "via-teredo", h, s, s, topology.IPV6_HOST, "all")
            self.attacker("hostile", "via-teredo", h, s, topology.RELAY_ADDRESS, topology.IPV6_HOST, "non-global")
            self.attacker("hostile", "link-local-bubble", topology.HOSTILE_LINK_LOCAL, s, topology.RELAY_ADDRESS,
                          topology.IPV6_HOST)
            self.attacker("v6host", "native-echoes", str(link_local_peer), *map(str, silent))
            self.attacker("hostile", "indirect-bubbles", h, s, str(client1), str(INDIRECT_BUBBLES), "1.0")
            self.attacker("hostile", "spoofed-ras", s, int_to_ipv4(mapping.mapped_ip), str(mapping.mapped_port), h)
            time.sleep(BUBBLE_WATCH)
        addresses_after = self._client1_addresses()
        frames = {node: read_frames(path) for node, path in paths.items()}

        self._judge_server(frames)
        self._judge_relay(frames, silent)
        self._judge_client(frames, mapping, addresses_before, addresses_after)
        results = runner.run((2, 3))  # before the console attacks, which may stall the server
        self.verdict("reach-after", [r.line() for r in results if not r.ok], "; ".join(r.line() for r in results))
        self._judge_console(lab, console)
        traces = [name for name, text in lab.logs().items() if "Traceback" in text]
        self.verdict("no-traceback", [f"{name}'s log holds a traceback" for name in traces],
                     f"no traceback in {', '.join(lab.logs())}")

    def _client1_addresses(self) -> list[str]:
        return sorted(str(a) for ifname, a in self.lab.ipv6_addresses("client1")
                      if ifname == topology.CLIENT_INTERFACE and teredo(a))

    def verdict_exercised(self, name: str, problems: list[str], fine: str, arrived: int, what: str) -> None:
        """A verdict that also fails when the attack never reached its target (nothing was tested)."""
        missing = [] if arrived else [f"not exercised: {what} never arrived"]
        self.verdict(name, missing + problems, f"{fine} ({arrived} sent arrived)")

    def _judge_server(self, frames: dict[str, list[Frame]]) -> None:
        at_server = inner_packets(teredo_arrivals(frames["server"], topology.SERVER_ADDRESS))
        native = [f for f in frames["v6host"] if not f.outgoing]
        self.verdict_exercised(
            "na", [f"on the native link at the IPv6 host: {describe(f)}"
                   for f in teredo_neighbor_advertisements(native)],
            "no Teredo-sourced neighbor advertisement reached the native link",
            len(teredo_neighbor_advertisements(at_server)), "the NA at the server")
        self.verdict_exercised(
            "hop-limit-1", [f"at the IPv6 host: {describe(f)}" for f in marked(native, attacks.ECHO_HOP_LIMIT_1)],
            "the hop-limit-1 echo did not reach the native link",
            len(marked(at_server, attacks.ECHO_HOP_LIMIT_1)), "the hop-limit-1 echo at the server")
        hops = [parse_header(f.packet).hop_limit for f in marked(native, attacks.ECHO_NORMAL)]
        self.verdict("normal-echo", [] if hops and set(hops) == {63} else
                     [f"the echo sent with hop limit 64 arrived at the IPv6 host {len(hops)} time(s), "
                      f"hop limits {hops} (wanted 63)"], "arrived with hop limit 63")
        self.verdict_exercised(
            "server-non-global", [f"via the server, at the IPv6 host: {describe(f)}"
                                  for f in marked(native, attacks.ECHO_NON_GLOBAL)],
            "no ULA, site-local or v4-mapped echo reached the native link",
            len(marked(at_server, attacks.ECHO_NON_GLOBAL)), "the non-global echoes at the server")

    def _judge_relay(self, frames: dict[str, list[Frame]], silent: list[ipaddress.IPv6Address]) -> None:
        at_relay = frames["relay"]
        on_tun = [f for f in at_relay if f.interface == topology.RELAY_INTERFACE]
        arrived = teredo_arrivals(at_relay, topology.RELAY_ADDRESS)
        self.verdict_exercised(
            "relay-non-global", [f"on the relay's TUN: {describe(f)}" for f in marked(on_tun, attacks.ECHO_NON_GLOBAL)],
            f"no ULA, site-local or v4-mapped echo reached {topology.RELAY_INTERFACE}",
            len(marked(inner_packets(arrived), attacks.ECHO_NON_GLOBAL)), "the non-global echoes at the relay")
        link_local = topology.LINK_LOCAL_V4
        leaks = [f"relay sent {d.source}:{d.source_port} -> {d.destination}:{d.destination_port}"
                 for d in udp_datagrams(f for f in at_relay if f.outgoing) if d.destination in link_local]
        leaks += [f"the hostile host received {d.source}:{d.source_port} -> {d.destination}:{d.destination_port}"
                  for d in udp_datagrams(f for f in frames["hostile"] if not f.outgoing) if d.destination in link_local]
        self.verdict_exercised(
            "link-local", leaks, "nothing was sent to 169.254.0.0/16",
            sum(1 for d in udp_datagrams(f for f in at_relay if not f.outgoing) if d.source in link_local),
            "the bubble from 169.254.0.66 at the relay")
        emitted = bubbles_by_destination((f for f in at_relay if f.outgoing), topology.HOSTILE_SILENT)
        per_host = {peer: len(emitted.get(peer, [])) for peer in silent}
        over = [f"{peer}: {n} bubbles" for peer, n in per_host.items() if n > MAX_BUBBLES_PER_SILENT_HOST][:5]
        total = sum(per_host.values())
        summary = (f"{total} bubbles for {SILENT_HOSTS} silent hosts, at most {max(per_host.values())} per host, "
                   f"{sum(1 for n in per_host.values() if n)} hosts bubbled")
        if not total:
            over.append(f"no bubble at all to the silent hosts: the test did not exercise the relay ({summary})")
        self.verdict("silent-bubbles", [f"{summary}; over {MAX_BUBBLES_PER_SILENT_HOST}, e.g.: " + ", ".join(over)]
                     if over else [], summary)

    def _judge_client(self, frames: dict[str, list[Frame]], mapping: TeredoAddress, before: list[str],
                      after: list[str]) -> None:
        nat = int_to_ipv4(mapping.mapped_ip)
        times = [d.frame.time for d in udp_datagrams(f for f in frames["hostile"] if not f.outgoing)
                 if str(d.source) == nat and str(d.destination) == topology.HOSTILE_ADDRESS
                 and d.destination_port == attacks.HOSTILE_PORT]
        problem = pacing_problem(times, MAX_CLIENT_BUBBLES, MIN_BUBBLE_GAP)
        seen = f"client 1 sent {len(times)} datagrams to {topology.HOSTILE_ADDRESS}:{attacks.HOSTILE_PORT} " \
               f"after {INDIRECT_BUBBLES} indirect bubbles in 1 s"
        at_client = teredo_arrivals(frames["client1"], topology.CLIENT1_ADDRESS)
        forwarded = sum(1 for d in at_client if is_bubble(d.header) and d.origin is not None
                        and int_to_ipv4(d.origin.ip) == topology.HOSTILE_ADDRESS)
        self.verdict_exercised("client-bubbles", [f"{seen}: {problem}"] if problem else [], seen, forwarded,
                               "an indirect bubble at client 1")
        forged = sum(1 for d in at_client if forged_ra_from(d, topology.HOSTILE_ADDRESS))
        self.verdict_exercised("forged-ra", [] if before == after else
                               [f"client 1's Teredo addresses went from {before} to {after} after forged RAs"],
                               f"client 1 kept {before}", forged, "a forged RA at client 1")

    def _judge_console(self, lab: Lab, console: ConsoleAccess) -> None:
        pid = lab.daemons["server"].process.pid
        baseline = len(os.listdir(f"/proc/{pid}/fd"))
        argv = ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "teredo_lab.attacks", "tcp-flood",
                CONSOLE_HOST, str(CONSOLE_PORT), str(IDLE_CONNECTIONS)]
        with lab.background("server", argv) as flood:
            ready = select.select([flood.stdout], [], [], 60)[0]
            opened = json.loads(flood.stdout.readline() or "{}") if ready else {}
            time.sleep(1.0)
            during = len(os.listdir(f"/proc/{pid}/fd"))
            probe = self.attacker("hostile", "rs-probe", topology.HOSTILE_ADDRESS, topology.SERVER_ADDRESS,
                                  str(RS_PROBES), str(RS_PROBE_INTERVAL))
        seen = (f"{opened.get('open', '?')} of {IDLE_CONNECTIONS} idle connections open: the server holds {during} "
                f"descriptors ({baseline} before); {probe['answered']}/{probe['sent']} RS answered meanwhile")
        problems = [seen] if during > baseline + CONSOLE_FD_HEADROOM or probe["answered"] < RS_PROBES - 1 else []
        self.verdict("console-idle", problems, seen)
        try:
            console.run("server", "x" * PASTE_BYTES + "\nexit()\n", timeout=60)
            pasted = "the console took the paste"
        except LabError as e:
            reason = "it timed out" if "timed out" in str(e) else str(e).splitlines()[-1][:200]
            pasted = f"the console session with the paste failed: {reason}"
        probe = self.attacker("hostile", "rs-probe", topology.HOSTILE_ADDRESS, topology.SERVER_ADDRESS,
                              str(RS_PROBES), str(RS_PROBE_INTERVAL))
        seen = f"{pasted}; then {probe['answered']}/{probe['sent']} RS answered"
        running = lab.is_running("server")
        self.verdict("console-paste", [] if running and probe["answered"] >= RS_PROBES - 1 else
                     [seen + ("" if running else "; the server daemon exited")], seen)


class HostileTrafficInLab(unittest.TestCase):
    """Hostile traffic from the lab's Internet, judged by capture at the places it must not reach."""

    timeout = 600
    _outcome: ClassVar[HostileRun | None] = None

    def assertFinding(self, name: str) -> None:
        cls = type(self)
        if cls._outcome is None:
            skip_unless_lab(lab_skip_reason(need_miredo=False) or ours_missing({"server", "relay", "client"})
                            or missing_tools())
            cls._outcome = HostileRun().execute()
        run = cls._outcome
        if name not in run.findings:
            raise self.failureException(f"{name}: not judged.\n{run.report}")
        held, seen = run.findings[name]
        if not held:
            raise self.failureException(f"{name}: {seen}\n{run.report}")

    def test_server_does_not_forward_neighbor_advertisement_to_native_link(self) -> None:
        self.assertFinding("na")

    def test_server_does_not_forward_hop_limit_1_echo(self) -> None:
        self.assertFinding("hop-limit-1")

    def test_server_forwards_normal_echo_with_hop_limit_decremented(self) -> None:
        self.assertFinding("normal-echo")

    def test_server_does_not_forward_to_non_global_destinations(self) -> None:
        self.assertFinding("server-non-global")

    def test_relay_does_not_forward_to_non_global_destinations(self) -> None:
        self.assertFinding("relay-non-global")

    def test_nothing_is_sent_to_a_link_local_mapping(self) -> None:
        self.assertFinding("link-local")

    def test_relay_bubbles_silent_hosts_a_bounded_number_of_times(self) -> None:
        self.assertFinding("silent-bubbles")

    def test_client_paces_bubbles_to_a_chosen_address(self) -> None:
        self.assertFinding("client-bubbles")

    def test_forged_router_advertisement_leaves_client_qualification(self) -> None:
        self.assertFinding("forged-ra")

    def test_idle_console_connections_are_bounded_and_server_answers(self) -> None:
        self.assertFinding("console-idle")

    def test_console_paste_leaves_server_answering(self) -> None:
        self.assertFinding("console-paste")

    def test_clients_still_reach_ipv6_host(self) -> None:
        self.assertFinding("reach-after")

    def test_no_traceback_in_daemon_logs(self) -> None:
        self.assertFinding("no-traceback")

"""Tests for the IPv6 TUN device: in memory without root, then a real TUN inside a namespace."""

from __future__ import annotations

import errno
import os
import select
import shutil
import struct
import subprocess
import sys
import time
from ipaddress import IPv6Address, IPv6Interface, IPv6Network

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.pair import testing
from twisted.pair.tuntap import TunnelFlags
from twisted.trial import unittest

from teredo_appliance.netlink import Link, LinkError
from teredo_appliance.stats import Counters
from teredo_appliance.tunnel import Tunnel, _IPv6Packets
from tests.fakes import FakeLink, kernel_sends, memory_tun_system, tun_device

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ipv6_packet(payload_len: int = 8, next_header: int = 59) -> bytes:
    """An IPv6 packet 2001:db8::1 -> 2001:db8::2 with a zero payload of `payload_len` bytes."""
    header = struct.pack("!IHBB", 6 << 28, payload_len, next_header, 64)
    src, dst = IPv6Address("2001:db8::1").packed, IPv6Address("2001:db8::2").packed
    return header + src + dst + bytes(payload_len)


class MemoryTunnelTests(unittest.SynchronousTestCase):
    """The Tunnel on twisted.pair.testing.MemoryIOSystem with a fake netlink: no root needed."""

    def setUp(self) -> None:
        self.system = memory_tun_system()
        self.reactor = MemoryReactorClock()
        self.calls: list[tuple] = []
        self.failing: set[str] = set()
        self.received: list[bytes] = []
        self.counters = Counters()
        self.tun = Tunnel(
            "teredo",
            1280,
            self.received.append,
            counters=self.counters,
            reactor=self.reactor,
            system=self.system,
            link_factory=lambda name: FakeLink(name, self.calls, self.failing),
        )

    def device(self) -> testing.Tunnel:
        return tun_device(self.system)

    def read(self, *packets: bytes) -> None:
        kernel_sends(self.system, self.reactor, *packets)

    def test_open_creates_tun_and_configures_link(self) -> None:
        self.tun.open()
        device = self.device()
        self.assertEqual(device.tunnelMode, (TunnelFlags.IFF_TUN | TunnelFlags.IFF_NO_PI).value)
        self.assertEqual(device.requestedName.rstrip(b"\0"), b"teredo")
        self.assertFalse(device.blocking)
        self.assertTrue(device.closeOnExec)
        self.assertEqual(self.calls, [("prepare",), ("up", 1280)])
        self.assertEqual(self.tun.name, os.fsdecode(device.name))
        self.assertEqual(len(self.reactor.getReaders()), 1)

    def test_packets_reach_callback_in_order(self) -> None:
        self.tun.open()
        first, second = ipv6_packet(8), ipv6_packet(16)
        self.read(first, second)
        self.assertEqual(self.received, [first, second])
        self.assertEqual(self.counters.drops(), {})

    def test_1280_byte_packets_carried_both_ways(self) -> None:
        self.tun.open()
        packet = ipv6_packet(1280 - 40)
        self.assertEqual(len(packet), 1280)
        self.read(packet)
        self.tun.write(packet)
        self.assertEqual(self.received, [packet])
        self.assertEqual(self.counters.traffic(), {"tun_in": 1280, "tun_out": 1280})
        self.assertEqual(list(self.device().writeBuffer), [packet])

    def test_non_ipv6_and_short_packets_dropped_and_counted(self) -> None:
        self.tun.open()
        ipv4 = b"\x45" + bytes(39)
        self.read(ipv4, b"\x60" * 39, b"", ipv6_packet())
        self.assertEqual(self.received, [ipv6_packet()])
        self.assertEqual(self.counters.drops(), {"tun.not_ipv6": 1, "tun.short": 2})
        self.assertEqual(self.counters.traffic(), {"tun_in": 40 + 39 + 0 + len(ipv6_packet())})

    def test_write_reaches_device(self) -> None:
        self.tun.open()
        self.tun.write(ipv6_packet(8))
        self.tun.write(ipv6_packet(9))
        self.assertEqual(list(self.device().writeBuffer), [ipv6_packet(8), ipv6_packet(9)])

    def test_write_errors_are_counted_not_raised(self) -> None:
        self.tun.open()
        self.tun.write(ipv6_packet(1500))  # larger than the device's buffer: ENOBUFS

        def full(datagram: bytes) -> int:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

        self.device().write = full
        self.tun.write(ipv6_packet())
        self.assertEqual(self.counters.drops(), {"tun.write_enobufs": 1, "tun.write_eagain": 1})
        self.assertNotIn("tun_out", self.counters.traffic())  # refused packets are not bytes out

    def test_write_when_closed_is_counted(self) -> None:
        self.tun.write(ipv6_packet())
        self.assertEqual(self.counters.drops(), {"tun.closed": 1})

    def test_set_addresses_replaces_only_what_changed(self) -> None:
        self.tun.open()
        link_local = IPv6Interface("fe80::8000:ffff:ffff:fffd/64")
        old, new = IPv6Interface("2001:0:c612:3::1/32"), IPv6Interface("2001:0:c612:3::2/32")
        self.tun.set_addresses([old, link_local])
        del self.calls[:]
        self.tun.set_addresses([new, link_local])
        self.assertEqual(self.calls, [("remove_address", old), ("add_address", new)])
        self.assertEqual(self.tun.status()["addresses"], [str(link_local), str(new)])

    def test_close_removes_routes_and_addresses_then_device(self) -> None:
        self.tun.open()
        address = IPv6Interface("fe80::ffff:ffff:ffff/64")
        self.tun.set_addresses([address])
        self.tun.add_route(IPv6Network("2001::/32"))
        self.tun.add_route(IPv6Network("::/0"), metric=1029)
        del self.calls[:]
        d = self.tun.close()
        self.assertEqual(
            self.calls,
            [
                ("remove_route", IPv6Network("::/0"), 1029),
                ("remove_route", IPv6Network("2001::/32"), None),
                ("remove_address", address),
            ],
        )
        self.assertEqual(self.reactor.getReaders(), [])
        self.reactor.advance(0)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.system._openFiles, {})
        self.assertEqual(self.tun.status()["open"], False)
        self.assertIsNone(self.successResultOf(self.tun.close()))

    def test_close_completes_even_if_removal_fails(self) -> None:
        self.tun.open()
        self.tun.add_route(IPv6Network("2001::/32"))
        self.failing.add("remove_route")
        d = self.tun.close()
        self.reactor.advance(0)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.system._openFiles, {})

    def test_remove_route(self) -> None:
        self.tun.open()
        self.tun.add_route(IPv6Network("::/0"), metric=1029)
        self.tun.remove_route(IPv6Network("::/0"), metric=1029)
        self.assertEqual(self.calls[-1], ("remove_route", IPv6Network("::/0"), 1029))
        self.assertEqual(self.tun.status()["routes"], [])

    def test_failed_route_is_not_remembered(self) -> None:
        self.tun.open()
        self.failing.add("add_route")
        self.assertRaises(LinkError, self.tun.add_route, IPv6Network("2001::/32"))
        self.assertEqual(self.tun.status()["routes"], [])

    def test_failed_link_setup_closes_device(self) -> None:
        self.failing.add("up")
        error = self.assertRaises(LinkError, self.tun.open)
        self.assertIn("cannot up", str(error))
        self.reactor.advance(0)
        self.assertEqual(self.system._openFiles, {})
        self.assertEqual(self.reactor.getReaders(), [])

    def test_close_after_a_failed_open_waits_until_the_device_is_gone(self) -> None:
        self.failing.add("up")
        self.assertRaises(LinkError, self.tun.open)
        closed = self.tun.close()  # what a stopping role waits on before its successor opens the name
        self.assertNoResult(closed)
        self.assertNotEqual(self.system._openFiles, {})
        self.reactor.advance(0)
        self.successResultOf(closed)
        self.assertEqual(self.system._openFiles, {})

    def test_refused_tunsetiff_closes_the_descriptor(self) -> None:
        def busy(fd: int, request: int, args: bytes) -> bytes:
            raise OSError(errno.EBUSY, "Device or resource busy")

        self.system.ioctl = busy  # type: ignore[method-assign]  # e.g. the name is a non-TUN device
        for _ in range(10):
            error = self.assertRaises(LinkError, self.tun.open)
            self.assertIn("Device or resource busy", str(error))
        self.assertEqual(self.system._openFiles, {})

    def test_tun_open_failure_is_a_clear_error(self) -> None:
        self.system.permissions.clear()
        error = self.assertRaises(LinkError, self.tun.open)
        self.assertEqual(str(error), "teredo: cannot open TUN device: Operation not permitted")

    def test_name_too_long(self) -> None:
        tun = Tunnel("x" * 16, 1280, self.received.append, system=self.system, reactor=self.reactor)
        error = self.assertRaises(LinkError, tun.open)
        self.assertIn("1 to 15 bytes", str(error))
        self.assertEqual(self.system._openFiles, {})

    def test_configuration_needs_open_device(self) -> None:
        error = self.assertRaises(RuntimeError, self.tun.set_addresses, [IPv6Interface("fe80::1/64")])
        self.assertIn("not open", str(error))

    def test_status(self) -> None:
        self.tun.open()
        self.tun.set_addresses([IPv6Interface("fe80::ffff:ffff:ffff/64")])
        self.tun.add_route(IPv6Network("2001::/32"))
        self.assertEqual(
            self.tun.status(),
            {
                "interface": self.tun.name,
                "open": True,
                "mtu": 1280,
                "offload": False,  # a memory TUN has no offloads
                "addresses": ["fe80::ffff:ffff:ffff/64"],
                "routes": [{"prefix": "2001::/32", "metric": None, "protocol": None}],
            },
        )


class PacketFilterTests(unittest.SynchronousTestCase):
    @given(st.binary(max_size=200))
    def test_any_bytes_are_delivered_or_counted(self, data: bytes) -> None:
        received: list[bytes] = []
        counters = Counters()
        _IPv6Packets(received.append, counters).datagramReceived(data)
        delivered = len(data) >= 40 and data[0] >> 4 == 6
        self.assertEqual(received, [data] if delivered else [])
        self.assertEqual(sum(counters.drops().values()), 0 if delivered else 1)


    def test_a_failing_handler_costs_a_drop_and_one_log_line(self) -> None:
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        counters = Counters()

        def broken(packet: bytes) -> None:
            raise KeyError("bug")

        packets = _IPv6Packets(broken, counters)
        for _ in range(3):
            packets.datagramReceived(ipv6_packet())
        self.assertEqual(counters.drops(), {"internal-error": 3})
        self.assertEqual(len([event for event in events if event.get("log_failure")]), 1)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)


class LinkErrorTests(unittest.SynchronousTestCase):
    def test_missing_device_named_in_error(self) -> None:
        name = f"nx{os.getpid()}"
        error = self.assertRaises(LinkError, Link(name).add_route, IPv6Network("2001::/32"))
        self.assertEqual(str(error), f"{name}: cannot add route 2001::/32: no such device")


# --- Root tests: a real TUN in a namespace the test creates, driven by a helper process. ---


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_reply(request: bytes) -> bytes | None:
    """The ICMPv6 echo reply to `request` if it is an echo request (RFC 4443 §4.2), else None."""
    if len(request) < 48 or request[6] != 58 or request[40] != 128:
        return None
    src, dst, icmp = request[8:24], request[24:40], bytearray(request[40:])
    icmp[0], icmp[2:4] = 129, b"\0\0"
    pseudo = dst + src + struct.pack("!IxxxB", len(icmp), 58)
    icmp[2:4] = struct.pack("!H", _checksum(pseudo + bytes(icmp)))
    return request[:8] + dst + src + bytes(icmp)


def helper_main(name: str) -> None:
    """Inside the test namespace: open a real Tunnel and obey commands read on stdin.

    Commands: "addresses A/P ...", "route PREFIX [METRIC]", "close". Replies: "ready NAME",
    "ok", "error MESSAGE", "closed"; and "echo SRC DST" for each echo request answered.
    """
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver

    class Driver(LineReceiver):
        delimiter = b"\n"

        def reply(self, text: str) -> None:
            self.sendLine(text.encode())

        def on_packet(self, packet: bytes) -> None:
            reply = echo_reply(packet)
            if reply is not None:
                src, dst = IPv6Address(packet[8:24]), IPv6Address(packet[24:40])
                self.reply(f"echo {src} {dst}")
                tun.write(reply)

        def connectionMade(self) -> None:
            tun.open()
            self.reply("ready " + tun.name)

        def connectionLost(self, reason: object = None) -> None:
            reactor.stop()

        def lineReceived(self, line: bytes) -> None:
            command, *args = line.decode().split()
            try:
                if command == "addresses":
                    tun.set_addresses(IPv6Interface(a) for a in args)
                elif command == "route":
                    tun.add_route(IPv6Network(args[0]), int(args[1]) if len(args) > 1 else None)
                elif command == "close":
                    d = tun.close().addCallback(lambda _: self.reply("closed"))
                    d.addBoth(lambda _: self.transport.loseConnection())
                    return
            except LinkError as e:
                self.reply(f"error {e}")
                return
            self.reply("ok")

    driver = Driver()
    tun = Tunnel(name, 1280, driver.on_packet)
    stdio.StandardIO(driver)
    reactor.run()


class Helper:
    """The helper process, seen from the test: send a command, wait for a reply line."""

    def __init__(self, testcase: unittest.SynchronousTestCase, namespace: str, name: str) -> None:
        self.stderr = open(testcase.mktemp(), "w+b")  # noqa: SIM115 (closed in cleanup)
        testcase.addCleanup(self.stderr.close)
        code = f"from tests.test_tunnel import helper_main; helper_main({name!r})"
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env={**os.environ, "PYTHONPATH": REPO},
        )
        testcase.addCleanup(self.stop)
        self.buffer = b""
        self.lines: list[str] = []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5)
        self.process.stdin.close()
        self.process.stdout.close()

    def send(self, command: str) -> None:
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()

    def expect(self, prefix: str, timeout: float = 10.0) -> str:
        """The first unread line starting with `prefix`; other lines stay unread."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if line.startswith(prefix):
                    self.lines.remove(line)
                    return line
            remaining = deadline - time.monotonic()
            fd = self.process.stdout.fileno()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise AssertionError(f"no {prefix!r} from helper; got {self.lines}; stderr: {self.errors()}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"helper exited; got {self.lines}; stderr: {self.errors()}")
            self.buffer += chunk
            *complete, self.buffer = self.buffer.split(b"\n")
            self.lines += [line.decode() for line in complete]

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-2000:]


class RealTunnelTests(unittest.SynchronousTestCase):
    """A real TUN in a private network namespace: addresses, routes, packets both ways, cleanup."""

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root: creates a network namespace and a TUN device")
        if not os.path.exists("/dev/net/tun") or shutil.which("ping") is None:
            raise unittest.SkipTest("needs /dev/net/tun and ping")
        self.namespace = f"tuntest{os.getpid()}"
        made = subprocess.run(["ip", "netns", "add", self.namespace], capture_output=True, text=True)
        if made.returncode:
            raise unittest.SkipTest(f"network namespaces unavailable: {made.stderr.strip()}")
        self.addCleanup(subprocess.run, ["ip", "netns", "del", self.namespace], check=False)
        self.name = f"tt{os.getpid()}"

    def ns(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, *command], capture_output=True, text=True, check=check
        )

    def addresses(self) -> set[str]:
        out = self.ns("ip", "-6", "-o", "addr", "show", "dev", self.name).stdout
        return {line.split()[3] for line in out.splitlines()}

    def test_real_tun(self) -> None:
        helper = Helper(self, self.namespace, self.name)
        self.assertEqual(helper.expect("ready"), f"ready {self.name}")
        link = self.ns("ip", "link", "show", self.name).stdout
        self.assertIn("mtu 1280", link)
        self.assertIn(",UP,", link)
        self.assertEqual(self.addresses(), set(), "the kernel added an address of its own")

        helper.send("addresses fe80::ffff:ffff:ffff/64 2001:db8:1::1/64")
        helper.expect("ok")
        helper.send("route 2001:db8::/32 1029")
        helper.expect("ok")
        helper.send("route ::/0 1029")
        helper.expect("ok")
        self.assertEqual(self.addresses(), {"fe80::ffff:ffff:ffff/64", "2001:db8:1::1/64"})
        routes = self.ns("ip", "-6", "route", "show", "dev", self.name).stdout
        self.assertRegex(routes, r"2001:db8::/32 .*metric 1029")
        self.assertRegex(routes, r"default .*metric 1029")

        helper.send("route 2001:db8::/32 1029")
        error = helper.expect("error")
        self.assertEqual(error, f"error {self.name}: cannot add route 2001:db8::/32 metric 1029: File exists")

        helper.send("addresses fe80::ffff:ffff:ffff/64 2001:db8:2::1/64")
        helper.expect("ok")
        self.assertEqual(self.addresses(), {"fe80::ffff:ffff:ffff/64", "2001:db8:2::1/64"})

        # Kernel -> TUN -> on_packet; the helper writes the echo reply: TUN -> kernel -> ping.
        ping = self.ns("ping", "-6", "-c1", "-W5", "2001:db8::5", check=False)
        self.assertEqual(ping.returncode, 0, ping.stdout + ping.stderr)
        self.assertEqual(helper.expect("echo"), "echo 2001:db8:2::1 2001:db8::5")

        helper.send("close")
        helper.expect("closed")
        self.assertEqual(helper.process.wait(10), 0)
        self.assertNotEqual(self.ns("ip", "link", "show", self.name, check=False).returncode, 0)
        routes = self.ns("ip", "-6", "route", "show").stdout
        self.assertNotIn("2001:db8", routes)
        self.assertNotIn("default", routes)

    def test_failed_opens_leak_no_descriptor(self) -> None:
        """`interface: lo` (a device that is not a TUN) is refused each time, and costs no fd."""
        code = (
            "import os; from teredo_appliance.tunnel import Tunnel, LinkError\n"
            "def attempt():\n"
            "    try:\n"
            "        Tunnel('lo', 1280, print).open()\n"
            "    except LinkError as e:\n"
            "        return str(e)\n"
            "attempt()  # the first also sets up the reactor (its own descriptors)\n"
            "before = len(os.listdir('/proc/self/fd'))\n"
            "errors = [attempt() for _ in range(10)]\n"
            "print(len(os.listdir('/proc/self/fd')) - before, errors[-1])\n"
        )
        out = self.ns("env", f"PYTHONPATH={REPO}", sys.executable, "-c", code).stdout.strip()
        leaked, error = out.split(" ", 1)
        self.assertEqual(leaked, "0", out)
        self.assertTrue(error.startswith("lo: cannot open TUN device: "), error)

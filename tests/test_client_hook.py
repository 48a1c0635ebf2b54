"""hook.py and netwatch.py: the client's helpers, with real processes and crafted netlink."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import struct
import tempfile

from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from teredo_appliance import hook as hook_module
from teredo_appliance.hook import Hook, hook_environment
from teredo_appliance.netwatch import (
    DEBOUNCE,
    IFADDRMSG,
    IFINFOMSG,
    NLMSG_HEADER,
    RT_SCOPE_HOST,
    RT_TABLE_MAIN,
    RTA_OIF,
    RTATTR,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTMSG,
    NetWatch,
    is_relevant,
    tun_watch,
)


def scratch(test: TestCase) -> str:
    directory = tempfile.mkdtemp()
    test.addCleanup(shutil.rmtree, directory)
    return directory


def script(test: TestCase, body: str) -> str:
    path = os.path.join(scratch(test), "hook")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, stat.S_IRWXU)
    return path


class HookTests(TestCase):
    def test_environment_is_miredos(self) -> None:
        env = hook_environment("up", "teredo", "fe80::ffff:ffff:ffff", 1280, "2001:0:c612:1::1",
                               {"ADDRESS": "2001:0:c612:1::2"})
        self.assertEqual(
            {k: v for k, v in env.items() if k != "PATH"},
            {"STATE": "up", "IFACE": "teredo", "LLADDRESS": "fe80::ffff:ffff:ffff", "MTU": "1280",
             "ADDRESS": "2001:0:c612:1::1", "OLD_ADDRESS": "2001:0:c612:1::2"},
        )

    async def test_runs_in_order_without_blocking(self) -> None:
        out = os.path.join(scratch(self), "log")
        path = script(self, f'sleep 0.1; echo "$STATE $IFACE $ADDRESS" >> {out}\n')
        h = Hook(path, reactor)
        h.run(hook_environment("up", "teredo", "fe80::ffff:ffff:ffff", 1280, "2001::1", None))
        h.run(hook_environment("down", "teredo", "fe80::ffff:ffff:ffff", 1280, None, None))
        self.assertFalse(os.path.exists(out))  # run() returned before the hook did anything
        await h.wait()
        with open(out) as f:
            self.assertEqual(f.read(), "up teredo 2001::1\ndown teredo \n")
        self.assertEqual((h.runs, h.failures), (2, 0))

    async def test_failure_is_counted_and_the_next_still_runs(self) -> None:
        path = script(self, 'echo "no luck" >&2; test "$STATE" = down\n')
        h = Hook(path, reactor)
        h.run(hook_environment("up", "teredo", "fe80::1", 1280, "2001::1", None))
        h.run(hook_environment("down", "teredo", "fe80::1", 1280, None, None))
        await h.wait()
        self.assertEqual((h.runs, h.failures), (2, 1))
        self.flushLoggedErrors()

    async def test_hanging_hook_is_killed(self) -> None:
        self.patch(hook_module, "HOOK_TIMEOUT", 0.2)
        h = Hook(script(self, "exec sleep 30\n"), reactor)
        h.run(hook_environment("up", "teredo", "fe80::1", 1280, "2001::1", None))
        await h.wait()
        self.assertEqual(h.failures, 1)

    def test_backlog_is_bounded(self) -> None:
        clock = MemoryReactorClock()
        clock.spawnProcess = lambda *a, **k: object()  # type: ignore[attr-defined]
        h = Hook("/bin/true", clock)
        for _ in range(hook_module.MAX_BACKLOG + 5):
            h.run(hook_environment("up", "teredo", "fe80::1", 1280, "2001::1", None))
        self.assertEqual(h.dropped, 4)  # one runs, MAX_BACKLOG wait


def message(kind: int, body: bytes) -> bytes:
    length = NLMSG_HEADER.size + len(body)
    return NLMSG_HEADER.pack(length, kind, 0, 0, 0) + body + bytes(-length % 4)


def address(family: int = socket.AF_INET, scope: int = 0) -> bytes:
    return message(RTM_NEWADDR, IFADDRMSG.pack(family, 24, 0, scope, 2))


def route(
    dst_len: int = 0, table: int = RT_TABLE_MAIN, family: int = socket.AF_INET, kind: int = RTM_NEWROUTE
) -> bytes:
    return message(kind, RTMSG.pack(family, dst_len, 0, 0, table, 3, 0, 1, 0))


class NetlinkParseTests(SynchronousTestCase):
    def test_ipv4_address_change(self) -> None:
        self.assertTrue(is_relevant(address()))

    def test_host_scope_and_ipv6_addresses_are_not(self) -> None:
        self.assertFalse(is_relevant(address(scope=RT_SCOPE_HOST)))
        self.assertFalse(is_relevant(address(family=socket.AF_INET6)))

    def test_default_route_change(self) -> None:
        self.assertTrue(is_relevant(route()))
        self.assertTrue(is_relevant(route(kind=RTM_DELROUTE)))

    def test_other_routes_are_not(self) -> None:
        self.assertFalse(is_relevant(route(dst_len=24)))
        self.assertFalse(is_relevant(route(table=255)))
        self.assertFalse(is_relevant(route(family=socket.AF_INET6)))

    def test_batches_and_garbage(self) -> None:
        self.assertTrue(is_relevant(route(dst_len=24) + address()))
        self.assertFalse(is_relevant(b""))
        self.assertFalse(is_relevant(struct.pack("=IHHII", 3, RTM_NEWADDR, 0, 0, 0)))
        self.assertFalse(is_relevant(struct.pack("=IHHII", 999, RTM_NEWADDR, 0, 0, 0)))


def link(kind: int, index: int) -> bytes:
    return message(kind, IFINFOMSG.pack(socket.AF_UNSPEC, 65534, index, 0, 0))


def route_via(index: int, kind: int = RTM_DELROUTE, family: int = socket.AF_INET6) -> bytes:
    oif = RTATTR.pack(RTATTR.size + 4, RTA_OIF) + struct.pack("=i", index)
    dst = RTATTR.pack(RTATTR.size + 16, 1) + bytes(16)  # RTA_DST first: the parser walks past it
    return message(kind, RTMSG.pack(family, 32, 0, 0, RT_TABLE_MAIN, 3, 0, 1, 0) + dst + oif)


class TunWatchTests(SynchronousTestCase):
    """The TUN watch acts on our device only: its link, its lost IPv6 addresses and routes."""

    def setUp(self) -> None:
        self.touches = tun_watch(lambda: 7)

    def test_our_link_changed_or_deleted(self) -> None:
        self.assertTrue(self.touches(link(RTM_DELLINK, 7)))
        self.assertTrue(self.touches(link(RTM_NEWLINK, 7)))  # set down, set up
        self.assertFalse(self.touches(link(RTM_DELLINK, 8)))

    def test_our_ipv6_address_removed(self) -> None:
        self.assertTrue(self.touches(message(RTM_DELADDR, IFADDRMSG.pack(socket.AF_INET6, 64, 0, 253, 7))))
        self.assertFalse(self.touches(message(RTM_DELADDR, IFADDRMSG.pack(socket.AF_INET6, 64, 0, 253, 8))))
        self.assertFalse(self.touches(message(RTM_NEWADDR, IFADDRMSG.pack(socket.AF_INET6, 64, 0, 253, 7))))

    def test_our_ipv6_route_removed(self) -> None:
        self.assertTrue(self.touches(route_via(7)))
        self.assertFalse(self.touches(route_via(8)))
        self.assertFalse(self.touches(route_via(7, kind=RTM_NEWROUTE)))
        self.assertFalse(self.touches(route_via(7, family=socket.AF_INET)))

    def test_truncated_attributes_and_closed_device(self) -> None:
        self.assertFalse(self.touches(route_via(7)[:-6]))
        self.assertFalse(tun_watch(lambda: None)(link(RTM_DELLINK, 7)))


class NetWatchTests(SynchronousTestCase):
    def test_burst_gives_one_call_after_the_debounce(self) -> None:
        clock = MemoryReactorClock()
        calls: list[None] = []
        watch = NetWatch(lambda: calls.append(None), clock)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(theirs.close)
        ours.setblocking(False)
        watch._socket = ours
        clock.addReader(watch)
        for data in (route(dst_len=24), address(), route()):
            theirs.send(data)
        watch.doRead()
        theirs.send(address())
        watch.doRead()
        clock.advance(DEBOUNCE)
        self.assertEqual(len(calls), 1)
        theirs.send(route(dst_len=24))
        watch.doRead()
        clock.advance(DEBOUNCE)
        self.assertEqual(len(calls), 1)
        watch.stop()
        self.assertEqual(clock.getReaders(), [])

    def test_real_socket_starts_and_stops(self) -> None:
        clock = MemoryReactorClock()
        watch = NetWatch(lambda: None, clock)
        watch.start()
        self.assertGreaterEqual(watch.fileno(), 0)
        self.assertEqual(clock.getReaders(), [watch])
        watch.stop()
        self.assertEqual(watch.fileno(), -1)

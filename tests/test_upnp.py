"""upnp/: SSDP and SOAP texts, the lease timing, and the client against an in-process IGD."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from teredo_appliance.upnp import lease, messages
from teredo_appliance.upnp.client import IGDClient, PortMapper
from teredo_appliance.upnp.messages import UPnPError
from tests.fake_igd import DESCRIPTION, FAULT, SERVICE, FakeIGD

LOCATION = "http://198.19.1.1:5000/rootDesc.xml"


class MessageTests(unittest.SynchronousTestCase):
    def test_m_search(self) -> None:
        text = messages.m_search().decode()
        self.assertTrue(text.startswith("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"))
        self.assertIn('MAN: "ssdp:discover"\r\n', text)
        self.assertIn("ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n", text)
        self.assertTrue(text.endswith("\r\n\r\n"))

    def test_search_location(self) -> None:
        answer = b"HTTP/1.1 200 OK\r\nST: x\r\nLocation:  " + LOCATION.encode() + b"\r\n\r\n"
        self.assertEqual(messages.search_location(answer), LOCATION)

    def test_search_answers_refused(self) -> None:
        for data, reason in (
            (b"NOTIFY * HTTP/1.1\r\n\r\n", "ssdp-not-ok"),
            (b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n", "ssdp-no-location"),
            (b"HTTP/1.1 200 OK\r\nLOCATION: file:///etc/passwd\r\n\r\n", "ssdp-bad-location"),
            (b"HTTP/1.1 200 OK\r\n\xff\r\n", "ssdp-not-ascii"),
        ):
            with self.assertRaises(UPnPError) as caught:
                messages.search_location(data)
            self.assertEqual(caught.exception.reason, reason)

    def test_description_gives_the_absolute_control_url(self) -> None:
        service = messages.connection_service(DESCRIPTION, LOCATION)
        self.assertEqual(service, messages.Service("http://198.19.1.1:5000/ctl/IPConn", SERVICE))

    def test_description_url_base_and_v1(self) -> None:
        v1 = DESCRIPTION.replace(b"WANIPConnection:2", b"WANIPConnection:1").replace(
            b"<device>", b"<URLBase>http://198.19.1.1:6000/</URLBase><device>", 1
        )
        service = messages.connection_service(v1, LOCATION)
        self.assertEqual(service.control_url, "http://198.19.1.1:6000/ctl/IPConn")
        self.assertEqual(service.service_type, "urn:schemas-upnp-org:service:WANIPConnection:1")

    def test_description_without_connection_or_hostile(self) -> None:
        for document, reason in (
            (DESCRIPTION.replace(b"WANIPConnection:2", b"Layer3Forwarding:1"), "description-no-wan-connection"),
            (b'<!DOCTYPE r [<!ENTITY a "aaaa">]><r>&a;</r>', "description-doctype"),
            (b"<root", "description-not-xml"),
        ):
            with self.assertRaises(UPnPError) as caught:
                messages.connection_service(document, LOCATION)
            self.assertEqual(caught.exception.reason, reason)

    def test_soap_request_and_response(self) -> None:
        args = messages.add_port_mapping("198.19.1.2", 3544, 40001, 60, "a<b")
        body, action = messages.soap_request(SERVICE, "AddPortMapping", args)
        self.assertEqual(action, f'"{SERVICE}#AddPortMapping"')
        self.assertIn(b"<NewExternalPort>40001</NewExternalPort><NewProtocol>UDP</NewProtocol>", body)
        self.assertIn(b"<NewPortMappingDescription>a&lt;b</NewPortMappingDescription>", body)
        answer = (
            f'<s:Envelope xmlns:s="x"><s:Body><u:GetExternalIPAddressResponse xmlns:u="{SERVICE}">'
            "<NewExternalIPAddress>198.18.0.200</NewExternalIPAddress></u:GetExternalIPAddressResponse>"
            "</s:Body></s:Envelope>"
        ).encode()
        out = messages.soap_response(answer, "GetExternalIPAddress")
        self.assertEqual(messages.external_address(out), ipaddress.IPv4Address("198.18.0.200"))

    def test_soap_fault_carries_the_code(self) -> None:
        with self.assertRaises(UPnPError) as caught:
            messages.soap_response(FAULT.format(code=718, text="Conflict").encode(), "AddPortMapping")
        self.assertEqual((caught.exception.reason, caught.exception.code), ("igd-refused", 718))

    @given(st.binary(max_size=300))
    def test_arbitrary_bytes_raise_only_upnp_error(self, data: bytes) -> None:
        for parse in (
            messages.search_location,
            lambda d: messages.connection_service(d, LOCATION),
            lambda d: messages.soap_response(d, "AddPortMapping"),
        ):
            try:
                parse(data)
            except UPnPError as e:
                self.assertTrue(e.reason)


class LeaseScheduleTests(unittest.SynchronousTestCase):
    def test_renew_at_half_the_lease(self) -> None:
        schedule = lease.LeaseSchedule(600)
        self.assertEqual(schedule.next_at, 0.0)
        schedule.mapped(1000.0)
        self.assertEqual((schedule.next_at, schedule.expires_at), (1300.0, 1600.0))
        self.assertTrue(schedule.is_mapped(1599.0))
        self.assertFalse(schedule.is_mapped(1600.0))

    def test_failures_back_off_up_to_the_ceiling(self) -> None:
        schedule = lease.LeaseSchedule(600)
        delays = []
        for _ in range(9):
            schedule.failed(0.0)
            delays.append(schedule.next_at)
        self.assertEqual(delays[:4], [5.0, 10.0, 20.0, 40.0])
        self.assertEqual(delays[-1], lease.RETRY_MAX)
        schedule.mapped(100.0)
        self.assertEqual(schedule.failures, 0)

    def test_a_failed_renewal_retries_before_the_lease_ends(self) -> None:
        schedule = lease.LeaseSchedule(600)
        schedule.mapped(0.0)
        for now in (300.0, 305.0, 315.0, 335.0, 375.0, 455.0):
            schedule.failed(now)
            self.assertTrue(schedule.is_mapped(now))
            self.assertLess(schedule.next_at, 600.0)
        schedule.failed(600.0)
        self.assertFalse(schedule.is_mapped(600.0))

    def test_released(self) -> None:
        schedule = lease.LeaseSchedule(600)
        schedule.mapped(0.0)
        schedule.released()
        self.assertFalse(schedule.is_mapped(1.0))


class IGDClientTests(unittest.TestCase):
    """The client over real loopback sockets against FakeIGD."""

    timeout = 20

    def setUp(self) -> None:
        self.igd = FakeIGD()
        self.target = self.igd.start()
        self.addCleanup(self.igd.stop)

    def client(self, timeout: float = 2.0) -> IGDClient:
        return IGDClient(reactor, ssdp_target=self.target, timeout=timeout)

    @defer.inlineCallbacks
    def test_discover_external_address_add_delete(self) -> None:
        client = self.client()
        service = yield client.discover()
        self.assertEqual(service, messages.Service(self.igd.url("/ctl/IPConn"), SERVICE))
        self.assertIn(b"M-SEARCH", self.igd.searches[0])
        self.assertEqual(client.internal_client, "127.0.0.1")
        address = yield client.external_address()
        self.assertEqual(address, ipaddress.IPv4Address("198.18.0.200"))
        yield client.add_mapping(3544, 40001, 60)
        self.assertEqual(self.igd.mappings, {40001: ("127.0.0.1", 3544)})
        action, args = self.igd.actions[-1]
        self.assertEqual((action, args["NewProtocol"], args["NewLeaseDuration"]), ("AddPortMapping", "UDP", "60"))
        yield client.delete_mapping(40001)
        self.assertEqual(self.igd.mappings, {})

    @defer.inlineCallbacks
    def test_no_igd(self) -> None:
        self.igd.answer_search = False
        with self.assertRaises(UPnPError) as caught:
            yield self.client(timeout=0.3).discover()
        self.assertEqual(caught.exception.reason, "no-igd")

    @defer.inlineCallbacks
    def test_mapping_refused(self) -> None:
        self.igd.refuse["AddPortMapping"] = 718
        client = self.client()
        yield client.discover()
        with self.assertRaises(UPnPError) as caught:
            yield client.add_mapping(3544, 40001, 60)
        self.assertEqual((caught.exception.reason, caught.exception.code), ("igd-refused", 718))

    @defer.inlineCallbacks
    def test_igd_that_never_answers_times_out(self) -> None:
        client = self.client(timeout=0.3)
        yield client.discover()
        self.igd.hang = True
        with self.assertRaises(UPnPError) as caught:
            yield client.add_mapping(3544, 40001, 60)
        self.assertEqual(caught.exception.reason, "timeout")


class PortMapperTests(unittest.TestCase):
    """The service: map at start, renew at half the lease (task.Clock), delete at stop."""

    timeout = 20

    def setUp(self) -> None:
        self.igd = FakeIGD()
        target = self.igd.start()
        self.addCleanup(self.igd.stop)
        self.clock = task.Clock()
        self.mapper = PortMapper(IGDClient(reactor, ssdp_target=target, timeout=2.0), 3544, 40001, 120, self.clock)

    @defer.inlineCallbacks
    def test_map_renew_delete(self) -> None:
        self.mapper.startService()
        yield self.mapper.settled()
        self.assertEqual(self.igd.mappings, {40001: ("127.0.0.1", 3544)})
        status = self.mapper.status()
        self.assertEqual(
            (status["mapped"], status["external_address"], status["lease_left"]), (True, "198.18.0.200", 120)
        )
        self.clock.advance(59)
        self.assertEqual(self.igd.count("AddPortMapping"), 1)
        self.clock.advance(1)  # half the lease
        yield self.mapper.settled()
        self.assertEqual(self.igd.count("AddPortMapping"), 2)
        self.assertEqual(self.igd.count("GetExternalIPAddress"), 1)  # a renewal does not rediscover
        self.assertEqual(self.mapper.counters["upnp.mapped"], 1)
        self.assertEqual(self.mapper.counters["upnp.renewed"], 1)
        yield self.mapper.stopService()
        self.assertEqual(self.igd.mappings, {})
        self.assertEqual(self.mapper.counters["upnp.deleted"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_refused_mapping_is_counted_and_retried(self) -> None:
        self.igd.refuse["AddPortMapping"] = 718
        self.mapper.startService()
        yield self.mapper.settled()
        self.assertEqual(self.mapper.counters["upnp.error.igd-refused"], 1)
        self.assertFalse(self.mapper.status()["mapped"])
        self.assertIn("718", self.mapper.status()["last_error"])
        (retry,) = self.clock.getDelayedCalls()
        self.assertEqual(retry.getTime(), lease.RETRY_FIRST)
        del self.igd.refuse["AddPortMapping"]
        self.clock.advance(lease.RETRY_FIRST)
        yield self.mapper.settled()
        self.assertTrue(self.mapper.status()["mapped"])
        self.assertIsNone(self.mapper.status()["last_error"])
        yield self.mapper.stopService()
        self.assertEqual(self.igd.count("DeletePortMapping"), 1)

    @defer.inlineCallbacks
    def test_stop_without_mapping_deletes_nothing(self) -> None:
        self.igd.answer_search = False
        self.mapper.client.search_window = 0.2
        self.mapper.startService()
        yield self.mapper.settled()
        self.assertEqual(self.mapper.counters["upnp.error.no-igd"], 1)
        yield self.mapper.stopService()
        self.assertEqual(self.igd.actions, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

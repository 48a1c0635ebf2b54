"""The appliance: children per role, the reload diff and its rules, SIGHUP, log level, privileges.

Roles are fakes that journal every lifecycle step, so each rule of a reload (old fully
stopped before the new binds, unchanged untouched, invalid changes nothing, failures
restore the old) is an assertion about the order of that journal.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import signal
from collections import defaultdict
from ipaddress import IPv4Address
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from teredo_appliance import earlyhup, privileges, tap
from teredo_appliance.appliance import Appliance, StartError
from teredo_appliance.config import ConfigError
from teredo_appliance.config_model import (
    ClientConfig,
    Config,
    LogConfig,
    ManholeConfig,
    RelayConfig,
    RolesConfig,
    ServerConfig,
)
from teredo_appliance.console import render_check, render_summary
from teredo_appliance.loglevel import LogSink
from teredo_appliance.plugin import role_names
from teredo_appliance.reload import Plan, describe_changes, plan_reload
from tests.test_config import no_longer_than

SERVER = ServerConfig(bind_address=IPv4Address("198.18.0.1"), bind_address2=IPv4Address("198.18.0.2"))
RELAY = RelayConfig(interface="tr-test")
RELAY_BIGGER = RelayConfig(interface="tr-test", mtu=1400)  # a change that needs a restart
CLIENT = ClientConfig(server_address="198.18.0.1")


def make_config(log: str = "info", manhole: ManholeConfig | None = None, **roles: Any) -> Config:
    return Config(roles=RolesConfig(**roles), manhole=manhole, log=LogConfig(level=log))


class FakeRole(Service):
    """A role that journals (event, role, section) and can fail or stop slowly on demand."""

    def __init__(self, world: World, name: str, section: Any) -> None:
        self.world = world
        self.section = section
        self.setName(name)

    def _note(self, event: str) -> None:
        self.world.journal.append((event, self.name, self.section))

    def privilegedStartService(self) -> None:
        self._note("open")
        error = self.world.fail_open.get(self.section)
        if error is not None:
            raise error
        super().privilegedStartService()

    def startService(self) -> Deferred[None] | None:
        self._note("start")
        super().startService()
        if self.section in self.world.slow_start:  # an asynchronous start, finished by the test
            d: Deferred[None] = Deferred()
            self.world.starting.append(d)
            return d
        return None

    def reconfigurable(self, section: Any) -> bool:
        return self.name not in self.world.refuse_live

    def reconfigure(self, section: Any) -> None:
        self.section = section
        self._note("reconfigure")

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._note("stop")
        if self.name not in self.world.slow_stop:
            self._note("closed")
            return None
        d: Deferred[None] = Deferred()
        d.addCallback(lambda _: self._note("closed"))
        self.world.stopping.append(d)
        return d

    def health(self) -> str | None:
        return self.world.problems.get(self.name) if self.running else None

    def status(self) -> dict[str, Any]:
        return {"role": self.name, "running": bool(self.running), "nat_type": "cone",
                "counters": {"rx.rs": 3}}

    def peers(self, limit: int | None = None) -> list[dict[str, Any]]:
        return [{"address": f"2001:0:c612:1::{n}", "trusted": True} for n in (1, 2, 3)][:limit]

    def peer_count(self) -> int:
        return 3

    qualified = False


class World:
    """The fakes' shared journal and knobs, and the factories that build them."""

    def __init__(self) -> None:
        self.journal: list[tuple[str, str, Any]] = []
        self.built: dict[str, list[FakeRole]] = defaultdict(list)
        self.fail_open: dict[Any, Exception] = {}
        self.fail_build: dict[Any, Exception] = {}
        self.slow_stop: set[str] = set()
        self.problems: dict[str, str] = {}  # what a running role's health() reports
        self.refuse_live: set[str] = set()  # roles whose reconfigurable() says no
        self.slow_start: set[Any] = set()  # sections whose startService returns a Deferred
        self.starting: list[Deferred[None]] = []
        self.stopping: list[Deferred[None]] = []

    def factories(self) -> dict[str, Any]:
        def factory_for(name: str) -> Any:
            def factory(section: Any, reactor: Any = None) -> FakeRole:
                if section in self.fail_build:
                    raise self.fail_build[section]
                role = FakeRole(self, name, section)
                self.built[name].append(role)
                return role

            return factory

        return {name: factory_for(name) for name in role_names()}

    def events(self, *kinds: str) -> list[tuple[str, str, Any]]:
        return [e for e in self.journal if e[0] in kinds]


class ScriptedLoader:
    """Stands in for load_config: returns (or raises) the next scripted outcome."""

    def __init__(self, *outcomes: Config | Exception) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def __call__(self, path: str) -> Config:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class ApplianceCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        self.out = io.StringIO()
        self.sink = LogSink(self.out, LogConfig())

    def running(self, config: Config, *outcomes: Config | Exception) -> Appliance:
        self.loader = ScriptedLoader(*outcomes)
        appliance = Appliance("teredo.yaml", config, reactor=object(), role_factories=self.world.factories(),
                              loader=self.loader, log_sink=self.sink)
        appliance.privilegedStartService()
        appliance.startService()
        self.addCleanup(appliance.stopService)
        self.world.journal.clear()
        return appliance

    def reload(self, appliance: Appliance) -> dict[str, list[str]]:
        return self.successResultOf(appliance.reload())


class PlanTests(SynchronousTestCase):
    def test_each_component_gets_one_action(self) -> None:
        manhole = ManholeConfig(listen="tcp:2222")
        old = make_config(server=SERVER, relay=RELAY, manhole=manhole)
        new = make_config(relay=RELAY_BIGGER, client=CLIENT, manhole=manhole)
        self.assertEqual(plan_reload(old, new),
                         Plan(start=("client",), stop=("server",), restart=("relay",), keep=("manhole",)))

    def test_identical_configs_keep_everything(self) -> None:
        config = make_config(server=SERVER, relay=RELAY)
        self.assertEqual(plan_reload(config, make_config(server=SERVER, relay=RELAY)).keep, ("server", "relay"))

    def test_degraded_role_restarts_even_if_unchanged(self) -> None:
        config = make_config(server=SERVER, relay=RELAY)
        plan = plan_reload(config, make_config(server=SERVER, relay=RELAY), degraded={"relay"})
        self.assertEqual((plan.keep, plan.restart), (("server",), ("relay",)))

    def test_stops_run_in_reverse_start_order(self) -> None:
        plan = plan_reload(make_config(server=SERVER, relay=RELAY, client=CLIENT),
                           make_config(relay=RELAY_BIGGER, client=ClientConfig(server_address="x")))
        self.assertEqual(plan.to_stop(), ("client", "relay", "server"))
        self.assertEqual(plan.to_start(), ("relay", "client"))


class CompositionTests(ApplianceCase):
    def test_one_named_child_per_role(self) -> None:
        appliance = self.running(make_config(server=SERVER, client=CLIENT))
        self.assertEqual(sorted(appliance.namedServices), ["client", "server"])
        self.assertEqual(appliance.getServiceNamed("client").section, CLIENT)
        self.assertTrue(all(child.running for child in appliance))

    def test_privileged_start_reaches_every_role_before_start(self) -> None:
        appliance = Appliance("teredo.yaml", make_config(server=SERVER, relay=RELAY), reactor=object(),
                              role_factories=self.world.factories(), log_sink=self.sink)
        appliance.privilegedStartService()
        self.assertEqual([e[:2] for e in self.world.journal], [("open", "server"), ("open", "relay")])
        appliance.startService()
        self.addCleanup(appliance.stopService)
        self.assertEqual([e[:2] for e in self.world.events("start")], [("start", "server"), ("start", "relay")])

    def test_role_that_cannot_be_built_refuses_the_appliance(self) -> None:
        self.world.fail_build[RELAY] = ValueError("bad TUN name")
        with self.assertRaises(StartError) as caught:
            Appliance("teredo.yaml", make_config(server=SERVER, relay=RELAY), reactor=object(),
                      role_factories=self.world.factories())
        self.assertEqual(caught.exception.errors, ["relay: bad TUN name"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)  # traceback at debug level only

    def test_start_failure_ends_twistd_with_one_line_per_role(self) -> None:
        self.world.fail_open[RELAY] = CannotListenError("0.0.0.0", 3544, OSError(errno.EADDRINUSE, "in use"))
        appliance = Appliance("teredo.yaml", make_config(server=SERVER, relay=RELAY), reactor=object(),
                              role_factories=self.world.factories(), log_sink=self.sink)
        with self.assertRaises(SystemExit) as caught:
            appliance.privilegedStartService()
        self.assertEqual(str(caught.exception.code),
                         "relay: cannot start: Couldn't listen on 0.0.0.0:3544: [Errno 98] in use.")
        self.flushLoggedErrors(CannotListenError)

    def test_status_aggregates_roles_and_peers_names_the_role(self) -> None:
        appliance = self.running(make_config(server=SERVER, relay=RELAY))
        self.assertEqual(list(appliance.status()), ["server", "relay"])
        self.assertEqual(appliance.status()["relay"]["nat_type"], "cone")
        table = appliance.peers("relay")
        self.assertEqual((table["role"], table["total"]), ("relay", 3))
        self.assertEqual(table["peers"][0]["address"], "2001:0:c612:1::1")
        self.assertEqual(len(appliance.peers("relay", limit=2)["peers"]), 2)
        with self.assertRaises(LookupError) as caught:
            appliance.peers("client")
        self.assertEqual(str(caught.exception), "no 'client' role is running (running: server, relay)")


class ReloadTests(ApplianceCase):
    def test_a_live_key_is_applied_in_place(self) -> None:
        """relay max_peers is one of the relay plugin's live keys: same service, no stop, no open."""
        smaller = dataclasses.replace(RELAY, max_peers=10)
        appliance = self.running(make_config(server=SERVER, relay=RELAY), make_config(server=SERVER, relay=smaller))
        relay = appliance.getServiceNamed("relay")
        result = self.reload(appliance)
        self.assertEqual(result, {"started": [], "stopped": [], "restarted": [], "reconfigured": ["relay"],
                                  "unchanged": ["server"], "errors": []})
        self.assertIs(appliance.getServiceNamed("relay"), relay)
        self.assertEqual(self.world.journal, [("reconfigure", "relay", smaller)])
        self.assertEqual(appliance.config, make_config(server=SERVER, relay=smaller))
        self.assertIn("reconfigured: relay", render_summary(result))

    def test_a_live_key_with_another_change_restarts(self) -> None:
        changed = dataclasses.replace(RELAY, max_peers=10, mtu=1400)
        appliance = self.running(make_config(relay=RELAY), make_config(relay=changed))
        result = self.reload(appliance)
        self.assertEqual((result["restarted"], result.get("reconfigured")), (["relay"], None))

    def test_a_service_that_cannot_take_it_in_place_is_restarted(self) -> None:
        self.world.refuse_live.add("relay")
        appliance = self.running(make_config(relay=RELAY), make_config(relay=dataclasses.replace(RELAY, max_peers=10)))
        self.assertEqual(self.reload(appliance)["restarted"], ["relay"])
        self.assertEqual([e[:2] for e in self.world.journal],
                         [("stop", "relay"), ("closed", "relay"), ("open", "relay"), ("start", "relay")])

    def test_check_names_what_would_be_reconfigured(self) -> None:
        appliance = self.running(make_config(relay=RELAY), make_config(relay=dataclasses.replace(RELAY, max_peers=9)))
        check = appliance.check()
        self.assertEqual((check["reconfigure"], check["restart"]), (["relay"], []))
        self.assertIn("would reconfigure: relay", render_check(check))

    def test_added_role_starts_and_unchanged_is_the_same_object(self) -> None:
        appliance = self.running(make_config(server=SERVER), make_config(server=SERVER, relay=RELAY))
        server = appliance.getServiceNamed("server")
        result = self.reload(appliance)
        self.assertEqual(result, {"started": ["relay"], "stopped": [], "restarted": [], "unchanged": ["server"],
                                  "errors": []})
        self.assertIs(appliance.getServiceNamed("server"), server)
        self.assertEqual([e[:2] for e in self.world.journal], [("open", "relay"), ("start", "relay")])
        self.assertEqual(appliance.config, make_config(server=SERVER, relay=RELAY))

    def test_degraded_role_is_restarted_not_called_unchanged(self) -> None:
        config = make_config(server=SERVER, relay=RELAY)
        appliance = self.running(config, make_config(server=SERVER, relay=RELAY))
        self.world.problems["relay"] = "TUN teredo-relay missing"
        relay = appliance.getServiceNamed("relay")
        result = self.reload(appliance)
        self.assertEqual((result["restarted"], result["unchanged"], result["errors"]), (["relay"], ["server"], []))
        self.assertIsNot(appliance.getServiceNamed("relay"), relay)
        self.assertEqual([e[:2] for e in self.world.journal],
                         [("stop", "relay"), ("closed", "relay"), ("open", "relay"), ("start", "relay")])

    def test_removed_role_stops(self) -> None:
        appliance = self.running(make_config(server=SERVER, relay=RELAY), make_config(server=SERVER))
        relay = appliance.getServiceNamed("relay")
        self.assertEqual(self.reload(appliance)["stopped"], ["relay"])
        self.assertNotIn("relay", appliance.namedServices)
        self.assertFalse(relay.running)
        self.assertIsNone(appliance.config.roles.relay)

    def test_changed_role_restarts_only_after_the_old_one_closed(self) -> None:
        appliance = self.running(make_config(server=SERVER, relay=RELAY),
                                 make_config(server=SERVER, relay=RELAY_BIGGER))
        self.world.slow_stop.add("relay")
        d = appliance.reload()
        self.assertNoResult(d)
        self.assertEqual(self.world.journal, [("stop", "relay", RELAY)])  # the new one has not opened
        self.world.stopping.pop().callback(None)
        self.assertEqual(self.world.journal, [("stop", "relay", RELAY), ("closed", "relay", RELAY),
                                              ("open", "relay", RELAY_BIGGER), ("start", "relay", RELAY_BIGGER)])
        self.assertEqual(self.successResultOf(d)["restarted"], ["relay"])
        self.assertEqual(appliance.getServiceNamed("relay").section, RELAY_BIGGER)

    def test_invalid_config_changes_nothing(self) -> None:
        errors = ["teredo.yaml:7: roles.server.bind_address: '300.1.1.1' is not an IPv4 address"]
        config = make_config(server=SERVER, relay=RELAY)
        appliance = self.running(config, ConfigError(errors))
        children = list(appliance)
        self.assertEqual(self.reload(appliance), {"started": [], "stopped": [], "restarted": [],
                                                  "unchanged": ["server", "relay"], "errors": errors})
        self.assertEqual(list(appliance), children)
        self.assertEqual(self.world.journal, [])
        self.assertIs(appliance.config, config)

    def test_unbuildable_role_changes_nothing(self) -> None:
        self.world.fail_build[CLIENT] = ValueError("bad hook")
        appliance = self.running(make_config(server=SERVER, relay=RELAY),
                                 make_config(relay=RELAY_BIGGER, client=CLIENT))
        result = self.reload(appliance)
        self.assertEqual(result["errors"], ["client: bad hook"])
        self.assertEqual(result["unchanged"], ["server", "relay"])
        self.assertEqual(self.world.journal, [])
        self.flushLoggedErrors(ValueError)

    def test_reloads_are_serialised(self) -> None:
        appliance = self.running(make_config(server=SERVER, relay=RELAY),
                                 make_config(server=SERVER, relay=RELAY_BIGGER),
                                 make_config(server=SERVER, relay=RELAY_BIGGER, client=CLIENT))
        self.world.slow_stop.add("relay")
        first, second = appliance.reload(), appliance.reload()
        self.assertEqual(self.loader.calls, 1)  # the second has not even read the file yet
        self.world.stopping.pop().callback(None)
        self.assertEqual(self.successResultOf(first)["restarted"], ["relay"])
        self.assertEqual(self.loader.calls, 2)
        self.assertEqual(self.successResultOf(second),
                         {"started": ["client"], "stopped": [], "restarted": [],
                          "unchanged": ["server", "relay"], "errors": []})

    def test_stop_waits_for_a_reload_in_progress(self) -> None:
        appliance = self.running(make_config(relay=RELAY), make_config(relay=RELAY_BIGGER))
        self.world.slow_stop.add("relay")
        appliance.reload()
        stopped = appliance.stopService()
        self.assertNoResult(stopped)
        self.world.stopping.pop().callback(None)  # the reload finishes, then the stop begins
        self.world.stopping.pop().callback(None)
        self.successResultOf(stopped)
        self.assertEqual([e[0] for e in self.world.journal], ["stop", "closed", "open", "start", "stop", "closed"])

    def test_failed_start_restores_the_old_configuration(self) -> None:
        self.world.fail_open[RELAY_BIGGER] = CannotListenError(
            "0.0.0.0", 3544, OSError(errno.EADDRINUSE, "Address already in use"))
        appliance = self.running(make_config(server=SERVER, relay=RELAY),
                                 make_config(server=SERVER, relay=RELAY_BIGGER))
        result = self.reload(appliance)
        self.assertEqual(result["restored"], ["relay"])
        self.assertEqual(result["restarted"], [])
        self.assertEqual(result["errors"], [
            "relay: cannot start: Couldn't listen on 0.0.0.0:3544: [Errno 98] Address already in use.; "
            "the previous configuration was restored"])
        self.assertEqual(appliance.getServiceNamed("relay").section, RELAY)
        self.assertTrue(appliance.getServiceNamed("relay").running)
        self.assertEqual(appliance.config.roles.relay, RELAY)
        failed = self.world.built["relay"][1]
        self.assertIn(("stop", "relay", RELAY_BIGGER), self.world.journal)  # what it opened is released
        self.assertIsNone(failed.parent)
        self.flushLoggedErrors(CannotListenError)

    def test_a_start_that_fails_later_is_reported_and_rolled_back(self) -> None:
        """The reload waits for an asynchronous start; its failure restores the old relay."""
        self.world.slow_start.add(RELAY_BIGGER)
        appliance = self.running(make_config(server=SERVER, relay=RELAY),
                                 make_config(server=SERVER, relay=RELAY_BIGGER))
        d = appliance.reload()
        self.assertNoResult(d)  # still starting
        self.world.starting.pop().errback(OSError(errno.ENODEV, "No such device"))
        result = self.successResultOf(d)
        self.assertEqual((result["restarted"], result["restored"]), ([], ["relay"]))
        self.assertIn("No such device", result["errors"][0])
        self.assertEqual(appliance.getServiceNamed("relay").section, RELAY)
        self.assertIn(("stop", "relay", RELAY_BIGGER), self.world.journal)
        self.flushLoggedErrors(OSError)

    def test_a_start_that_finishes_later_is_waited_for(self) -> None:
        self.world.slow_start.add(RELAY_BIGGER)
        appliance = self.running(make_config(relay=RELAY), make_config(relay=RELAY_BIGGER))
        d = appliance.reload()
        self.assertNoResult(d)
        self.world.starting.pop().callback(None)
        self.assertEqual(self.successResultOf(d)["restarted"], ["relay"])

    def test_failed_start_and_failed_restore_leave_the_role_stopped(self) -> None:
        self.world.fail_open[RELAY_BIGGER] = OSError(errno.ENODEV, "No such device")
        appliance = self.running(make_config(server=SERVER, relay=RELAY),
                                 make_config(server=SERVER, relay=RELAY_BIGGER))
        self.world.fail_open[RELAY] = OSError(errno.ENODEV, "No such device")
        result = self.reload(appliance)
        self.assertEqual(result["stopped"], ["relay"])
        self.assertEqual(result["errors"], [
            "relay: cannot start: [Errno 19] No such device; the previous configuration could not be "
            "restored either (relay: cannot start: [Errno 19] No such device); relay is not running"])
        self.assertNotIn("relay", appliance.namedServices)
        self.assertIsNone(appliance.config.roles.relay)
        self.flushLoggedErrors(OSError)

    def test_failed_added_role_is_reported_and_absent(self) -> None:
        self.world.fail_open[CLIENT] = OSError(errno.ENODEV, "No such device")
        appliance = self.running(make_config(server=SERVER), make_config(server=SERVER, client=CLIENT))
        result = self.reload(appliance)
        self.assertEqual(result["started"], [])
        self.assertEqual(result["errors"], ["client: cannot start: [Errno 19] No such device; client was not started"])
        self.assertEqual(list(appliance.namedServices), ["server"])
        self.assertIsNone(appliance.config.roles.client)
        self.flushLoggedErrors(OSError)

    def test_log_level_follows_the_config(self) -> None:
        appliance = self.running(make_config(server=SERVER), make_config(log="warn", server=SERVER))
        log = Logger(observer=appliance.log_sink)
        log.info("before")
        self.reload(appliance)
        log.info("after")
        log.warn("warned")
        self.assertIn("before", self.out.getvalue())
        self.assertNotIn("after", self.out.getvalue())
        self.assertIn("warned", self.out.getvalue())


class TruncatedFileTests(ApplianceCase):
    """A file cut short is often still valid: a reload must say loudly what it removes."""

    def captured(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        self.patch(Appliance, "log", Logger(observer=events.append))
        return events

    def test_changes_are_described_section_by_section(self) -> None:
        old = make_config(server=SERVER, relay=RELAY, manhole=ManholeConfig())
        new = make_config(log="debug", relay=RELAY_BIGGER, client=CLIENT)
        self.assertEqual(describe_changes(old, new), [
            "roles.server removed",
            "roles.relay.mtu: 1280 -> 1400",
            "roles.client added",
            "manhole removed",
            "log.level: info -> debug",
        ])
        self.assertEqual(describe_changes(old, old), [])

    def test_long_values_are_cut_in_change_lines(self) -> None:
        changed = describe_changes(make_config(client=CLIENT),
                                   make_config(client=ClientConfig(server_address="a" * 200 + ".example")))
        self.assertEqual(changed, [f"roles.client.server_address: 198.18.0.1 -> {'a' * 37}..."])

    def test_a_reload_that_removes_a_role_warns_with_the_diff(self) -> None:
        appliance = self.running(make_config(server=SERVER, relay=RELAY), make_config(server=SERVER))
        events = self.captured()
        self.reload(appliance)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(formatEvent(warnings[0]),
                         "reloading teredo.yaml: roles.relay no longer in the file: stopping relay (if the file was"
                         " cut short, restore it and reload); changes: roles.relay removed")

    def test_a_reload_that_only_changes_keys_logs_them_at_info(self) -> None:
        appliance = self.running(make_config(relay=RELAY), make_config(relay=RELAY_BIGGER))
        events = self.captured()
        self.reload(appliance)
        self.assertEqual([e["log_level"] for e in events], [LogLevel.info, LogLevel.info])
        self.assertEqual(formatEvent(events[0]), "reloading teredo.yaml: changes: roles.relay.mtu: 1280 -> 1400")

    def test_check_is_a_dry_run(self) -> None:
        appliance = self.running(make_config(server=SERVER, relay=RELAY),
                                 make_config(relay=RELAY_BIGGER, client=CLIENT))
        config, children = appliance.config, list(appliance)
        self.assertEqual(appliance.check(), {
            "start": ["client"], "stop": ["server"], "restart": ["relay"], "unchanged": [],
            "changes": ["roles.server removed", "roles.relay.mtu: 1280 -> 1400", "roles.client added"],
            "warnings": ["roles.server no longer in the file: stopping server (if the file was cut short, restore it"
                         " and reload)"],
            "errors": []})
        self.assertEqual(self.world.journal, [])
        self.assertEqual(list(appliance), children)
        self.assertIs(appliance.config, config)

    def test_a_last_line_without_newline_is_a_warning(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("roles:\n  server:\n    bind_address: 198.18.0.1\nmanhole:\n  authorized_keys: /etc/ter")
        appliance = Appliance(path, make_config(server=SERVER), reactor=object(), role_factories=self.world.factories(),
                              loader=ScriptedLoader(make_config(server=SERVER), make_config(server=SERVER)),
                              log_sink=self.sink)
        hint = f"{path}: the last line has no newline; was the file cut short? (replace it atomically)"
        self.assertEqual(appliance.check()["warnings"], [hint])
        events = self.captured()
        self.successResultOf(appliance.reload())
        self.assertIn(f"reload: {hint}", [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn])

    def test_check_reports_an_invalid_file(self) -> None:
        errors = ["teredo.yaml:3: roles.relay.mtu: 9 is out of range 1280..65535"]
        appliance = self.running(make_config(server=SERVER), ConfigError(errors))
        self.assertEqual(appliance.check(), {"start": [], "stop": [], "restart": [], "unchanged": ["server"],
                                             "changes": [], "warnings": [], "errors": errors})

    def test_check_reports_what_privileges_forbid(self) -> None:
        self.patch(privileges, "privileges_dropped", lambda: True)
        self.patch(privileges, "has_capability", lambda cap, status_path=None: False)
        appliance = self.running(make_config(server=SERVER), make_config(server=SERVER, relay=RELAY))
        result = appliance.check()
        self.assertEqual(result["start"], ["relay"])
        self.assertEqual(len(result["errors"]), 1)
        self.assertIn("relay", result["errors"][0])
        self.assertEqual(self.world.journal, [])


class ReloadFileSafetyTests(SynchronousTestCase):
    def test_reload_from_a_fifo_answers_at_once_and_changes_nothing(self) -> None:
        # The reload reads the file in the reactor thread: a blocking open() would freeze every role.
        fifo = self.mktemp()
        os.mkfifo(fifo)
        world = World()
        appliance = Appliance(fifo, make_config(server=SERVER), reactor=object(), role_factories=world.factories(),
                              log_sink=LogSink(io.StringIO(), LogConfig()))
        appliance.privilegedStartService()
        appliance.startService()
        self.addCleanup(appliance.stopService)
        server = appliance.getServiceNamed("server")
        with no_longer_than(5):
            result = self.successResultOf(appliance.reload())
        self.assertEqual(result, {"started": [], "stopped": [], "restarted": [], "unchanged": ["server"],
                                  "errors": [f"{fifo}: cannot read: a FIFO, not a regular file"]})
        self.assertIs(appliance.getServiceNamed("server"), server)


class SighupTests(TestCase):
    timeout = 10

    def test_sighup_runs_a_reload_and_stop_restores_the_handler(self) -> None:
        world = World()
        before = signal.getsignal(signal.SIGHUP)
        appliance = Appliance("teredo.yaml", make_config(server=SERVER),
                              role_factories=world.factories(),
                              loader=ScriptedLoader(make_config(server=SERVER, relay=RELAY)))
        appliance.privilegedStartService()
        appliance.startService()
        self.addCleanup(appliance.stopService)
        reloaded: Deferred[dict[str, list[str]]] = Deferred()
        real_reload = appliance.reload

        def spy() -> Deferred[dict[str, list[str]]]:
            return real_reload().addCallback(lambda result: reloaded.callback(result) or result)

        appliance.reload = spy  # type: ignore[method-assign]
        os.kill(os.getpid(), signal.SIGHUP)

        def check(result: dict[str, list[str]]) -> Deferred[Any]:
            self.assertEqual(result["started"], ["relay"])
            self.assertIn("relay", appliance.namedServices)
            return appliance.stopService().addCallback(
                lambda _: self.assertEqual(signal.getsignal(signal.SIGHUP), before))

        return reloaded.addCallback(check)

    def test_sighup_before_start_is_survived_and_reloads_once_started(self) -> None:
        before = signal.getsignal(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        self.addCleanup(signal.signal, signal.SIGHUP, before)
        tap.Options()  # what `twistd teredo` builds first (its plugin module does the same)
        self.assertNotEqual(signal.getsignal(signal.SIGHUP), signal.SIG_DFL)  # else the kill ends trial
        os.kill(os.getpid(), signal.SIGHUP)  # the default action would end this process
        queued: list[Any] = []

        class Recorder:
            def callFromThread(self, f: Any, *args: Any) -> None:
                queued.append(f)

        appliance = Appliance("teredo.yaml", make_config(), reactor=Recorder(), role_factories={},
                              log_sink=LogSink(io.StringIO(), LogConfig()))
        appliance.privilegedStartService()
        appliance.startService()
        self.assertEqual(queued, [appliance._reload_on_signal])
        appliance.stopService()
        self.assertFalse(earlyhup.take())  # taken once

    def test_early_handler_only_for_twistd_teredo(self) -> None:
        before = signal.getsignal(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        self.addCleanup(signal.signal, signal.SIGHUP, before)
        earlyhup.install_for_teredo(["twistd", "-n", "web", "--path", "."])
        self.assertEqual(signal.getsignal(signal.SIGHUP), signal.SIG_DFL)
        earlyhup.install_for_teredo(["twistd", "-n", "teredo", "-c", "x.yaml"])
        self.assertNotEqual(signal.getsignal(signal.SIGHUP), signal.SIG_DFL)

    def test_handler_defers_to_the_reactor(self) -> None:
        # The handler itself only queues the reload (a signal may interrupt the reactor anywhere).
        queued: list[Any] = []

        class Recorder:
            def callFromThread(self, f: Any, *args: Any) -> None:
                queued.append(f)

        appliance = Appliance("teredo.yaml", make_config(), reactor=Recorder(), role_factories={})
        appliance._on_sighup(signal.SIGHUP, None)
        self.assertEqual(queued, [appliance._reload_on_signal])


class PrivilegeTests(SynchronousTestCase):
    """After `twistd -u`, a reload says what it cannot do instead of half-doing it."""

    def dropped(self, capabilities: frozenset[int] = frozenset()) -> None:
        self.patch(privileges, "privileges_dropped", lambda: True)
        self.patch(privileges, "has_capability", lambda cap, status_path=None: cap in capabilities)

    def test_new_tun_is_refused_before_anything_stops(self) -> None:
        self.dropped()
        world = World()
        appliance = Appliance("teredo.yaml", make_config(server=SERVER, relay=RELAY), reactor=object(),
                              role_factories=world.factories(),
                              loader=ScriptedLoader(make_config(server=SERVER, relay=RELAY_BIGGER)))
        appliance.privilegedStartService()
        appliance.startService()
        self.addCleanup(appliance.stopService)
        world.journal.clear()
        result = self.successResultOf(appliance.reload())
        self.assertEqual(result["errors"], [
            "relay: cannot create TUN 'tr-test' after privileges were dropped "
            "(needs CAP_NET_ADMIN or a persistent device owned by this user)"])
        self.assertEqual(world.journal, [])  # the running relay was not touched

    def test_capability_or_owned_device_allows_the_tun(self) -> None:
        self.dropped({privileges.CAP_NET_ADMIN})
        self.assertEqual(privileges.preflight("relay", RELAY), [])
        self.dropped()
        self.patch(privileges, "tun_owned_by_me", lambda ifname: ifname == "tr-test")
        self.assertEqual(privileges.preflight("relay", RELAY), [])

    def test_low_port_needs_net_bind_service(self) -> None:
        self.dropped({privileges.CAP_NET_ADMIN})
        self.assertEqual(privileges.preflight("relay", RelayConfig(bind_port=443)), [
            "relay: cannot bind port 443 after privileges were dropped "
            "(ports below 1024 need CAP_NET_BIND_SERVICE)"])

    def test_server_needs_net_raw_for_its_raw_socket(self) -> None:
        self.dropped()
        self.assertEqual(privileges.preflight("server", SERVER), [
            "server: cannot open its raw IPv6 socket after privileges were dropped (needs CAP_NET_RAW)"])
        self.dropped({privileges.CAP_NET_RAW})
        self.assertEqual(privileges.preflight("server", SERVER), [])

    def test_an_anycast_server_needs_net_admin_for_its_tun(self) -> None:
        anycast = dataclasses.replace(SERVER, anycast=True, anycast_interface="ta-test")
        self.dropped({privileges.CAP_NET_RAW})
        self.assertEqual(privileges.preflight("server", anycast), [privileges.tun_refusal("server", "ta-test")])
        self.assertEqual(privileges.preflight("server", SERVER), [])  # without anycast it creates none
        self.dropped({privileges.CAP_NET_RAW, privileges.CAP_NET_ADMIN})
        self.assertEqual(privileges.preflight("server", anycast), [])
        self.dropped()
        denied = OSError(errno.EPERM, "Operation not permitted")
        self.assertEqual(privileges.describe_failure("server", anycast, denied),
                         privileges.tun_refusal("server", "ta-test"))

    def test_permission_errors_at_start_name_the_missing_right(self) -> None:
        self.dropped()
        tun = CannotListenError(None, "tr-test", OSError(errno.EPERM, "Operation not permitted"))
        self.assertEqual(privileges.describe_failure("relay", RELAY, tun), privileges.tun_refusal("relay", "tr-test"))
        port = CannotListenError("127.0.0.1", 22, PermissionError(errno.EACCES, "Permission denied"))
        self.assertEqual(privileges.describe_failure("manhole", None, port), privileges.port_refusal("manhole", 22))

        class NetlinkError(Exception):  # pyroute2's carries the errno as .code
            code = errno.EPERM

        try:
            try:
                raise NetlinkError()
            except NetlinkError as inner:
                raise RuntimeError("tr-test: cannot set MTU") from inner
        except RuntimeError as wrapped:
            self.assertEqual(privileges.describe_failure("client", CLIENT, wrapped),
                             privileges.tun_refusal("client", "teredo"))
        raw = PermissionError(errno.EPERM, "Operation not permitted")
        self.assertEqual(privileges.describe_failure("server", SERVER, raw),
                         "server: permission denied after privileges were dropped ([Errno 1] Operation not "
                         "permitted); restart the daemon to apply this change")

    def test_as_root_errors_are_reported_plainly(self) -> None:
        self.patch(privileges, "privileges_dropped", lambda: False)
        error = OSError(errno.EPERM, "Operation not permitted")
        self.assertEqual(privileges.describe_failure("relay", RELAY, error),
                         "relay: cannot start: [Errno 1] Operation not permitted")
        self.assertEqual(privileges.preflight("relay", RELAY), [])
        busy = CannotListenError(None, "tr-test", OSError(errno.EBUSY, "Device or resource busy"))
        self.assertEqual(privileges.describe_failure("relay", RELAY, busy),
                         "relay: cannot open TUN 'tr-test': [Errno 16] Device or resource busy")

    def test_capabilities_are_read_from_proc(self) -> None:
        status = self.mktemp()
        with open(status, "w") as f:
            f.write("Name:\ttwistd\nCapEff:\t0000000000001000\n")
        self.assertTrue(privileges.has_capability(privileges.CAP_NET_ADMIN, status))
        self.assertFalse(privileges.has_capability(privileges.CAP_NET_BIND_SERVICE, status))

    def test_persistent_tun_ownership_is_read_from_sysfs(self) -> None:
        sysfs = self.mktemp()
        os.makedirs(os.path.join(sysfs, "tr-mine"))
        with open(os.path.join(sysfs, "tr-mine", "owner"), "w") as f:
            f.write(f"{os.geteuid()}\n")
        self.assertTrue(privileges.tun_owned_by_me("tr-mine", sysfs))
        self.assertFalse(privileges.tun_owned_by_me("tr-other", sysfs))


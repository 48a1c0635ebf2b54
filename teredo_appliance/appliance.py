"""The root service: one named child per configured role plus the SSH console; live reload.

Reload follows Buildbot's rules: read and check the whole new file before touching
anything, diff children by name, stop a removed or changed child and wait for its
Deferred before its successor binds, leave unchanged children alone, serialise reloads,
and when a new child fails to start put the old one back and say so.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, DeferredLock, maybeDeferred
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.components import Componentized

from teredo_appliance import __version__, earlyhup
from teredo_appliance.config import ConfigError, load_config, truncation_hint
from teredo_appliance.config_model import Config, RolesConfig
from teredo_appliance.hostcheck import host_warnings
from teredo_appliance.loglevel import LogSink
from teredo_appliance.plugin import role_names, role_plugins
from teredo_appliance.privileges import describe_failure, preflight
from teredo_appliance.reload import (
    CHECK_KEYS,
    CONSOLE,
    CONTROL,
    METRICS,
    SERVICES,
    Plan,
    component_order,
    components,
    describe_changes,
    empty_summary,
    plan_reload,
    removal_warning,
)
from teredo_appliance.sdnotify import Notifier

RoleFactory = Callable[..., Service]  # Factory(section_config, reactor=reactor) -> role service
ConfigLoader = Callable[[str], Config]


class StartError(ConfigError):
    """Components that cannot even be built from this config (e.g. an unusable authorized_keys)."""


class Appliance(MultiService):
    """Runs every role of one config file in one process and applies edits of that file live."""

    log = Logger()

    def __init__(
        self,
        config_path: str,
        config: Config,
        reactor: Any = None,
        role_factories: Mapping[str, RoleFactory] | None = None,
        *,
        loader: ConfigLoader = load_config,
        log_sink: LogSink | None = None,
        notifier: Notifier | None = None,
        owner: tuple[int | None, int | None] = (None, None),
    ) -> None:
        """`notifier` tells systemd about start, reloads and stop (default: $NOTIFY_SOCKET);
        `owner` is the (uid, gid) twistd drops to, which must own the control socket."""
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config_path = config_path
        self.config = config
        self._reactor = reactor
        self._factories = dict(role_factories or {})
        self._loader = loader
        self._notifier = Notifier(None) if notifier is None else notifier
        self._owner = owner
        self._lock = DeferredLock()
        self.log_sink = log_sink or LogSink(sys.stdout, config.log)
        self._previous_sighup: Any = None
        errors = []
        for name, section in components(config).items():
            try:
                self._build(name, section).setServiceParent(self)
            except Exception as error:
                errors.append(self._build_error(name, error))
        if errors:
            raise StartError(errors)

    # -- building children -------------------------------------------------------------

    def _build_role(self, name: str, section: Any) -> Service:
        """`role_factories` (tests) first, else the role's plugin."""
        if name in self._factories:
            return self._factories[name](section, reactor=self._reactor)
        return role_plugins()[name].build(section, reactor=self._reactor)

    def _build(self, name: str, section: Any) -> Service:
        """A new, not yet started service for one component; opens nothing."""
        if name == CONSOLE:
            from teredo_appliance.admin import ManholeService

            running = self.namedServices.get(CONSOLE)
            # After twistd dropped root the host key file may be unreadable: reuse the loaded key.
            host_key = running.host_key if running and running.config.host_key == section.host_key else None
            service: Service = ManholeService(section, self, reactor=self._reactor, host_key=host_key)
        elif name == CONTROL:
            from teredo_appliance.control import ControlService

            service = ControlService(section, self, reactor=self._reactor, owner=self._owner)
        elif name == METRICS:
            from teredo_appliance.metrics import MetricsService

            service = MetricsService(section, self, reactor=self._reactor)
        else:
            service = self._build_role(name, section)
        service.setName(name)
        return service

    def _build_error(self, name: str, error: Exception) -> str:
        if isinstance(error, ConfigError):
            return "; ".join(error.errors)
        self.log.failure("{name}: building the service failed", name=name, level=LogLevel.debug)
        return f"{name}: {error}"

    # -- service lifecycle -------------------------------------------------------------

    def setServiceParent(self, parent: Any) -> None:
        """Under twistd the parent is the Application: its ILogObserver is twistd's log observer."""
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_sink)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self.log.info("teredo-appliance {version} starting: config {path}, roles {roles}",
                      version=__version__, path=self.config_path, roles=list(self.config.roles.enabled()))
        for warning in host_warnings(self.config):
            self.log.warn("host check: {problem}", problem=warning)
        # Import every role's code while still root: a reload after `twistd -u` may add
        # a role, and the Python install need not be readable by that user.
        for name, role in role_plugins().items():
            if name not in self._factories:
                role.load()
        self._start_all("privilegedStartService")

    def startService(self) -> None:
        Service.startService(self)
        previous = signal.signal(signal.SIGHUP, self._on_sighup)
        self._previous_sighup = signal.SIG_DFL if previous is None else previous  # None: set outside Python
        self._start_all("startService")
        self._notifier.ready(self.summary())
        if earlyhup.take():  # a SIGHUP came while starting: the file may have changed since it was read
            self._reactor.callFromThread(self._reload_on_signal)

    def _start_all(self, step: str) -> None:
        """Start every child; if any fails, end twistd with one clear line per failure."""
        sections = components(self.config)
        failures = []
        for service in list(self):
            try:
                getattr(service, step)()
            except Exception as error:
                self.log.failure("{name}: {step} failed", name=service.name, step=step,
                                 level=LogLevel.debug)
                failures.append(describe_failure(service.name, sections.get(service.name), error))
        if failures:
            raise SystemExit("\n".join(failures))

    def stopService(self) -> Deferred[Any]:
        """Drain first (SIGTERM, `systemctl stop`): each anycast role withdraws what the routing
        daemon announces and serves on for its `drain_grace`, so flows move to another box
        before this one goes; then every child stops."""
        self._notifier.stopping()
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        # Under the reload lock: a reload in progress finishes before the children stop.
        return self._lock.run(self._drain_then_stop)

    def _drain_then_stop(self) -> Deferred[Any]:
        draining = [role.drain(role.config.drain_grace) for role in self._drainable().values()]
        if draining:
            self.log.info("stopping: withdrawn, serving existing peers for the drain grace first")
        return DeferredList(draining, consumeErrors=True).addCallback(lambda _: MultiService.stopService(self))

    # -- drain -------------------------------------------------------------------------

    def _drainable(self) -> dict[str, Any]:
        """The running roles that own what a routing daemon announces (a service with drain():
        ours are the server and the relay), in start order."""
        return {name: service for name, service in self.roles().items() if hasattr(service, "drain")}

    def _anycast_role(self, role: str) -> Any:
        drainable = self._drainable()
        if role not in drainable:
            running = ", ".join(drainable) or "none"
            raise LookupError(f"no {role!r} role to drain is running (roles that drain: {running})")
        return drainable[role]

    def drain(self, role: str, grace: float | None = None) -> Deferred[dict[str, Any]]:
        """Withdraw `role`'s route or addresses; fires with its anycast status once `grace`
        seconds (None: the role's drain_grace) are over. Raises LookupError for a role
        that is not running or has nothing to withdraw."""
        service = self._anycast_role(role)
        grace = service.config.drain_grace if grace is None else grace
        self.log.info("drain {role}: withdrawing, serving existing peers for {grace:g} s", role=role, grace=grace)
        return service.drain(grace)

    def undrain(self, role: str) -> dict[str, Any]:
        """Put `role`'s route or addresses back; returns its anycast status."""
        self.log.info("undrain {role}: announcing again", role=role)
        return self._anycast_role(role).undrain()

    # -- SIGHUP ------------------------------------------------------------------------

    def _on_sighup(self, signum: int, frame: Any) -> None:
        # A signal handler may interrupt the reactor anywhere: only hand the work over.
        self._reactor.callFromThread(self._reload_on_signal)

    def _reload_on_signal(self) -> None:
        self.log.info("SIGHUP: reloading {path}", path=self.config_path)
        self.reload().addErrback(lambda f: self.log.failure("SIGHUP reload failed", f))

    # -- reload ------------------------------------------------------------------------

    def reload(self) -> Deferred[dict[str, list[str]]]:
        """Re-read the config file and apply the difference; fires with the summary dict.

        Reloads are serialised: a second call waits until the first has finished.
        """
        return self._lock.run(self._notified_reload)

    def _notified_reload(self) -> Deferred[dict[str, list[str]]]:
        """systemd hears RELOADING=1 before and READY=1 with the outcome after, even on failure."""
        self._notifier.reloading(f"reloading {self.config_path}")

        def done(result: Any) -> Any:
            errors = result.get("errors") if isinstance(result, dict) else ["reload failed"]
            outcome = f"last reload: {len(errors)} error(s), see the log" if errors else "last reload applied"
            self._notifier.ready(f"{self.summary()}; {outcome}")
            return result

        return Deferred.fromCoroutine(self._reload()).addBoth(done)

    async def _reload(self) -> dict[str, list[str]]:
        result = empty_summary()
        old = self.config
        try:
            new = self._loader(self.config_path)
        except ConfigError as error:
            return self._report(result, unchanged=list(components(old)), errors=error.errors)

        before, after = components(old), components(new)
        plan = self._plan(old, new)
        self._announce(plan, old, new)
        # Everything that can be checked is checked before any running service is touched.
        built: dict[str, Service] = {}
        for name in plan.to_start():
            result["errors"] += preflight(name, after[name])
            try:
                built[name] = self._build(name, after[name])
            except Exception as error:
                result["errors"].append(self._build_error(name, error))
        if result["errors"]:
            return self._report(result, unchanged=list(before))

        # Stop first, each fully (its Deferred fired): a successor may bind the same address.
        for name in plan.to_stop():
            await self._stop(name, result)
        result["stopped"] += plan.stop

        running = {name: after[name] for name in plan.keep}
        for name in plan.reconfigure:  # in place: same sockets, TUN, peers and qualification
            self.getServiceNamed(name).reconfigure(after[name])
            running[name] = after[name]
            result.setdefault("reconfigured", []).append(name)
        for name, service in built.items():
            failure = await self._start(service, after[name])
            if failure is None:
                running[name] = after[name]
                result["restarted" if name in plan.restart else "started"].append(name)
            elif name not in plan.restart:
                result["errors"].append(f"{failure}; {name} was not started")
            else:
                not_restored = await self._restore(name, before[name])
                if not_restored is None:
                    running[name] = before[name]
                    result.setdefault("restored", []).append(name)
                    result["errors"].append(f"{failure}; the previous configuration was restored")
                else:
                    result["stopped"].append(name)
                    result["errors"].append(f"{failure}; the previous configuration could not be "
                                            f"restored either ({not_restored}); {name} is not running")

        if CONSOLE in plan.keep:  # the access list may have been edited without the config
            key_error = self.getServiceNamed(CONSOLE).reload_keys()
            result["errors"] += [key_error] if key_error else []
        self.config = self._running_config(new, running)
        if self.log_sink.config != new.log:
            self.log_sink.configure(new.log)
            self.log.info("log level is now {new_level}, format {new_format}",
                          new_level=new.log.level, new_format=new.log.format)
        return self._report(result, unchanged=list(plan.keep))

    def _plan(self, old: Config, new: Config) -> Plan:
        """plan_reload with each role's live keys; a role whose running service cannot take its
        new config in place now (reconfigurable() says no) is restarted instead."""
        live = {name: role.live_keys for name, role in role_plugins().items()}
        plan = plan_reload(old, new, self._degraded(), live)
        after = components(new)
        refused = [name for name in plan.reconfigure
                   if not getattr(self.getServiceNamed(name), "reconfigurable", lambda config: False)(after[name])]
        return plan.restarting(refused)

    def _announce(self, plan: Any, old: Config, new: Config) -> None:
        """Log what the new file changes before applying it; stopping a component is a warning."""
        changes = "; ".join(describe_changes(old, new))
        hint = truncation_hint(self.config_path)
        if hint:
            self.log.warn("reload: {hint}", hint=hint)
        removal = removal_warning(plan)  # (an event key named "warning" means a Python warning)
        if removal:
            self.log.warn("reloading {path}: {removal}; changes: {changes}",
                          path=self.config_path, removal=removal, changes=changes)
        elif changes:
            self.log.info("reloading {path}: changes: {changes}", path=self.config_path, changes=changes)

    def check(self) -> dict[str, list[str]]:
        """A dry run of reload(): what it would start, stop and restart, and what stops it; changes nothing.

        Plain lists of strings per key of CHECK_KEYS, for the console's check() and teredoctl.
        Services are not built, so only what the file and the privileges say is checked.
        """
        result: dict[str, list[str]] = {key: [] for key in CHECK_KEYS}
        try:
            new = self._loader(self.config_path)
        except ConfigError as error:
            result.update(unchanged=list(components(self.config)), errors=list(error.errors))
            return result
        plan = self._plan(self.config, new)
        after = components(new)
        for name in plan.to_start():
            result["errors"] += preflight(name, after[name])
        warnings = [truncation_hint(self.config_path), removal_warning(plan)]
        result.update(start=list(plan.start), stop=list(plan.stop), restart=list(plan.restart),
                      unchanged=list(plan.keep), changes=describe_changes(self.config, new),
                      warnings=[warning for warning in warnings if warning])
        if plan.reconfigure:
            result["reconfigure"] = list(plan.reconfigure)
        return result

    def _degraded(self) -> set[str]:
        """Roles running with a problem a restart may cure (RoleService.needs_restart; else health)."""
        return {name for name, service in self.namedServices.items() if _needs_restart(service)}

    async def _stop(self, name: str, result: dict[str, list[str]]) -> None:
        try:
            await maybeDeferred(self.getServiceNamed(name).disownServiceParent)
        except Exception as error:
            result["errors"].append(f"{name}: error while stopping: {error}")

    async def _start(self, service: Service, section: Any) -> str | None:
        """Attach and start `service` and wait for its start to finish (a startService that
        returns a Deferred, as Buildbot's AsyncService, may still fail); on failure release
        what it opened and say why."""
        try:
            self._attach(service)
            service.privilegedStartService()
            await maybeDeferred(service.startService)
        except Exception as error:
            self.log.failure("{name}: start failed", name=service.name, level=LogLevel.debug)
            try:
                await maybeDeferred(service.disownServiceParent)
            except Exception:
                self.log.failure("{name}: releasing a service that failed to start", name=service.name)
            return describe_failure(service.name, section, error)
        return None

    def _attach(self, service: Service) -> None:
        """Make `service` a child without MultiService's start, whose Deferred it would drop."""
        running, self.running = self.running, 0
        try:
            service.setServiceParent(self)
        finally:
            self.running = running

    async def _restore(self, name: str, section: Any) -> str | None:
        """Bring back the previous configuration of a component whose new one failed to start."""
        try:
            service = self._build(name, section)
        except Exception as error:
            return self._build_error(name, error)
        return await self._start(service, section)

    def _running_config(self, new: Config, running: dict[str, Any]) -> Config:
        """The config actually in force: a failed role keeps its old section or is absent."""
        roles = RolesConfig(**{name: running.get(name) for name in role_names()})
        return dataclasses.replace(new, roles=roles, **{name: running.get(name) for name in SERVICES})

    def _report(self, result: dict[str, list[str]], unchanged: list[str],
                errors: Sequence[str] = ()) -> dict[str, list[str]]:
        result["unchanged"] = unchanged
        result["errors"] += errors
        live = ", reconfigured {reconfigured}" if result.get("reconfigured") else ""
        self.log.emit(
            LogLevel.warn if result["errors"] else LogLevel.info,
            "reload of {path}: started {started}, stopped {stopped}, restarted {restarted}" + live
            + ", unchanged {unchanged}, errors {errors}",
            path=self.config_path, **result,
        )
        return result

    # -- reports -----------------------------------------------------------------------

    def status(self) -> dict[str, dict[str, Any]]:
        """Each child's status() by name, in start order; one failing report hides no other."""
        report: dict[str, dict[str, Any]] = {}
        for name in component_order():
            service = self.namedServices.get(name)
            if service is None:
                continue
            try:
                report[name] = service.status()
            except Exception as error:
                self.log.failure("{name}: status() failed", name=name)
                report[name] = {"role": name, "error": f"status() failed: {error}"}
        return report

    def summary(self) -> str:
        """One line for systemd's STATUS=: which roles run, how many peers, the client's state."""
        parts = []
        for name in role_names():
            service: Any = self.namedServices.get(name)
            if service is None:
                continue
            if name == "client":
                parts.append("client " + ("qualified" if service.qualified else "not qualified"))
            elif name == "relay":
                parts.append(f"relay {service.peer_count()} peer(s)")
            else:
                parts.append(name)
        return "running: " + (", ".join(parts) or "no role")

    def roles(self) -> dict[str, Any]:
        """The running role services by name, in start order (ApplianceView)."""
        return {name: self.namedServices[name] for name in role_names() if name in self.namedServices}

    def peers(self, role: str, limit: int | None = None) -> dict[str, Any]:
        """One running role's peer table: {"role", "total", "peers"}, at most `limit` rows (None: all)."""
        if role not in role_names() or role not in self.namedServices:
            running = ", ".join(n for n in role_names() if n in self.namedServices) or "none"
            raise LookupError(f"no {role!r} role is running (running: {running})")
        service: Any = self.getServiceNamed(role)
        if not hasattr(service, "peers"):
            raise LookupError(f"the {role} role keeps no peer table")
        return {"role": role, "total": service.peer_count(), "peers": service.peers(limit)}


def _needs_restart(service: Any) -> bool:
    needs_restart = getattr(service, "needs_restart", None)
    if needs_restart is not None:
        return bool(needs_restart())
    return getattr(service, "health", lambda: None)() is not None

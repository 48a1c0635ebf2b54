"""Read teredo.yaml into the frozen dataclasses of `config_model`, or say everything wrong with it.

The YAML is composed to nodes (not loaded to plain values) so that every error can name
file:line and the dotted key; all errors are collected so an operator fixes a file in one
pass. Nothing here touches the network: hostnames are checked for syntax only, because
`teredo-checkconf` must work without DNS and a reload must not block on a resolver.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Address, IPv6Network

import yaml
from twisted.internet.endpoints import serverFromString
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from teredo_appliance.boundedfile import MAX_FILE_BYTES, FileRefused, read_bounded
from teredo_appliance.config_model import (
    ANY_IPV4,
    ClientConfig,
    ClientExtensions,
    Config,
    ControlConfig,
    LogConfig,
    ManholeConfig,
    MetricsConfig,
    RelayConfig,
    RolesConfig,
    ServerConfig,
)
from teredo_appliance.plugin import RoleSchema, role_plugins
from teredo_appliance.wire.constants import IFNAMSIZ, MAX_MTU, MIN_MTU, TEREDO_PORT, TEREDO_PREFIX_LENGTH

DEFAULT_PATH = "/etc/teredo/teredo.yaml"
MAX_CONFIG_BYTES = MAX_FILE_BYTES  # a real teredo.yaml is a few kB; a 50 MB one is a mistake or an attack

UNIX_PATH_MAX = 108  # Linux: sockaddr_un.sun_path, including the terminating NUL
# Refresh bounds in seconds: at least 1 s so a typo cannot flood the server; at most 120 s,
# the initial "maximum Teredo refresh interval" of RFC 4380 §5.2.7 (and the shortest NAT
# mapping lifetime RFC 4787 REQ-5 lets us rely on).
MIN_REFRESH_INTERVAL = 1.0
MAX_REFRESH_INTERVAL = 120.0
# The console's admission limits: a few waiting logins, each for a bounded time, so that
# with LimitNOFILE in etc/teredo.service the console can never use up the descriptors.
MAX_UNAUTHENTICATED = 1000
MIN_LOGIN_GRACE_TIME = 1.0
MAX_LOGIN_GRACE_TIME = 600.0
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("text", "json")
# Router Solicitations per second answered for one source address: above this the limit
# protects nothing (a server answers ~150k RS/s in all).
MAX_RS_RATE = 1_000_000.0
MAX_SERVER_WORKERS = 64
QUOTE_LIMIT = 80  # a value quoted in an error message is cut to this many characters
SHOWN_PROBLEMS = 3  # bad items of one list named in its error line
BROADCAST = IPv4Address("255.255.255.255")
# A relay route's protocol: include/uapi/linux/rtnetlink.h keeps 0 (unspec), 1 (redirect)
# and 2 (kernel) for the kernel itself; 3 (boot) up to 255 are for route owners.
RTPROT_BOOT = 3
RTPROT_MAX = 255
ROUTE_METRIC_MAX = 2**32 - 1  # RTA_PRIORITY is a u32
MAX_DRAIN_GRACE = 60.0  # seconds: well inside systemd's default 90 s stop timeout (etc/teredo.service sets none)

_NULL_TAG = "tag:yaml.org,2002:null"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_STR_TAG = "tag:yaml.org,2002:str"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
_SCALARS = yaml.constructor.SafeConstructor()
# libyaml composes 50 MB in 0.3 s where the pure-Python composer takes 18 s; its nodes carry
# the same start_mark, so errors still name file:line.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigError(Exception):
    """A configuration that cannot be used; `.errors` holds one "file:line: key: problem" per fault."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)


class _Invalid(Exception):
    """A value failed its check; the message completes "file:line: key: ..."."""


def load_config(path: str, *, check_files: bool = False) -> Config:
    """Read and validate the file at `path`; unreadable files are ConfigErrors too.

    With `check_files` (teredo-checkconf), the files the config names are checked as well.
    """
    try:
        text = read_bounded(path, MAX_CONFIG_BYTES)[0].decode("utf-8")
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from None
    except FileRefused as e:
        raise ConfigError([f"{path}: cannot read: {e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text (byte offset {e.start})"]) from None
    return parse_config(text, path, check_files=check_files)


def truncation_hint(path: str) -> str | None:
    """A warning when the file's last line has no newline: it may have been cut short.

    Only a hint (a valid file may lack it, and the file is read again): None when the file
    ends with a newline, is empty or cannot be read.
    """
    try:
        data = read_bounded(path, MAX_CONFIG_BYTES)[0]
    except (OSError, FileRefused):
        return None
    if data and not data.endswith(b"\n"):
        return f"{path}: the last line has no newline; was the file cut short? (replace it atomically)"
    return None


def parse_config(text: str, filename: str, *, check_files: bool = False) -> Config:
    """Validate YAML `text`; `filename` only prefixes the error messages."""
    reader = _Reader(filename, check_files=check_files)
    config = reader.config(text)
    if reader.errors or config is None:
        raise ConfigError([message for _, message in sorted(reader.errors, key=lambda error: error[0])])
    return config


# --- value checks: each takes a YAML node and returns the value or raises _Invalid ---


def _cut(text: str) -> str:
    """`text` shortened to QUOTE_LIMIT characters: a 1 MB value must not make a 1 MB error line."""
    if len(text) <= QUOTE_LIMIT:
        return text
    return f"{text[:QUOTE_LIMIT - 20]}... ({len(text)} characters)"


def _quote(value: str) -> str:
    return _cut(repr(value))


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL_TAG:
        return "null"
    return _quote(node.value) if node.tag == _STR_TAG else _cut(node.value)


def _text(node: Node, what: str = "a string") -> str:
    """The scalar's text as written (so `interface: 123` is the name "123")."""
    if not isinstance(node, ScalarNode) or node.tag == _NULL_TAG:
        raise _Invalid(f"expected {what}, got {_describe(node)}")
    return node.value


def _nonempty_text(node: Node) -> str:
    value = _text(node)
    if not value:
        raise _Invalid("must not be empty")
    return value


def _ipv4(node: Node) -> IPv4Address:
    value = _text(node, "an IPv4 address")
    try:
        return IPv4Address(value)
    except ValueError:
        raise _Invalid(f"{_quote(value)} is not an IPv4 address") from None


def _host(node: Node) -> str:
    """A hostname or IPv4 literal, checked for syntax only (RFC 1123 labels; never DNS)."""
    value = _text(node, "a hostname or IPv4 address")
    labels = value.removesuffix(".").split(".")
    if all(label.isdigit() for label in labels):
        return str(_ipv4(node))
    if len(value) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise _Invalid(f"{_quote(value)} is not a hostname or IPv4 address")
    return value


def _list_of(check: Callable[[Node], object], what: str, *, empty: bool = True) -> Callable[[Node], tuple]:
    """A YAML list whose items each pass `check`; every bad item is named with its line.
    Null is the empty list, which `empty=False` refuses."""

    def check_list(node: Node) -> tuple:
        if isinstance(node, ScalarNode) and node.tag == _NULL_TAG:
            items = []
        elif isinstance(node, SequenceNode):
            items = node.value
        else:
            raise _Invalid(f"expected a list of {what}, got {_describe(node)}")
        if not items and not empty:
            raise _Invalid(f"expected at least one of {what}, got an empty list")
        values, problems = [], []
        for index, item in enumerate(items):
            try:
                values.append(check(item))
            except _Invalid as e:
                problems.append(f"item {index} (line {item.start_mark.line + 1}): {e}")
        if problems:
            more = [f"and {len(problems) - SHOWN_PROBLEMS} more"] if len(problems) > SHOWN_PROBLEMS else []
            raise _Invalid("; ".join(problems[:SHOWN_PROBLEMS] + more))
        return tuple(values)

    return check_list


def _ipv6_network(node: Node) -> IPv6Network:
    value = _text(node, "an IPv6 prefix")
    try:
        return IPv6Network(value)
    except ValueError:
        try:
            IPv6Network(value, strict=False)
        except ValueError:
            raise _Invalid(f"{_quote(value)} is not an IPv6 prefix (like 2001::/32)") from None
        raise _Invalid(f"{_quote(value)} has bits set after the prefix length") from None


def _prefix(node: Node) -> IPv6Network:
    value = _text(node, "an IPv6 prefix")
    prefix = _ipv6_network(node)
    if prefix.prefixlen != TEREDO_PREFIX_LENGTH:
        raise _Invalid(f"{_quote(value)} is not a /{TEREDO_PREFIX_LENGTH} (RFC 4380 §2.6)")
    if prefix.is_multicast:
        raise _Invalid(f"{_quote(value)} is a multicast prefix")
    return prefix


def _number(node: Node, tags: tuple[str, ...], what: str) -> float:
    if not isinstance(node, ScalarNode) or node.tag not in tags:
        raise _Invalid(f"expected {what}, got {_describe(node)}")
    construct = _SCALARS.construct_yaml_int if node.tag == _INT_TAG else _SCALARS.construct_yaml_float
    try:
        return construct(node)
    except ValueError:  # Python refuses to convert integers of more than 4300 digits
        raise _Invalid(f"{_describe(node)} is too long for {what}") from None


def _int_in(low: int, high: int | None = None) -> Callable[[Node], int]:
    def check(node: Node) -> int:
        value = _number(node, (_INT_TAG,), "an integer")
        if high is None and value < low:
            raise _Invalid(f"{_describe(node)} must be at least {low}")
        if high is not None and not low <= value <= high:
            raise _Invalid(f"{_describe(node)} is out of range {low}..{high}")
        return value

    return check


def _seconds_in(low: float, high: float) -> Callable[[Node], float]:
    def check(node: Node) -> float:
        value = float(_number(node, (_INT_TAG, _FLOAT_TAG), "a number of seconds"))
        if not (math.isfinite(value) and low <= value <= high):
            raise _Invalid(f"{_describe(node)} is out of range {low:g}..{high:g} seconds")
        return value

    return check


_refresh_interval = _seconds_in(MIN_REFRESH_INTERVAL, MAX_REFRESH_INTERVAL)


def _rs_rate(node: Node) -> float:
    value = float(_number(node, (_INT_TAG, _FLOAT_TAG), "a number of Router Solicitations per second"))
    if not (math.isfinite(value) and 0 < value <= MAX_RS_RATE):
        raise _Invalid(f"{_describe(node)} is out of range: more than 0, at most {MAX_RS_RATE:.0f} per second")
    return value


_drain_grace = _seconds_in(0.0, MAX_DRAIN_GRACE)


def _interface(node: Node) -> str:
    """A name the Linux kernel accepts for a new link (see dev_valid_name())."""
    value = _text(node, "an interface name")
    if not 0 < len(value.encode("utf-8", "surrogatepass")) < IFNAMSIZ:
        raise _Invalid(f"{_quote(value)} is not an interface name (1 to {IFNAMSIZ - 1} bytes)")
    if value in (".", "..") or any(c in "/:" or c.isspace() for c in value):
        raise _Invalid(f"{_quote(value)} is not an interface name (no '/', ':' or whitespace)")
    return value


def _optional(check: Callable[[Node], object]) -> Callable[[Node], object]:
    def optional(node: Node) -> object:
        if isinstance(node, ScalarNode) and node.tag == _NULL_TAG:
            return None
        return check(node)

    return optional


def _server_endpoint(node: Node) -> str:
    """A Twisted server endpoint description, parsed (never listened on)."""
    value = _nonempty_text(node)
    try:
        serverFromString(None, value)
    except Exception as error:  # endpoint parsers (plugins too) raise whatever they like
        raise _Invalid(f"{_quote(value)} is not a server endpoint (like tcp:2222:interface=127.0.0.1):"
                       f" {_cut(str(error))}") from None
    return value


def _log_level(node: Node) -> str:
    value = _text(node, "a log level")
    if value not in LOG_LEVELS:
        raise _Invalid(f"{_quote(value)} is not one of {', '.join(LOG_LEVELS)}")
    return value


def _log_format(node: Node) -> str:
    value = _text(node, "a log format")
    if value not in LOG_FORMATS:
        raise _Invalid(f"{_quote(value)} is not one of {', '.join(LOG_FORMATS)}")
    return value


def _namespace_levels(node: Node) -> tuple[tuple[str, str], ...]:
    """`{twisted.conch: warn, teredo_appliance.roles.relay: debug}` -> ((namespace, level), ...)."""
    if isinstance(node, ScalarNode) and node.tag == _NULL_TAG:
        return ()
    if not isinstance(node, MappingNode):
        raise _Invalid(f"expected a mapping of logger namespace to level, got {_describe(node)}")
    levels, problems = [], []
    for key, value in node.value:
        try:
            levels.append((_nonempty_text(key), _log_level(value)))
        except _Invalid as e:
            problems.append(f"{key.value!r} (line {key.start_mark.line + 1}): {e}")
    if problems:
        raise _Invalid("; ".join(problems))
    return tuple(levels)


def _socket_path(node: Node) -> str:
    """An absolute path the kernel accepts for an AF_UNIX socket."""
    value = _text(node, "an absolute path")
    if not value.startswith("/"):
        raise _Invalid(f"{_quote(value)} is not an absolute path")
    if len(value.encode()) >= UNIX_PATH_MAX or "\0" in value:
        raise _Invalid(f"{_quote(value)} is too long for a socket path (at most {UNIX_PATH_MAX - 1} bytes)")
    if value.endswith("/"):
        raise _Invalid(f"{_quote(value)} names a directory, not a socket")
    return value
def _bool(node: Node) -> bool:
    if not isinstance(node, ScalarNode) or node.tag != _BOOL_TAG:
        raise _Invalid(f"expected true or false, got {_describe(node)}")
    return bool(_SCALARS.construct_yaml_bool(node))


def _client_extensions(node: Node) -> ClientExtensions:
    """`{upnp: true}` -> ClientExtensions; each nested problem names its own line."""
    if isinstance(node, ScalarNode) and node.tag == _NULL_TAG:
        return ClientExtensions()
    if not isinstance(node, MappingNode):
        raise _Invalid(f"expected a mapping of extension name to true or false, got {_describe(node)}")
    allowed = tuple(f.name for f in fields(ClientExtensions))
    values: dict[str, bool] = {}
    problems = []
    for key, value in node.value:
        name = key.value if isinstance(key, ScalarNode) else str(_describe(key))
        line = key.start_mark.line + 1
        try:
            if name not in allowed:
                raise _Invalid(_unknown_key(name, allowed))
            if name in values:
                raise _Invalid("duplicate key")
            values[name] = _bool(value)
        except _Invalid as e:
            problems.append(f"{name} (line {line}): {e}")
    if problems:
        raise _Invalid("; ".join(problems))
    return ClientExtensions(**values)


_mtu = _int_in(MIN_MTU, MAX_MTU)

# Every accepted key, per section, with its check. Required keys are the dataclass fields
# without a default, except those derived in _Reader (server bind_address2). The roles'
# schemas are public: their plugins (twisted/plugins/teredo_roles.py) hand them back.
SERVER_SCHEMA = RoleSchema(ServerConfig, {
    "bind_address": _ipv4,
    "bind_address2": _ipv4,
    "prefix": _prefix,
    "mtu": _mtu,
    "rs_rate": _rs_rate,
    "rs_burst": _int_in(1, 1_000_000),
    "anycast": _bool,
    "anycast_interface": _interface,
    "drain_grace": _drain_grace,
    "workers": _int_in(1, MAX_SERVER_WORKERS),
}, required=("bind_address",))
RELAY_SCHEMA = RoleSchema(RelayConfig, {
    "interface": _interface,
    "bind_address": _ipv4,
    "bind_port": _int_in(1, 65535),
    "prefix": _prefix,
    "mtu": _mtu,
    "max_peers": _int_in(1),
    "bubbles_per_second": _int_in(2),
    "served_prefixes": _list_of(_ipv6_network, "IPv6 prefixes", empty=False),
    "route_protocol": _int_in(RTPROT_BOOT, RTPROT_MAX),
    "route_metric": _int_in(1, ROUTE_METRIC_MAX),
    "drain_grace": _drain_grace,
    "anycast": _bool,
}, live=frozenset({"max_peers"}))
CLIENT_SCHEMA = RoleSchema(ClientConfig, {
    "server_address": _host,
    "server_address2": _optional(_ipv4),
    "fallback_servers": _list_of(_host, "hostnames or IPv4 addresses"),
    "interface": _interface,
    "bind_address": _ipv4,
    "bind_port": _int_in(0, 65535),
    "refresh_interval": _refresh_interval,
    "mtu": _mtu,
    "prefix": _prefix,
    "hook": _optional(_nonempty_text),
    "local_discovery": _bool,
    "extensions": _client_extensions,
}, required=("server_address",), live=frozenset({"refresh_interval", "fallback_servers", "hook"}))
_MANHOLE = RoleSchema(ManholeConfig, {
    "listen": _server_endpoint,
    "authorized_keys": _nonempty_text,
    "host_key": _nonempty_text,
    "max_unauthenticated": _int_in(1, MAX_UNAUTHENTICATED),
    "login_grace_time": _seconds_in(MIN_LOGIN_GRACE_TIME, MAX_LOGIN_GRACE_TIME),
})
_LOG = RoleSchema(LogConfig, {"level": _log_level, "format": _log_format, "namespaces": _namespace_levels})
_CONTROL = RoleSchema(ControlConfig, {"socket": _socket_path})
_METRICS = RoleSchema(MetricsConfig, {"listen": _server_endpoint})
_TOP_LEVEL = ("roles", "manhole", "log", "control", "metrics")

# What a role plugin's own checks may use (see teredo_appliance.plugin.RoleSchema).
Invalid = _Invalid
nonempty_text = _nonempty_text


@dataclass
class _Section:
    """A checked section: its valid values, where each key was written, and which keys are wrong.

    A section with errors still takes part in the cross-role checks, through its valid keys,
    so one pass reports everything.
    """

    path: str
    line: int
    values: dict[str, object]
    lines: dict[str, int]
    bad: set[str] = field(default_factory=set)  # keys with an error (or missing though required)

    def line_of(self, key: str) -> int:
        return self.lines.get(key, self.line)


@dataclass
class _Reader:
    filename: str
    check_files: bool = False  # also check the files the config names (the console's keys)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, message) to sort by line

    def error(self, line: int, path: str, message: str) -> None:
        where = f"{path}: " if path else ""
        self.errors.append((line, f"{self.filename}:{line}: {where}{message}"))

    def config(self, text: str) -> Config | None:
        root = self.compose(text)
        if root is None:
            return None
        top = self.entries(root, "", 1, _TOP_LEVEL, "at the top level")
        if top is None:
            return None
        roles = self.roles(top)
        manhole = self.section(_MANHOLE, *top["manhole"]) if "manhole" in top else None
        log = self.section(_LOG, *top["log"]) if "log" in top else None
        control = self.control(top["control"]) if "control" in top else ControlConfig()
        metrics = self.section(_METRICS, *top["metrics"]) if "metrics" in top else None
        if self.check_files and manhole is not None:
            self.check_console_files(manhole)
        if self.errors or roles is None:
            return None
        return Config(
            roles=roles,
            manhole=ManholeConfig(**manhole.values) if manhole else None,
            log=LogConfig(**log.values) if log else LogConfig(),
            control=control,
            metrics=MetricsConfig(**metrics.values) if metrics else None,
        )

    def control(self, where: tuple[Node, str, int]) -> ControlConfig | None:
        """On by default; `control: false` turns the socket off."""
        node = where[0]
        if isinstance(node, ScalarNode) and node.tag == _BOOL_TAG:
            if _SCALARS.construct_yaml_bool(node):
                return ControlConfig()
            return None
        section = self.section(_CONTROL, *where)
        return ControlConfig(**section.values) if section else None

    def compose(self, text: str) -> Node | None:
        try:
            root = yaml.compose(text, Loader=_YAML_LOADER)
        except yaml.MarkedYAMLError as e:
            context = f" ({e.context})" if e.context else ""
            self.error(e.problem_mark.line + 1, "", f"YAML syntax error: {e.problem}{context}")
            return None
        except yaml.reader.ReaderError as e:
            line = text.count("\n", 0, e.position) + 1
            self.error(line, "", f"YAML syntax error: {str(e).splitlines()[0]}")
            return None
        except RecursionError:
            self.error(1, "", "YAML syntax error: nested too deeply")
            return None
        if root is None:
            self.error(1, "", "the file is empty; it needs at least a 'roles' mapping")
        return root

    def entries(
        self, node: Node, path: str, line: int, allowed: tuple[str, ...], where: str = ""
    ) -> dict[str, tuple[Node, str, int]] | None:
        """A mapping's values by key, as (node, dotted path, line); null counts as empty."""
        if isinstance(node, ScalarNode) and node.tag == _NULL_TAG and path:
            return {}
        if not isinstance(node, MappingNode):
            self.error(line, path, f"expected a mapping{' ' + where if where else ''}, got {_describe(node)}")
            return None
        found: dict[str, tuple[Node, str, int]] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode):
                self.error(key_line, path, f"expected a key, got {_describe(key_node)}")
                continue
            key = key_node.value
            key_path = f"{path}.{_cut(key)}" if path else _cut(key)
            if key in found:
                self.error(key_line, key_path, f"duplicate key (first given on line {found[key][2]})")
            elif key not in allowed:
                self.error(key_line, key_path, _unknown_key(key, allowed))
            else:
                found[key] = (value_node, key_path, key_line)
        return found

    def section(self, schema: RoleSchema, node: Node, path: str, line: int) -> _Section | None:
        """Check every key of one section; None only if it is not a mapping at all."""
        checks = schema.checks
        found = self.entries(node, path, line, tuple(checks))
        if found is None:
            return None
        section = _Section(path, line, {}, {})
        for key, (value_node, key_path, key_line) in found.items():
            section.lines[key] = key_line
            try:
                section.values[key] = checks[key](value_node)
            except _Invalid as e:
                self.error(key_line, key_path, str(e))
                section.bad.add(key)
        for key in schema.required:
            if key not in found:
                self.error(line, f"{path}.{key}", "required key is missing")
                section.bad.add(key)
        return section

    def roles(self, top: dict[str, tuple[Node, str, int]]) -> RolesConfig | None:
        if "roles" not in top:
            self.error(1, "roles", "required key is missing")
            return None
        plugins = role_plugins()
        found = self.entries(*top["roles"], tuple(plugins))
        if found is None:
            return None
        if not found:
            self.error(top["roles"][2], "roles", f"no role enabled; enable any of {', '.join(plugins)}")
            return None
        sections = {name: self.section(plugins[name].schema, *found[name]) for name in found}
        usable = {name: section for name, section in sections.items() if section is not None}
        if "server" in usable:
            self.server_addresses(usable["server"])
            self.server_anycast(usable["server"])
        if "relay" in usable:
            self.relay_anycast(usable["relay"])
        self.check_sockets(usable)
        self.check_interfaces(usable)
        if len(usable) < len(sections) or any(section.bad for section in usable.values()):
            return None
        # In the plugins' start order, whatever the file's order.
        return RolesConfig(**{name: plugins[name].schema.config_class(**sections[name].values)
                              for name in plugins if name in sections})

    def relay_anycast(self, relay: _Section) -> None:
        """An anycast relay shares its address with the other boxes: it must name one."""
        if relay.values.get("anycast") and relay.values.get("bind_address", ANY_IPV4) == ANY_IPV4:
            self.error(relay.line_of("anycast"), f"{relay.path}.anycast",
                       "an anycast relay needs a specific bind_address (the address the boxes share)")
            relay.bad.add("anycast")

    def server_addresses(self, server: _Section) -> None:
        """The server answers from two specific addresses; derive the second if not given."""
        for key in ("bind_address", "bind_address2"):
            if server.values.get(key) == ANY_IPV4:
                self.error(server.line_of(key), f"{server.path}.{key}", "the server needs a specific address")
                server.bad.add(key)
        primary = server.values.get("bind_address")
        if server.bad & {"bind_address", "bind_address2"} or primary is None or "bind_address2" in server.values:
            return
        if primary == BROADCAST:
            self.error(
                server.line_of("bind_address"),
                f"{server.path}.bind_address",
                f"{primary} has no next address to default bind_address2 to; set bind_address2",
            )
            server.bad.add("bind_address")
        else:
            server.values["bind_address2"] = primary + 1

    def server_anycast(self, server: _Section) -> None:
        """The anycast /32s and their drain live in the in-process server; workers have neither."""
        if server.values.get("anycast") and server.values.get("workers", 1) > 1:
            self.error(server.line_of("anycast"), f"{server.path}.anycast",
                       "not available with workers > 1 (the workers' supervisor does not own the /32s); "
                       "use workers: 1 or leave anycast off")
            server.bad.add("anycast")

    def check_sockets(self, sections: dict[str, _Section]) -> None:
        """No two UDP sockets of the enabled roles may claim the same address:port.

        A socket whose address or port is itself wrong is left out: it would collide by mistake.
        """
        sockets = []  # (dotted key, line, address, port)
        for name, section in sections.items():
            if name == "server":
                keys = [(key, TEREDO_PORT) for key in ("bind_address", "bind_address2") if key in section.values]
            elif "bind_port" in section.bad:
                keys = []
            else:
                default = getattr(role_plugins()[name].schema.config_class, "bind_port", 0)
                port = section.values.get("bind_port", default)
                keys = [("bind_address", port)] if port else []  # port 0: the kernel picks a free one
            for key, port in keys:
                if key in section.bad:
                    continue
                address = section.values.get(key, ANY_IPV4)
                sockets.append((f"{section.path}.{key}", section.line_of(key), address, port))
        for index, (path, line, address, port) in enumerate(sockets):
            for other_path, _, other_address, other_port in sockets[:index]:
                if port == other_port and (address == other_address or ANY_IPV4 in (address, other_address)):
                    self.error(
                        line, path, f"{address}:{port} collides with {other_path} {other_address}:{other_port}"
                    )
                    break

    def check_console_files(self, manhole: _Section) -> None:
        """What the console would refuse at start: its authorized_keys file and host key place."""
        from teredo_appliance.consolefiles import KeysRefused, host_key_problem, vet_authorized_keys

        if "authorized_keys" not in manhole.bad:
            path = manhole.values.get("authorized_keys", ManholeConfig.authorized_keys)
            key_path, line = f"{manhole.path}.authorized_keys", manhole.line_of("authorized_keys")
            try:
                for number, why in vet_authorized_keys(path).ignored:
                    self.error(line, key_path, f"{path} line {number}: {why}")
            except KeysRefused as refused:
                self.error(line, key_path, str(refused))
            except OSError as error:
                self.error(line, key_path, f"cannot read authorized_keys file {path}: {error.strerror}")
        if "host_key" not in manhole.bad:
            problem = host_key_problem(manhole.values.get("host_key", ManholeConfig.host_key))
            if problem:
                self.error(manhole.line_of("host_key"), f"{manhole.path}.host_key", problem)

    def check_interfaces(self, sections: dict[str, _Section]) -> None:
        """Each TUN device a role creates (the relay's, the client's, an anycast server's) has a
        name of its own: a second open of one name would take over the first role's device."""
        seen: dict[str, str] = {}
        for name, key, default in (("server", "anycast_interface", ServerConfig.anycast_interface),
                                   ("relay", "interface", RelayConfig.interface),
                                   ("client", "interface", ClientConfig.interface)):
            section = sections.get(name)
            if section is None or key in section.bad or (name == "server" and not section.values.get("anycast")):
                continue
            ifname = section.values.get(key, default)
            path = f"{section.path}.{key}"
            if ifname in seen:
                self.error(section.line_of(key), path,
                           f"{ifname!r} is also {seen[ifname]}; each role needs its own TUN device")
            else:
                seen[ifname] = path


def _unknown_key(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; expected one of {', '.join(allowed)}"

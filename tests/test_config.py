"""The YAML contract of teredo.yaml(5): defaults, every validation rule and its exact message."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Network
from textwrap import dedent

import yaml
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import FailTest, SynchronousTestCase

from teredo_appliance import config as config_module
from teredo_appliance.config import ConfigError, load_config, parse_config
from teredo_appliance.config_model import (
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "etc", "teredo.yaml")

# (YAML text, every error expected for it, in order); shared with the teredo-checkconf tests.
BROKEN = [
    (
        """\
        roles:
          server:
            bind_address: 300.1.1.1
        """,
        ["teredo.yaml:3: roles.server.bind_address: '300.1.1.1' is not an IPv4 address"],
    ),
    (
        """\
        roles:
          server:
            bind_adress: 198.18.0.1
        """,
        [
            "teredo.yaml:2: roles.server.bind_address: required key is missing",
            "teredo.yaml:3: roles.server.bind_adress: unknown key; did you mean 'bind_address'?",
        ],
    ),
    (
        """\
        roles:
          relay:
        colour: blue
        """,
        ["teredo.yaml:3: colour: unknown key; expected one of roles, manhole, log, control, metrics"],
    ),
    (
        """\
        roles:
          relay:
            prefix: 2001::/48
          server:
            bind_address: 198.18.0.1
            prefix: ff02::/32
        """,
        [
            "teredo.yaml:3: roles.relay.prefix: '2001::/48' is not a /32 (RFC 4380 §2.6)",
            # the cross-role checks run even though both sections have errors
            "teredo.yaml:4: roles.server.bind_address2: 198.18.0.2:3544 collides with roles.relay.bind_address"
            " 0.0.0.0:3544",
            "teredo.yaml:5: roles.server.bind_address: 198.18.0.1:3544 collides with roles.relay.bind_address"
            " 0.0.0.0:3544",
            "teredo.yaml:6: roles.server.prefix: 'ff02::/32' is a multicast prefix",
        ],
    ),
    (
        """\
        roles:
          relay:
            prefix: 198.18.0.0/15
        """,
        ["teredo.yaml:3: roles.relay.prefix: '198.18.0.0/15' is not an IPv6 prefix (like 2001::/32)"],
    ),
    (
        """\
        roles:
          relay:
            bind_port: 0
          client:
            server_address: 198.18.0.1
            bind_port: 65536
        """,
        [
            "teredo.yaml:3: roles.relay.bind_port: 0 is out of range 1..65535",
            "teredo.yaml:6: roles.client.bind_port: 65536 is out of range 0..65535",
        ],
    ),
    (
        """\
        roles:
          relay:
            mtu: 1200
            max_peers: 0
            bubbles_per_second: 1
        """,
        [
            "teredo.yaml:3: roles.relay.mtu: 1200 is out of range 1280..65535",
            "teredo.yaml:4: roles.relay.max_peers: 0 must be at least 1",
            "teredo.yaml:5: roles.relay.bubbles_per_second: 1 must be at least 2",
        ],
    ),
    (
        """\
        roles:
          relay:
            served_prefixes:
              - 2000::/3
              - 198.18.0.0/15
              - 2001:db8::1/32
        """,
        [
            "teredo.yaml:3: roles.relay.served_prefixes: item 1 (line 5): '198.18.0.0/15' is not an IPv6 prefix"
            " (like 2001::/32); item 2 (line 6): '2001:db8::1/32' has bits set after the prefix length",
        ],
    ),
    (
        """\
        roles:
          relay:
            served_prefixes: []
        """,
        ["teredo.yaml:3: roles.relay.served_prefixes: expected at least one of IPv6 prefixes, got an empty list"],
    ),
    (
        """\
        roles:
          relay:
            served_prefixes: 2000::/3
        """,
        ["teredo.yaml:3: roles.relay.served_prefixes: expected a list of IPv6 prefixes, got '2000::/3'"],
    ),
    (
        """\
        roles:
          relay:
            mtu: "1280"
            bind_address: [198.18.0.1]
        """,
        [
            "teredo.yaml:3: roles.relay.mtu: expected an integer, got '1280'",
            "teredo.yaml:4: roles.relay.bind_address: expected an IPv4 address, got a list",
        ],
    ),
    (
        """\
        roles:
          client:
            server_address: teredo_server.example
            refresh_interval: 0
            interface: a-very-long-tun-name
        """,
        [
            "teredo.yaml:3: roles.client.server_address: 'teredo_server.example' is not a hostname or IPv4 address",
            "teredo.yaml:4: roles.client.refresh_interval: 0 is out of range 1..120 seconds",
            "teredo.yaml:5: roles.client.interface: 'a-very-long-tun-name' is not an interface name"
            " (1 to 15 bytes)",
        ],
    ),
    (
        """\
        roles:
          client:
            server_address: teredo.example.net
            fallback_servers:
              - 198.18.0.9
              - 198.18.0.256
            interface: tun/0
        """,
        [
            "teredo.yaml:4: roles.client.fallback_servers: item 1 (line 6): '198.18.0.256' is not an IPv4 address",
            "teredo.yaml:7: roles.client.interface: 'tun/0' is not an interface name (no '/', ':' or whitespace)",
        ],
    ),
    (
        """\
        roles:
          server:
            bind_address: 198.18.0.1
          relay:
        """,
        [
            "teredo.yaml:4: roles.relay.bind_address: 0.0.0.0:3544 collides with"
            " roles.server.bind_address 198.18.0.1:3544"
        ],
    ),
    (
        """\
        roles: {}
        """,
        ["teredo.yaml:1: roles: no role enabled; enable any of server, relay, client"],
    ),
    (
        """\
        log:
          level: verbose
        """,
        [
            "teredo.yaml:1: roles: required key is missing",
            "teredo.yaml:2: log.level: 'verbose' is not one of debug, info, warn, error",
        ],
    ),
    (
        """\
        roles:
          relay:
            mtu: 1280
            mtu: 1500
        manhole: yes
        """,
        [
            "teredo.yaml:4: roles.relay.mtu: duplicate key (first given on line 3)",
            "teredo.yaml:5: manhole: expected a mapping, got yes",
        ],
    ),
    (
        """\
        roles:
          relay:
            mtu: 1280
           bind_port: 3544
        """,
        ["teredo.yaml:4: YAML syntax error: did not find expected key (while parsing a block mapping)"],
    ),
    (
        """\
        # nothing but a comment
        """,
        ["teredo.yaml:1: the file is empty; it needs at least a 'roles' mapping"],
    ),
    (
        """\
        - roles
        """,
        ["teredo.yaml:1: expected a mapping at the top level, got a list"],
    ),
    (
        """\
        roles:
          server:
            bind_address: 255.255.255.255
        """,
        [
            "teredo.yaml:3: roles.server.bind_address: 255.255.255.255 has no next address to default"
            " bind_address2 to; set bind_address2"
        ],
    ),
    (
        """\
        roles:
          server:
            bind_address: 0.0.0.0
          client:
        """,
        [
            "teredo.yaml:3: roles.server.bind_address: the server needs a specific address",
            "teredo.yaml:4: roles.client.server_address: required key is missing",
        ],
    ),
]


def parse(text: str) -> Config:
    return parse_config(dedent(text), "teredo.yaml")


@contextlib.contextmanager
def no_longer_than(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the block blocks for more than `seconds`."""

    def expired(signum: int, frame: object) -> None:
        raise FailTest(f"blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load_errors(path: str) -> list[str]:
    """load_config's errors for `path`, which must come back within 5 s."""
    try:
        with no_longer_than(5):
            load_config(path)
    except ConfigError as e:
        return e.errors
    raise FailTest(f"{path} was accepted")


def errors(text: str) -> list[str]:
    """The errors for `text`; fails the test if the text is accepted."""
    try:
        parse(text)
    except ConfigError as e:
        return e.errors
    raise FailTest(f"accepted:\n{dedent(text)}")


class BrokenConfigTests(SynchronousTestCase):
    def test_each_broken_config_gives_its_exact_errors(self) -> None:
        for text, expected in BROKEN:
            self.assertEqual(errors(text), expected, dedent(text))

    def test_all_errors_are_collected_in_line_order(self) -> None:
        text = """\
            roles:
              relay:
                bind_port: 99999
                interface: ""
              bogus:
            log:
              level: loud
            """
        self.assertEqual(
            errors(text),
            [
                "teredo.yaml:3: roles.relay.bind_port: 99999 is out of range 1..65535",
                "teredo.yaml:4: roles.relay.interface: '' is not an interface name (1 to 15 bytes)",
                "teredo.yaml:5: roles.bogus: unknown key; expected one of server, relay, client",
                "teredo.yaml:7: log.level: 'loud' is not one of debug, info, warn, error",
            ],
        )

    def test_str_of_config_error_joins_messages(self) -> None:
        error = ConfigError(["a:1: x", "a:2: y"])
        self.assertEqual(str(error), "a:1: x\na:2: y")
        self.assertEqual(error.errors, ["a:1: x", "a:2: y"])

    def test_filename_is_used_as_given(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_config("roles: []\n", "/etc/teredo/other.yaml")
        self.assertEqual(caught.exception.errors, ["/etc/teredo/other.yaml:1: roles: expected a mapping, got a list"])

    def test_reader_and_nesting_errors_name_a_line(self) -> None:
        self.assertEqual(
            errors("roles:\n  relay:\n\x00"),
            ["teredo.yaml:3: YAML syntax error: unacceptable character #x0000: control characters are not allowed"],
        )
        self.assertEqual(errors("[" * 5000), ["teredo.yaml:1: YAML syntax error: exceeded maximum nesting depth"
                                              " (while increasing flow level)"])

    @given(st.text(max_size=200))
    def test_arbitrary_text_is_a_config_or_config_error(self, text: str) -> None:
        try:
            parse_config(text, "f.yaml")
        except ConfigError as e:
            self.assertTrue(e.errors)
            for message in e.errors:
                self.assertRegex(message, r"\Af\.yaml:\d+: ")

    @given(st.integers(min_value=-(2**70), max_value=2**70))
    def test_relay_port_accepted_exactly_in_range(self, port: int) -> None:
        text = f"roles:\n  relay:\n    bind_port: {port}\n"
        if 1 <= port <= 65535:
            self.assertEqual(parse(text).roles.relay.bind_port, port)
        else:
            self.assertEqual(errors(text), [f"teredo.yaml:3: roles.relay.bind_port: {port} is out of range 1..65535"])


class OperationsSectionTests(SynchronousTestCase):
    """`control` is on unless switched off; `metrics` is off unless written."""

    def test_control_defaults_on_and_false_switches_it_off(self) -> None:
        self.assertEqual(parse("roles:\n  relay:\n").control, ControlConfig("/run/teredo/control.sock"))
        self.assertIsNone(parse("roles:\n  relay:\ncontrol: false\n").control)
        self.assertEqual(parse("roles:\n  relay:\ncontrol: true\n").control, ControlConfig())
        self.assertEqual(parse("roles:\n  relay:\ncontrol:\n  socket: /run/t/c.sock\n").control,
                         ControlConfig("/run/t/c.sock"))

    def test_control_socket_must_be_a_usable_absolute_path(self) -> None:
        long_path = "/" + "d" * 120
        for value, message in (("rel.sock", "'rel.sock' is not an absolute path"),
                               (long_path, f"'{long_path[:59]}... (123 characters) is too long for a socket path"
                                           " (at most 107 bytes)"),
                               ("/run/teredo/", "'/run/teredo/' names a directory, not a socket"),
                               ("[]", "expected an absolute path, got a list")):
            self.assertEqual(errors(f"roles:\n  relay:\ncontrol:\n  socket: {value}\n"),
                             [f"teredo.yaml:4: control.socket: {message}"])
        self.assertEqual(errors("roles:\n  relay:\ncontrol: 3\n"),
                         ["teredo.yaml:3: control: expected a mapping, got 3"])

    def test_metrics_off_unless_written_and_endpoint_checked(self) -> None:
        self.assertIsNone(parse("roles:\n  relay:\n").metrics)
        self.assertEqual(parse("roles:\n  relay:\nmetrics:\n").metrics, MetricsConfig("tcp:9100:interface=127.0.0.1"))
        self.assertEqual(parse("roles:\n  relay:\nmetrics:\n  listen: unix:/run/m.sock\n").metrics.listen,
                         "unix:/run/m.sock")
        self.assertEqual(errors("roles:\n  relay:\nmetrics:\n  listen: 'tcp:http'\n"),
                         ["teredo.yaml:4: metrics.listen: 'tcp:http' is not a server endpoint (like "
                          "tcp:2222:interface=127.0.0.1): invalid literal for int() with base 10: 'http'"])
        self.assertEqual(errors("roles:\n  relay:\nmetrics:\n  listen: 'carrier-pigeon:1'\n")[0][:60],
                         "teredo.yaml:4: metrics.listen: 'carrier-pigeon:1' is not a s")


class ValueTests(SynchronousTestCase):
    def test_role_with_no_keys_runs_with_defaults(self) -> None:
        for relay in ("relay:", "relay: {}", "relay: null"):
            config = parse(f"roles:\n  {relay}\n")
            self.assertEqual(config, Config(roles=RolesConfig(relay=RelayConfig()), control=ControlConfig()))
            self.assertIsNone(config.manhole)
            self.assertEqual(config.log, LogConfig(level="info"))

    def test_relay_served_prefixes(self) -> None:
        self.assertEqual(RelayConfig().served_prefixes, (IPv6Network("2000::/3"),))
        relay = parse("roles:\n  relay:\n    served_prefixes: [2001:db8::/32, 2a00::/12]\n").roles.relay
        self.assertEqual(relay.served_prefixes, (IPv6Network("2001:db8::/32"), IPv6Network("2a00::/12")))

    def test_server_defaults(self) -> None:
        server = parse("roles:\n  server:\n    bind_address: 198.18.0.1\n").roles.server
        self.assertEqual(
            server,
            ServerConfig(
                bind_address=IPv4Address("198.18.0.1"),
                bind_address2=IPv4Address("198.18.0.2"),
                prefix=IPv6Network("2001::/32"),
                mtu=1280,
                rs_rate=20.0,
                rs_burst=40,
            ),
        )

    def test_server_rs_rate_limit(self) -> None:
        text = "roles:\n  server:\n    bind_address: 198.18.0.1\n    rs_rate: {}\n    rs_burst: {}\n"
        server = parse(text.format(2.5, 5)).roles.server
        self.assertEqual((server.rs_rate, server.rs_burst), (2.5, 5))
        self.assertEqual(parse(text.format(1000, 1)).roles.server.rs_rate, 1000.0)
        out_of_range = (
            "teredo.yaml:4: roles.server.rs_rate: {} is out of range: more than 0, at most 1000000 per second"
        )
        for rate, burst, expected in (
            ("0", "5", out_of_range.format(0)),
            ("-1", "5", out_of_range.format(-1)),
            (".nan", "5", out_of_range.format(".nan")),
            ("2000001", "5", out_of_range.format(2000001)),
            ("fast", "5", "teredo.yaml:4: roles.server.rs_rate: expected a number of Router Solicitations per second,"
                          " got 'fast'"),
            ("20", "0", "teredo.yaml:5: roles.server.rs_burst: 0 is out of range 1..1000000"),
            ("20", "1.5", "teredo.yaml:5: roles.server.rs_burst: expected an integer, got 1.5"),
        ):
            self.assertEqual(errors(text.format(rate, burst)), [expected], (rate, burst))

    def test_client_defaults_and_types(self) -> None:
        text = """\
            roles:
              client:
                server_address: teredo.example.net
            """
        self.assertEqual(
            parse(text).roles.client,
            ClientConfig(
                server_address="teredo.example.net",
                server_address2=None,
                fallback_servers=(),
                interface="teredo",
                bind_address=IPv4Address("0.0.0.0"),
                bind_port=0,
                refresh_interval=30.0,
                mtu=1280,
                hook=None,
            ),
        )

    def test_client_every_key(self) -> None:
        text = """\
            roles:
              client:
                server_address: 198.18.0.1
                server_address2: 198.18.0.7
                fallback_servers: [teredo.example.net., 198.18.1.1]
                interface: "123"
                bind_address: 198.18.0.5
                bind_port: 3545
                refresh_interval: 12.5
                mtu: 1400
                hook: /etc/teredo/hook
            """
        client = parse(text).roles.client
        self.assertEqual(client.server_address, "198.18.0.1")
        self.assertEqual(client.server_address2, IPv4Address("198.18.0.7"))
        self.assertEqual(client.fallback_servers, ("teredo.example.net.", "198.18.1.1"))
        self.assertEqual(
            (client.interface, client.bind_address, client.bind_port, client.refresh_interval, client.mtu),
            ("123", IPv4Address("198.18.0.5"), 3545, 12.5, 1400),
        )
        self.assertEqual(client.hook, "/etc/teredo/hook")

    def test_client_extensions(self) -> None:
        base = "roles:\n  client:\n    server_address: 198.18.0.1\n"
        self.assertEqual(parse(base).roles.client.extensions, ClientExtensions(upnp=True))
        off = parse(base + "    extensions: {upnp: false}\n").roles.client.extensions
        self.assertEqual(off, ClientExtensions(upnp=False))
        self.assertEqual(parse(base + "    extensions:\n").roles.client.extensions, ClientExtensions())

    def test_client_extensions_errors_name_their_lines(self) -> None:
        base = "roles:\n  client:\n    server_address: 198.18.0.1\n"
        self.assertEqual(
            errors(base + "    extensions:\n      upnp: yes please\n      upmp: true\n"),
            [
                "teredo.yaml:4: roles.client.extensions: upnp (line 5): expected true or false, got 'yes please'; "
                "upmp (line 6): unknown key; did you mean 'upnp'?"
            ],
        )
        self.assertEqual(
            errors(base + "    extensions: [upnp]\n"),
            [
                "teredo.yaml:4: roles.client.extensions: "
                "expected a mapping of extension name to true or false, got a list"
            ],
        )

    def test_manhole_section_with_no_keys_enables_defaults(self) -> None:
        config = parse("roles:\n  relay:\nmanhole:\nlog: {level: debug}\n")
        self.assertEqual(config.manhole, ManholeConfig())
        self.assertEqual(config.log.level, "debug")

    def test_console_admission_limits_are_read_and_checked(self) -> None:
        config = parse("roles:\n  relay:\nmanhole:\n  max_unauthenticated: 3\n  login_grace_time: 2.5\n")
        self.assertEqual((config.manhole.max_unauthenticated, config.manhole.login_grace_time), (3, 2.5))
        self.assertEqual((ManholeConfig().max_unauthenticated, ManholeConfig().login_grace_time), (10, 60.0))
        self.assertEqual(errors("roles:\n  relay:\nmanhole:\n  max_unauthenticated: 0\n  login_grace_time: 0\n"), [
            "teredo.yaml:4: manhole.max_unauthenticated: 0 is out of range 1..1000",
            "teredo.yaml:5: manhole.login_grace_time: 0 is out of range 1..600 seconds",
        ])
        self.assertEqual(errors("roles:\n  relay:\nmanhole:\n  login_grace_time: forever\n"), [
            "teredo.yaml:4: manhole.login_grace_time: expected a number of seconds, got 'forever'",
        ])

    def test_parsed_config_is_immutable(self) -> None:
        config = load_config(SAMPLE)
        with self.assertRaises(dataclasses.FrozenInstanceError):
            config.roles.server.mtu = 1500
        with self.assertRaises(dataclasses.FrozenInstanceError):
            config.roles = RolesConfig()
        self.assertIsInstance(config.roles.client.fallback_servers, tuple)
        hash(config)  # usable as a dict key / set member for reload diffs

    def test_two_loads_of_an_unchanged_file_are_equal(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("roles:\n  relay:\n    max_peers: 10\n")
        first, second = load_config(path), load_config(path)
        self.assertEqual(first, second)
        self.assertEqual(hash(first), hash(second))
        with open(path, "w") as f:
            f.write("roles:\n  relay:\n    max_peers: 11\n")
        self.assertNotEqual(load_config(path), first)

    def test_sample_config_enables_everything(self) -> None:
        config = load_config(SAMPLE)
        self.assertEqual(list(config.roles.enabled()), ["server", "relay", "client"])
        self.assertEqual(config.roles.client.server_address, "teredo.trex.fi")
        self.assertEqual(config.manhole, ManholeConfig())

    def test_unreadable_files_are_config_errors(self) -> None:
        missing = os.path.join(self.mktemp(), "teredo.yaml")
        with self.assertRaises(ConfigError) as caught:
            load_config(missing)
        self.assertEqual(caught.exception.errors, [f"{missing}: cannot read: No such file or directory"])
        latin1 = self.mktemp()
        with open(latin1, "wb") as f:
            f.write(b"roles: \xe9\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(latin1)
        self.assertEqual(caught.exception.errors, [f"{latin1}: not UTF-8 text (byte offset 7)"])


class ServerWorkersTests(SynchronousTestCase):
    def test_workers_are_a_small_count_and_exclude_anycast(self) -> None:
        head = "roles:\n  server:\n    bind_address: 198.18.0.1\n"
        self.assertEqual(parse_config(head + "    workers: 4\n", "teredo.yaml").roles.server.workers, 4)
        self.assertEqual(errors(head + "    workers: 0\n"),
                         ["teredo.yaml:4: roles.server.workers: 0 is out of range 1..64"])
        self.assertEqual(errors(head + "    anycast: true\n    workers: 2\n"),
                         ["teredo.yaml:4: roles.server.anycast: not available with workers > 1 (the workers' supervisor"
                          " does not own the /32s); use workers: 1 or leave anycast off"])


class CollisionTests(SynchronousTestCase):
    """Two roles may not bind one UDP address:port; 0.0.0.0 overlaps every address."""

    def test_accepted_layouts(self) -> None:
        for text in (
            # distinct server and relay addresses on the Teredo port
            "roles:\n  server: {bind_address: 198.18.0.1}\n  relay: {bind_address: 198.18.0.3}\n",
            # one address, different ports
            "roles:\n  server: {bind_address: 198.18.0.1}\n  relay: {bind_address: 198.18.0.1, bind_port: 3545}\n",
            # a client on port 0 never collides: the kernel picks a free port
            "roles:\n  relay:\n  client: {server_address: 198.18.0.1}\n",
            # wildcard relay on another port than the client
            "roles:\n  relay:\n  client: {server_address: 198.18.0.1, bind_port: 3545}\n",
        ):
            parse(text)

    def test_rejected_layouts(self) -> None:
        cases = [
            (
                "roles:\n  server: {bind_address: 198.18.0.1}\n  relay: {bind_address: 198.18.0.2}\n",
                "teredo.yaml:3: roles.relay.bind_address: 198.18.0.2:3544 collides with"
                " roles.server.bind_address2 198.18.0.2:3544",
            ),
            (
                "roles:\n  relay: {bind_address: 198.18.0.9}\n  client: {server_address: x.example, bind_port: 3544}\n",
                "teredo.yaml:3: roles.client.bind_address: 0.0.0.0:3544 collides with"
                " roles.relay.bind_address 198.18.0.9:3544",
            ),
            (
                "roles:\n  server: {bind_address: 198.18.0.1, bind_address2: 198.18.0.1}\n",
                "teredo.yaml:2: roles.server.bind_address2: 198.18.0.1:3544 collides with"
                " roles.server.bind_address 198.18.0.1:3544",
            ),
            (
                "roles:\n  relay: {interface: teredo}\n  client: {server_address: x.example}\n",
                "teredo.yaml:3: roles.client.interface: 'teredo' is also roles.relay.interface;"
                " each role needs its own TUN device",
            ),
        ]
        for text, expected in cases:
            self.assertEqual(errors(text), [expected])

    def test_collisions_are_reported_even_when_a_section_has_errors(self) -> None:
        text = """\
            roles:
              server:
                bind_address: 198.18.0.1
                mtu: 9
              relay:
                bind_address: 198.18.0.2
                interface: teredo
              client:
                server_address: -bad-
                refresh_interval: 0
            """
        self.assertEqual(errors(text), [
            "teredo.yaml:4: roles.server.mtu: 9 is out of range 1280..65535",
            "teredo.yaml:6: roles.relay.bind_address: 198.18.0.2:3544 collides with roles.server.bind_address2"
            " 198.18.0.2:3544",
            "teredo.yaml:8: roles.client.interface: 'teredo' is also roles.relay.interface; each role needs its"
            " own TUN device",
            "teredo.yaml:9: roles.client.server_address: '-bad-' is not a hostname or IPv4 address",
            "teredo.yaml:10: roles.client.refresh_interval: 0 is out of range 1..120 seconds",
        ])

    def test_a_wrong_address_or_port_is_not_also_a_collision(self) -> None:
        # Left out, the wrong key would fall back to 0.0.0.0 or 3544 and collide by mistake.
        text = """\
            roles:
              server: {bind_address: 198.18.0.1}
              relay: {bind_address: 300.0.0.1}
              client: {server_address: x.example, bind_port: -1}
            """
        self.assertEqual(errors(text), [
            "teredo.yaml:3: roles.relay.bind_address: '300.0.0.1' is not an IPv4 address",
            "teredo.yaml:4: roles.client.bind_port: -1 is out of range 0..65535",
        ])
        self.assertEqual(errors("roles:\n  server: {bind_address: 0.0.0.0}\n  relay: {bind_address: 198.18.0.9}\n"),
                         ["teredo.yaml:2: roles.server.bind_address: the server needs a specific address"])


class InterfaceNameTests(SynchronousTestCase):
    """The kernel counts IFNAMSIZ in bytes: 15 at most, whatever the characters."""

    def test_multibyte_names_are_counted_in_bytes(self) -> None:
        self.assertEqual(errors("roles:\n  relay: {interface: ääääääää}\n"),
                         ["teredo.yaml:2: roles.relay.interface: 'ääääääää' is not an interface name (1 to 15 bytes)"])
        self.assertEqual(parse("roles:\n  relay: {interface: äääääää}\n").roles.relay.interface, "äääääää")
        self.assertEqual(parse("roles:\n  relay: {interface: abcdefghijklmno}\n").roles.relay.interface,
                         "abcdefghijklmno")


class FileSafetyTests(SynchronousTestCase):
    """Whatever sits at the config path, loading it answers at once, with one short line."""

    def test_fifo_is_refused_without_blocking(self) -> None:
        fifo = self.mktemp()
        os.mkfifo(fifo)  # no writer: a blocking open() would wait forever
        self.assertEqual(load_errors(fifo), [f"{fifo}: cannot read: a FIFO, not a regular file"])

    def test_devices_and_directories_are_refused(self) -> None:
        self.assertEqual(load_errors("/dev/zero"), ["/dev/zero: cannot read: a character device, not a regular file"])
        directory = self.mktemp()
        os.mkdir(directory)
        self.assertEqual(load_errors(directory), [f"{directory}: cannot read: a directory, not a regular file"])

    def test_file_over_one_mebibyte_is_refused(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("roles:\n  relay:\n#" + "#" * (2 * 1024 * 1024 - 18) + "\n")
        self.assertEqual(load_errors(path), [f"{path}: cannot read: too large (2097152 bytes; the limit is 1048576)"])

    def test_file_just_under_the_limit_is_read(self) -> None:
        path = self.mktemp()
        text = "roles:\n  relay:\n"
        with open(path, "w") as f:
            f.write(text + "#" * (config_module.MAX_CONFIG_BYTES - len(text) - 1) + "\n")
        self.assertEqual(list(load_config(path).roles.enabled()), ["relay"])

    def test_long_values_are_cut_in_error_messages(self) -> None:
        long = "x" * 500_000
        found = errors(f"roles:\n  relay:\n    interface: {long}\n    prefix: {long}\n    mtu: {'9' * 500}\n"
                       f"    max_peers: {'9' * 5000}\n")
        self.assertEqual(len(found), 4)
        for message in found:
            self.assertLess(len(message), 200, message)
        self.assertEqual(found[0], f"teredo.yaml:3: roles.relay.interface: '{'x' * 59}..."
                                   " (500002 characters) is not an interface name (1 to 15 bytes)")
        self.assertEqual(found[2], f"teredo.yaml:5: roles.relay.mtu: {'9' * 60}... (500 characters) is out of range"
                                   " 1280..65535")
        self.assertEqual(found[3], f"teredo.yaml:6: roles.relay.max_peers: {'9' * 60}... (5000 characters) is too"
                                   " long for an integer")

    def test_a_list_error_names_only_its_first_bad_items(self) -> None:
        bad = ", ".join(["-bad"] * 1000)
        self.assertEqual(errors(f"roles:\n  client:\n    server_address: a\n    fallback_servers: [{bad}]\n"), [
            "teredo.yaml:4: roles.client.fallback_servers: item 0 (line 4): '-bad' is not a hostname or IPv4 address;"
            " item 1 (line 4): '-bad' is not a hostname or IPv4 address; item 2 (line 4): '-bad' is not a hostname"
            " or IPv4 address; and 997 more"])

    def test_libyaml_composes_when_present(self) -> None:
        # 60 times faster on big files; its nodes still carry the line numbers the errors need.
        self.assertIs(config_module._YAML_LOADER, yaml.CSafeLoader)

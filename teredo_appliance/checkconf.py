"""`teredo-checkconf [--host] [FILE]`: validate a teredo.yaml before (re)loading it, without root or DNS.

Beyond what a reload checks, it also checks the files the config names (the console's
authorized_keys and the place of its host key), as the user it runs as. `--host` also
checks what the host must provide (hostcheck.py); `--from-miredo FILE` prints a Miredo
configuration converted to teredo.yaml (miredo_import.py).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any

from teredo_appliance import __version__
from teredo_appliance.boundedfile import FileRefused, read_bounded
from teredo_appliance.config import DEFAULT_PATH, ConfigError, load_config, parse_config, truncation_hint
from teredo_appliance.config_model import ClientConfig, Config, RelayConfig, ServerConfig
from teredo_appliance.hostcheck import host_warnings
from teredo_appliance.miredo_import import convert, looks_like_miredo
from teredo_appliance.wire.constants import TEREDO_PORT


def describe_role(name: str, role: Any) -> str:
    """One line saying what a role would bind and serve, for operators comparing configs;
    a third party's role shows its keys."""
    if isinstance(role, ServerConfig):
        return (
            f"server: UDP {role.bind_address}:{TEREDO_PORT} and {role.bind_address2}:{TEREDO_PORT},"
            f" prefix {role.prefix}, MTU {role.mtu}"
        )
    if isinstance(role, RelayConfig):
        return (
            f"relay: UDP {role.bind_address}:{role.bind_port}, TUN {role.interface}, prefix {role.prefix},"
            f" MTU {role.mtu}, at most {role.max_peers} peers"
        )
    if not isinstance(role, ClientConfig):
        return f"{name}: " + ", ".join(f"{f.name} {getattr(role, f.name)}" for f in fields(role))
    secondary = role.server_address2 or "primary + 1"
    servers = ", ".join((f"{role.server_address} (secondary {secondary})", *role.fallback_servers))
    port = role.bind_port or "<any port>"
    off = [f.name for f in fields(role.extensions) if not getattr(role.extensions, f.name)]
    return (
        f"client: servers {servers}, UDP {role.bind_address}:{port}, TUN {role.interface},"
        f" refresh {role.refresh_interval:g}s, MTU {role.mtu}" + (f", extensions off: {', '.join(off)}" if off else "")
    )


def summary(config: Config) -> list[str]:
    """The lines printed for a valid configuration: each role, then the console, control socket
    and metrics endpoint."""
    lines = [describe_role(name, role) for name, role in config.roles.enabled().items()]
    if config.manhole is not None:
        lines.append(f"manhole: {config.manhole.listen}, keys from {config.manhole.authorized_keys}")
    lines.append(f"control: {config.control.socket}" if config.control is not None else "control: off")
    if config.metrics is not None:
        lines.append(f"metrics: {config.metrics.listen}")
    return lines


def from_miredo(path: str) -> int:
    """Print `path` converted to teredo.yaml; what was not carried over goes to stderr."""
    try:
        text = read_bounded(path)[0].decode("utf-8")
    except (OSError, FileRefused, UnicodeDecodeError) as e:
        print(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 1
    conversion = convert(text, path)
    for note in conversion.notes:
        print(note, file=sys.stderr)
    output = conversion.yaml_text(path)
    try:
        parse_config(output, f"{path} (converted)")
    except ConfigError as e:
        for error in e.errors:
            print(error, file=sys.stderr)
        return 1
    print(output, end="")
    return 0


def miredo_hint(path: str) -> str | None:
    """A pointer to --from-miredo when a file that failed is a Miredo configuration."""
    try:
        text = read_bounded(path)[0].decode("utf-8", errors="replace")
    except (OSError, FileRefused):
        return None
    if not looks_like_miredo(text):
        return None
    return f"hint: {path} looks like a Miredo configuration; convert it with: teredo-checkconf --from-miredo {path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="teredo-checkconf",
        description="Check a teredo appliance configuration; print the roles it would run or every error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--host", action="store_true",
                        help="also check this host's settings the roles depend on (IPv6 forwarding for a relay)")
    parser.add_argument("--from-miredo", metavar="MIREDO_CONF",
                        help="print a miredo.conf or miredo-server.conf converted to teredo.yaml, and exit")
    parser.add_argument("file", nargs="?", default=DEFAULT_PATH, help=f"configuration file (default {DEFAULT_PATH})")
    args = parser.parse_args(argv)
    if args.from_miredo:
        return from_miredo(args.from_miredo)
    try:
        config = load_config(args.file, check_files=True)
    except ConfigError as e:
        for error in e.errors:
            print(error, file=sys.stderr)
        hint = miredo_hint(args.file)
        if hint:
            print(hint, file=sys.stderr)
        return 1
    for line in summary(config):
        print(line)
    if args.host:
        for warning in host_warnings(config):
            print(f"warning: {warning}", file=sys.stderr)
    hint = truncation_hint(args.file)
    if hint:
        print(f"warning: {hint}", file=sys.stderr)
    return 0

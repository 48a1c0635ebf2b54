"""`teredo-checkconf [FILE]`: validate a teredo.yaml before (re)loading it, without root or DNS.

Beyond what a reload checks, it also checks the files the config names (the console's
authorized_keys and the place of its host key), as the user it runs as.
"""

from __future__ import annotations

import argparse
import sys

from teredo_appliance.config import DEFAULT_PATH, ConfigError, load_config, truncation_hint
from teredo_appliance.config_model import TEREDO_PORT, ClientConfig, Config, RelayConfig, ServerConfig


def describe_role(role: ServerConfig | RelayConfig | ClientConfig) -> str:
    """One line saying what a role would bind and serve, for operators comparing configs."""
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
    secondary = role.server_address2 or "primary + 1"
    servers = ", ".join((f"{role.server_address} (secondary {secondary})", *role.fallback_servers))
    port = role.bind_port or "<any port>"
    return (
        f"client: servers {servers}, UDP {role.bind_address}:{port}, TUN {role.interface},"
        f" refresh {role.refresh_interval:g}s, MTU {role.mtu}"
    )


def summary(config: Config) -> list[str]:
    """The lines printed for a valid configuration: each role, then the admin console if any."""
    lines = [describe_role(role) for role in config.roles.enabled().values()]
    if config.manhole is not None:
        lines.append(f"manhole: {config.manhole.listen}, keys from {config.manhole.authorized_keys}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="teredo-checkconf",
        description="Check a teredo appliance configuration; print the roles it would run or every error.",
    )
    parser.add_argument("file", nargs="?", default=DEFAULT_PATH, help=f"configuration file (default {DEFAULT_PATH})")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.file, check_files=True)
    except ConfigError as e:
        for error in e.errors:
            print(error, file=sys.stderr)
        return 1
    for line in summary(config):
        print(line)
    hint = truncation_hint(args.file)
    if hint:
        print(f"warning: {hint}", file=sys.stderr)
    return 0

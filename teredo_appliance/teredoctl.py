"""`teredoctl`: ask a running appliance over its control socket (see control.py).

Plain blocking socket code: a CLI sends one request and waits for one answer. Exit
status: 0 done, 1 refused (a reload with errors, an unknown role), 2 usage, 3 the
appliance cannot be reached (no socket, permission denied, no answer).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

from teredo_appliance.config_model import ControlConfig
from teredo_appliance.console import render_check, render_peers, render_status, render_summary

DEFAULT_SOCKET = ControlConfig.socket
DEFAULT_PEER_ROWS = 50
ANSWER_TIMEOUT = 300.0  # seconds: a reload waits for roles to stop and start
MAX_ANSWER = 64 * 1024 * 1024  # a peer table of 65536 rows is ~10 MiB of JSON
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class Unreachable(Exception):
    """The appliance could not be asked; the message says why and what to check."""


def ask(path: str, request: dict[str, Any], timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
    """Send one request to the control socket at `path` and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise Unreachable(f"{path}: no such socket (is the appliance running, with control enabled?)") from None
        except PermissionError:
            raise Unreachable(f"{path}: permission denied (run as root or as the appliance's user)") from None
        except ConnectionRefusedError:
            raise Unreachable(f"{path}: connection refused (the appliance is not running; a stale socket)") from None
        except OSError as error:
            raise Unreachable(f"{path}: {error.strerror or error}") from None
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = bytearray()
            while not data.endswith(b"\n") and len(data) < MAX_ANSWER:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise Unreachable(f"{path}: no answer within {timeout:g} s") from None
        except OSError as error:
            raise Unreachable(f"{path}: {error.strerror or error}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise Unreachable(f"{path}: the answer is not JSON (is this a teredo control socket?)") from None
    if not isinstance(answer, dict):
        raise Unreachable(f"{path}: the answer is not a JSON object")
    return answer


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="teredoctl", description="Query and control a running teredo appliance.")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"control socket (default {DEFAULT_SOCKET})")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", help="every role's report: state, addresses, peers, counters")
    status.add_argument("--json", action="store_true", help="print the raw JSON report")
    peers = commands.add_parser("peers", help="the peer table of a role (relay or client)")
    peers.add_argument("role")
    peers.add_argument("--json", action="store_true", help="print JSON")
    peers.add_argument("--limit", type=int, default=DEFAULT_PEER_ROWS,
                       help=f"rows to list, most recent first (default {DEFAULT_PEER_ROWS}; 0: all)")
    reload = commands.add_parser("reload", help="re-read the configuration and apply it; exit 1 if refused")
    reload.add_argument("--dry-run", action="store_true", help="only validate and say what would change")
    commands.add_parser("version", help="the appliance's version")
    drain = commands.add_parser("drain", help="withdraw a role's anycast route or addresses; waits out the grace")
    drain.add_argument("role", help="relay or server")
    drain.add_argument("--grace", type=float, default=None,
                       help="seconds to serve existing peers before drained (default: the role's drain_grace)")
    undrain = commands.add_parser("undrain", help="announce a drained role again")
    undrain.add_argument("role", help="relay or server")
    return p


def request_for(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "peers":
        return {"command": "peers", "role": args.role, "limit": args.limit}
    if args.command == "reload":
        return {"command": "reload", "dry_run": args.dry_run}
    if args.command == "drain":
        return {"command": "drain", "role": args.role, "grace": args.grace}
    if args.command == "undrain":
        return {"command": "undrain", "role": args.role}
    return {"command": args.command}


def render(args: argparse.Namespace, result: Any) -> str:
    """The human-readable form of a successful answer."""
    if args.command == "status":
        return render_status(result)
    if args.command == "peers":
        return render_peers(result, show_all="teredoctl peers {role} --limit 0")
    if args.command == "reload" and args.dry_run:
        return render_check(result)
    if args.command == "reload":  # errors go to stderr, one per line, as teredo-checkconf prints them
        return "\n".join(line for line in render_summary(result).splitlines() if not line.startswith("errors"))
    return "\n".join(f"{key}: {value}" for key, value in result.items())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "peers" and args.limit < 0:
        print("teredoctl: --limit must be 0 (all) or more", file=sys.stderr)
        return EXIT_USAGE
    timeout = ANSWER_TIMEOUT + ((args.grace or 0.0) if args.command == "drain" else 0.0)
    try:
        answer = ask(args.socket, request_for(args), timeout)
    except Unreachable as error:
        print(f"teredoctl: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if getattr(args, "json", False):
        print(json.dumps(answer.get("result") if answer.get("ok") else answer, indent=2, default=str))
    elif "result" in answer:
        print(render(args, answer["result"]))
    if not answer.get("ok"):
        if not getattr(args, "json", False):
            for error in answer.get("errors") or []:
                print(error, file=sys.stderr)
            print(f"teredoctl: {answer.get('error', 'refused')}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

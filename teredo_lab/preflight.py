"""Can the lab run here? One reason string for the CLI and for skipping tests."""

from __future__ import annotations

import os
import shutil
import subprocess

TOOLS = ("ip", "iptables-restore", "sysctl", "ping")
MIREDO_TOOLS = ("miredo", "miredo-server")


def unavailable_reason(need_miredo: bool = False) -> str | None:
    """Why the lab cannot run (not root, no netns, missing tools), or None if it can."""
    if os.geteuid() != 0:
        return "needs root: the lab creates network namespaces, veths, TUN devices and iptables rules"
    missing = [t for t in TOOLS + (MIREDO_TOOLS if need_miredo else ()) if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun: the Teredo daemons need TUN devices"
    probe = f"tlprobe{os.getpid()}"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if added.returncode != 0:
        return f"network namespaces unavailable: ip netns add: {added.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    return None

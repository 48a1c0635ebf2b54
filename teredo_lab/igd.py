"""NAT 2's UPnP Internet Gateway Device: a real miniupnpd (iptables flavour) in its namespace.

What it takes, found by trying (see LAB-NOTES): the NAT's rules live in the legacy
xtables tables with the MINIUPNPD chains created by the lab (topology._nat_rules), and the
lab's "public" addresses are in 198.18.0.0/15, which miniupnpd calls reserved and refuses
to forward ports for. With `ext_perform_stun` it asks lab/stun.py, running on the router's
own external address, and then believes the address is public. Both processes are started
with `ip netns exec` and recorded, so `down` (or `teredo-lab down`) stops them by PID.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Protocol

from teredo_lab import stun, topology
from teredo_lab.errors import LabError


class Lab(Protocol):
    """What the IGD needs of teredo_lab.lab.Lab (which imports this module)."""

    prefix: str | None
    rundir: Path | None

    def ns(self, node: str) -> str: ...

    def run(self, node: str, argv: list[str]) -> subprocess.CompletedProcess[str]: ...

    def start_service(self, name: str, node: str, argv: list[str]) -> Path: ...

    def is_running(self, name: str) -> bool: ...

NODE = "nat2"
DAEMON, STUN = "miniupnpd", "stun"
READY_TIMEOUT = 15.0  # miniupnpd's STUN check alone waits up to 3 s
READY_LINES = ("Port forwarding is now enabled", "HTTP listening on port")
POLL = 0.05


def miniupnpd_conf(prefix: str, lease_file: Path, device_uuid: str) -> str:
    """The daemon's configuration: LAN side listening, secure mode, only the LAN may map."""
    lan = topology.NAT2_LAN
    return (
        f"ext_ifname={prefix}-{topology.WAN}\n"
        f"listening_ip={prefix}-{topology.LAN}\n"
        "enable_upnp=yes\n"
        "enable_natpmp=yes\n"
        "secure_mode=yes\n"
        "ipv6_disable=yes\n"
        "system_uptime=yes\n"
        f"lease_file={lease_file}\n"
        f"uuid={device_uuid}\n"
        "ext_perform_stun=yes\n"
        f"ext_stun_host={topology.NAT2_WAN}\n"
        f"ext_stun_port={topology.STUN_PORT}\n"
        f"allow 1024-65535 {lan} 1024-65535\n"
        "deny 0-65535 0.0.0.0/0 0-65535\n"
    )


def start(lab: Lab) -> None:
    """Start the STUN responder and miniupnpd in NAT 2; LabError unless forwarding is enabled."""

    assert lab.prefix is not None and lab.rundir is not None
    lab.start_service(STUN, NODE, [sys.executable, stun.__file__, topology.NAT2_WAN, str(topology.STUN_PORT)])
    conf = lab.rundir / "miniupnpd.conf"
    conf.write_text(miniupnpd_conf(lab.prefix, lab.rundir / "miniupnpd.leases", str(uuid.uuid4())))
    # A pid file of its own: the default /var/run/miniupnpd.pid would make a second lab's
    # miniupnpd (or the host's) refuse to start with "already running".
    log = lab.start_service(DAEMON, NODE, ["miniupnpd", "-d", "-f", str(conf), "-P", str(lab.rundir / "miniupnpd.pid")])
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        text = log.read_text(errors="replace")
        if all(line in text for line in READY_LINES):
            return
        if not lab.is_running(DAEMON) or time.monotonic() > deadline:
            raise LabError(f"miniupnpd in {lab.ns(NODE)} did not enable port forwarding\n--- {log} ---\n{text}")
        time.sleep(POLL)


def port_mappings(lab: Lab) -> list[str]:
    """The DNAT rules miniupnpd holds now (its nat MINIUPNPD chain), as `iptables -S` lines."""
    out = lab.run(NODE, ["iptables-legacy", "-t", "nat", "-S", topology.IGD_CHAIN]).stdout
    return [line for line in out.splitlines() if line.startswith("-A ")]


TOOLS = ("miniupnpd", "iptables-legacy-restore", "iptables-legacy", "upnpc")


def missing_tools() -> str | None:
    """Why NAT 2 cannot have its IGD here (tools not installed), or None."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return f"missing tools for the UPnP IGD: {', '.join(missing)} (tools/setup.sh installs them)" if missing else None

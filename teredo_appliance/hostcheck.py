"""What the host must provide that a configuration cannot: checked at start and by checkconf --host.

A relay forwards packets between its TUN device and the native IPv6 network: with
net.ipv6.conf.all.forwarding=0 the kernel drops every one of them, and nothing else says
so. (A server's native packets leave through its raw socket as locally sent packets, so
forwarding does not concern it.)
"""

from __future__ import annotations

import os

from teredo_appliance.config_model import Config

PROC_SYS = "/proc/sys"
FORWARDING = "net/ipv6/conf/all/forwarding"


def sysctl_name(path: str) -> str:
    return path.replace("/", ".")


def host_warnings(config: Config, proc_sys: str = PROC_SYS) -> list[str]:
    """One sentence per host setting that keeps a configured role from working."""
    if config.roles.relay is None:
        return []
    path = os.path.join(proc_sys, FORWARDING)
    try:
        with open(path, "rb") as f:
            value = f.read().strip()
    except OSError as e:
        return [f"relay: cannot read {path} ({e.strerror}): is IPv6 disabled on this host?"]
    if value != b"0":
        return []
    return [f"relay: {sysctl_name(FORWARDING)}=0: this host does not forward IPv6, so the relay cannot pass "
            "packets between Teredo clients and native IPv6; set it to 1 (and accept_ra=2 on an upstream "
            "interface configured by router advertisements): see TROUBLESHOOTING in twistd-teredo(8)"]

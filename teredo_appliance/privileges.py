"""What a reload can still do after `twistd -u/-g` dropped root, and how to say what it cannot.

Roles open their TUN devices and sockets in `privilegedStartService`, as root. A reload
that (re)starts a role later runs as the unprivileged user: creating a TUN device then needs
CAP_NET_ADMIN (or a persistent device owned by that user), a port below 1024 needs
CAP_NET_BIND_SERVICE. Whatever can be known beforehand is refused before anything is
stopped; whatever fails anyway becomes one sentence naming the role and the missing right.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from typing import Any

from twisted.internet.error import CannotListenError

from teredo_appliance.config_model import ServerConfig

CAP_NET_BIND_SERVICE = 10  # linux/capability.h
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
FIRST_UNPRIVILEGED_PORT = 1024
DENIED = (errno.EPERM, errno.EACCES)


def privileges_dropped() -> bool:
    """True when not root: after twistd -u, or started as the systemd unit's user.

    Either way what the daemon may still do is read from its capabilities: the unit's
    user holds CAP_NET_ADMIN, CAP_NET_RAW and CAP_NET_BIND_SERVICE as ambient capabilities,
    so its reloads pass every check below.
    """
    return os.geteuid() != 0


def has_capability(capability: int, status_path: str = "/proc/self/status") -> bool:
    """Whether `capability` is in this process's effective set.

    Read as bytes: after the drop, a text codec not imported yet may be unloadable
    (the Python install need not be readable by the -u user).
    """
    with open(status_path, "rb") as status:
        for line in status:
            if line.startswith(b"CapEff:"):
                return bool(int(line.split()[1], 16) >> capability & 1)
    return False


def tun_owned_by_me(ifname: str, sys_class_net: str = "/sys/class/net") -> bool:
    """Whether `ifname` is a persistent TUN device this user may attach to without privileges."""
    try:
        with open(os.path.join(sys_class_net, ifname, "owner"), "rb") as owner:
            return int(owner.read()) == os.geteuid()
    except (OSError, ValueError):
        return False


def tun_refusal(name: str, ifname: str) -> str:
    return (f"{name}: cannot create TUN {ifname!r} after privileges were dropped "
            "(needs CAP_NET_ADMIN or a persistent device owned by this user)")


def port_refusal(name: str, port: int) -> str:
    return (f"{name}: cannot bind port {port} after privileges were dropped "
            f"(ports below {FIRST_UNPRIVILEGED_PORT} need CAP_NET_BIND_SERVICE)")


def raw_socket_refusal(name: str) -> str:
    return (f"{name}: cannot open its raw IPv6 socket after privileges were dropped "
            "(needs CAP_NET_RAW)")


def tun_name(section: Any) -> str | None:
    """The TUN device a component creates: a relay's or client's `interface`, an anycast
    server's `anycast_interface`; None if it creates none."""
    if isinstance(section, ServerConfig):
        return section.anycast_interface if section.anycast else None
    return getattr(section, "interface", None)


def preflight(name: str, section: Any) -> list[str]:
    """Why (re)starting this component cannot work now; empty while running as root."""
    if not privileges_dropped():
        return []
    problems = []
    ifname = tun_name(section)
    if ifname and not has_capability(CAP_NET_ADMIN) and not tun_owned_by_me(ifname):
        problems.append(tun_refusal(name, ifname))
    port = getattr(section, "bind_port", 0)
    if 0 < port < FIRST_UNPRIVILEGED_PORT and not has_capability(CAP_NET_BIND_SERVICE):
        problems.append(port_refusal(name, port))
    if isinstance(section, ServerConfig) and not has_capability(CAP_NET_RAW):
        problems.append(raw_socket_refusal(name))
    return problems


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps: CannotListenError.socketError, __cause__, __context__."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = getattr(current, "socketError", None)
        pending += [current.__context__, current.__cause__,
                    wrapped if isinstance(wrapped, BaseException) else None]


def _permission_denied(error: BaseException) -> bool:
    # OSError carries .errno; pyroute2's NetlinkError carries .code.
    return any(getattr(e, "errno", None) in DENIED or getattr(e, "code", None) in DENIED
               for e in _causes(error))


def describe_failure(name: str, section: Any, error: BaseException) -> str:
    """One sentence for a component that failed to start: the role, the resource, the reason."""
    listen = next((e for e in _causes(error) if isinstance(e, CannotListenError)), None)
    if privileges_dropped() and _permission_denied(error):
        if listen is not None and isinstance(listen.port, int) and listen.port < FIRST_UNPRIVILEGED_PORT:
            return port_refusal(name, listen.port)
        ifname = tun_name(section)
        if ifname:
            return tun_refusal(name, ifname)
        return (f"{name}: permission denied after privileges were dropped ({error}); "
                "restart the daemon to apply this change")
    if listen is not None and isinstance(listen.port, str):  # twisted.pair.tuntap names the device
        return f"{name}: cannot open TUN {listen.port!r}: {listen.socketError}"
    return f"{name}: cannot start: {error}"

"""Run our daemon in the lab the way etc/teredo.service runs it: proof that the unit works.

systemd is not needed: the unit's settings that decide whether a role can work at all are
applied with their kernel equivalents, read from the unit file itself so the two cannot
drift apart. An unprivileged uid holding exactly the unit's ambient capabilities and
bounding set, no supplementary groups, no_new_privs (setpriv, util-linux), and
MemoryDenyWriteExecute as the kernel's own PR_SET_MDWE (Linux 6.3+), which execve keeps.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

NOBODY = 65534
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1  # linux/prctl.h

# Sets MDWE on itself, then execs the rest of its arguments (which inherit it); one line,
# so the lab's log shows the command readably.
MDWE_THEN_EXEC = (
    "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
    f"libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0 "
    "or sys.exit('PR_SET_MDWE: ' + os.strerror(ctypes.get_errno())); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


class UnitError(Exception):
    """The unit file lacks a setting the confinement needs."""


def unit_settings(path: str | Path) -> dict[str, list[str]]:
    """The [Service] section of a unit: key -> every value given, in order."""
    settings: dict[str, list[str]] = {}
    section = None
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def capabilities(settings: dict[str, list[str]], key: str) -> list[str]:
    """`CAP_NET_ADMIN CAP_NET_RAW` -> ['net_admin', 'net_raw'] (setpriv's spelling)."""
    if key not in settings:
        raise UnitError(f"the unit has no {key}=")
    return [name.removeprefix("CAP_").lower() for value in settings[key] for name in value.split()]


def _yes(settings: dict[str, list[str]], key: str) -> bool:
    return settings.get(key, ["no"])[-1] in ("yes", "true", "1", "on")


def confinement(unit: str | Path, uid: int = NOBODY, gid: int = NOBODY) -> tuple[str, ...]:
    """A command prefix running the rest as `unit` would (see the module docstring)."""
    settings = unit_settings(unit)
    ambient = ",".join(f"+{cap}" for cap in capabilities(settings, "AmbientCapabilities"))
    bounding = ",".join(f"+{cap}" for cap in capabilities(settings, "CapabilityBoundingSet"))
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise UnitError("setpriv (util-linux) is not installed")
    command = [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
               f"--inh-caps=-all,{ambient}", f"--ambient-caps=-all,{ambient}", f"--bounding-set=-all,{bounding}"]
    if _yes(settings, "NoNewPrivileges"):
        command.append("--no-new-privs")
    command.append("--")
    if _yes(settings, "MemoryDenyWriteExecute"):
        command = [sys.executable, "-c", MDWE_THEN_EXEC, *command]
    return tuple(command)

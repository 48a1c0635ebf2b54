"""What a lab created, on disk, so `down` can remove it even after the lab's process died.

One directory per lab under /run/teredo-lab/<prefix>/ (tmpfs: a reboot clears it along
with the namespaces). `state.json` lists the namespaces and every long-lived process the
lab started, with the process start time, so a recycled PID is never signalled.
Namespaces are recorded before they are created and processes right after they start.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_ROOT = Path("/run/teredo-lab")
STATE_FILE = "state.json"
PREFIX_TAG = "tl"  # every lab prefix: "tl" + 4 hex digits, 6 bytes of the 15 an ifname may use
TERM_GRACE = 3.0  # seconds between SIGTERM and SIGKILL


@dataclass
class ProcessRecord:
    pid: int
    start: int  # clock ticks since boot (/proc/PID/stat field 22): PID plus this is unique
    namespace: str
    argv: list[str]


def _me() -> ProcessRecord:
    pid = os.getpid()
    found = process_start(pid)
    return ProcessRecord(pid, found[0] if found else 0, "", [])

_SAVING = threading.Lock()


@dataclass
class LabRecord:
    prefix: str
    rundir: str
    owner: ProcessRecord = field(default_factory=_me)  # the process that built the lab
    namespaces: list[str] = field(default_factory=list)
    processes: dict[str, ProcessRecord] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return STATE_ROOT / self.prefix

    def save(self) -> None:
        """Atomically replace the state file (a crash leaves the old or the new one).

        Thread-safe: concurrent helpers (the benchmark's parallel streams) save at once.
        """
        path = self.directory / STATE_FILE
        with _SAVING:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(self), indent=1))
            os.replace(tmp, path)

    def record_process(self, name: str, process: ProcessRecord | None) -> None:
        """Add (or with None, forget) one process and save, under the lock that save() takes:
        a parallel helper's save must never see the table change under it."""
        with _SAVING:
            if process is None:
                self.processes.pop(name, None)
            else:
                self.processes[name] = process
        self.save()

    @classmethod
    def load(cls, prefix: str) -> LabRecord:
        """The recorded state; FileNotFoundError if none, ValueError if it cannot be read."""
        try:
            data = json.loads((STATE_ROOT / prefix / STATE_FILE).read_text())
            processes = {name: ProcessRecord(**p) for name, p in data.pop("processes").items()}
            return cls(owner=ProcessRecord(**data.pop("owner")), processes=processes, **data)
        except (TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"unexpected content in {STATE_ROOT / prefix / STATE_FILE}: {e}") from e


def reserve_prefix(prefix: str | None = None) -> str:
    """Claim a prefix by creating its state directory (mkdir is the atomic test-and-set)."""
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    taken = set(netns_list())
    for _ in range(100):
        candidate = prefix or PREFIX_TAG + secrets.token_hex(2)
        if not any(ns.startswith(candidate + "-") for ns in taken):
            try:
                (STATE_ROOT / candidate).mkdir()
                return candidate
            except FileExistsError:
                pass
        if prefix:
            raise FileExistsError(f"lab prefix {prefix!r} is in use (see `teredo-lab down {prefix}`)")
    raise RuntimeError("no free lab prefix found")


def recorded_prefixes() -> list[str]:
    if not STATE_ROOT.is_dir():
        return []
    return sorted(p.name for p in STATE_ROOT.iterdir() if p.is_dir())


def in_use(prefix: str) -> str | None:
    """Why a lab should not be removed unasked (its builder still runs, or it is unreadable)."""
    try:
        owner = LabRecord.load(prefix).owner
    except FileNotFoundError:
        return None
    except ValueError as e:
        return str(e)
    if owner.pid != os.getpid() and is_running(owner):
        return f"its owner PID {owner.pid} still runs"
    return None


def netns_list() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on; None if there is no such PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2 :].split()  # the name may contain spaces and parens


def process_start(pid: int) -> tuple[int, str] | None:
    """(start time, state letter) of a process, or None if there is no such PID."""
    fields = _stat(pid)
    return None if fields is None else (int(fields[19]), fields[0])


def is_running(record: ProcessRecord) -> bool:
    """The recorded process exists, is not a zombie, and is the same one (not a reused PID)."""
    found = process_start(record.pid)
    return found is not None and found[0] == record.start and found[1] != "Z"


def terminate(record: ProcessRecord, grace: float = TERM_GRACE) -> bool:
    """Stop a recorded process and its process group; True if it was still running.

    The lab starts each process as a session leader, so its PID is also the group ID of
    its helpers (Miredo forks a privilege-separated child). The group is signalled only
    while the leader (alive or zombie) still pins that ID, so no stranger is hit.
    """
    found = process_start(record.pid)
    if found is None or found[0] != record.start:
        return False
    was_running = found[1] != "Z"
    _killpg(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and is_running(record):
        time.sleep(0.02)
    found = process_start(record.pid)
    if found is not None and found[0] == record.start:
        _killpg(record.pid, signal.SIGKILL)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and is_running(record):
            time.sleep(0.02)
    return was_running


def _killpg(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def delete_namespace(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def teardown(prefix: str, known: LabRecord | None = None) -> list[str]:
    """Remove one lab: its processes, then its namespaces, then its state directory.

    `known` is the caller's own record of the lab, used as well as the file (which may be
    gone or damaged). Idempotent. Returns warnings about anything it could not remove.
    """
    warnings: list[str] = []
    directory = STATE_ROOT / prefix
    record = LabRecord(prefix=prefix, rundir=str(directory))
    try:
        record = LabRecord.load(prefix)
    except FileNotFoundError:
        pass
    except ValueError as e:
        warnings.append(f"{prefix}: {e}; removing its namespaces by name")
    if known is not None:
        record.processes = {**known.processes, **record.processes}
        record.namespaces = list(dict.fromkeys([*known.namespaces, *record.namespaces]))
    # Last started, first stopped: clients go before the servers and the NAT's IGD they use.
    for process in reversed(list(record.processes.values())):
        terminate(process)
        if is_running(process):
            warnings.append(f"{prefix}: process {process.pid} survived SIGKILL")
    ours = [ns for ns in netns_list() if ns.startswith(prefix + "-")]
    for ns in dict.fromkeys([*record.namespaces, *ours]):
        warnings += _strangers(prefix, ns, record)
        delete_namespace(ns)
    shutil.rmtree(directory, ignore_errors=True)
    return warnings


def _strangers(prefix: str, namespace: str, record: LabRecord) -> list[str]:
    """Processes in a lab namespace that the lab did not start: reported, never killed."""
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False)
    recorded = {p.pid for p in record.processes.values()}
    strangers = [int(p) for p in out.stdout.split() if p.isdigit() and _group(int(p)) not in recorded]
    return [f"{prefix}: process {pid} in {namespace} was not started by the lab; left alone" for pid in strangers]


def _group(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[2])

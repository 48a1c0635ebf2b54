"""The SSH console's files, judged before use: one rule set for the console and teredo-checkconf.

`vet_authorized_keys` decides who may log in (the console calls it at start and on every
reload, `teredo-checkconf` before a deploy), `key_problem` is the single place that says
which listed key grants nothing (private, DSA, short RSA), `read_host_key` reads the
console's private key only if nobody else could have, and `host_key_problem` says whether
the host key can be loaded or created where the config puts it. Reads are bounded and never block (a FIFO in
place of the list must not stall the reactor).
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

from twisted.conch.ssh import keys

from teredo_appliance.boundedfile import FileRefused, describe_kind, read_bounded

UNSAFE_MODE_BITS = stat.S_IWGRP | stat.S_IWOTH  # anyone who can write the list can log in
SECRET_MODE_BITS = stat.S_IRWXG | stat.S_IRWXO  # a private key is for its owner's eyes only
MALFORMED_KEY = (keys.BadKeyError, ValueError, LookupError, struct.error)  # what conch raises
MIN_RSA_BITS = 2048  # NIST SP 800-131A; OpenSSH refuses shorter RSA keys too
REFUSED_KEY_TYPES = {b"ssh-dss": "DSA keys are not accepted (OpenSSH dropped them too)"}
_LIST_WRITABLE = ("writable by group or others", "chmod go-w")
_SECRET_READABLE = ("readable or writable by group or others", "chmod 600")


class KeysRefused(Exception):
    """A console key file that must not be used; the message names the file and the fix."""


@dataclass(frozen=True)
class KeyList:
    """The keys that may log in, and the lines that grant nothing (line number, why)."""

    keys: tuple[keys.Key, ...]
    ignored: tuple[tuple[int, str], ...]


def key_problem(key: keys.Key) -> str | None:
    """Why a listed key may not log in, or None."""
    if not key.isPublic():
        return "a private key, not a public key"
    if key.sshType() in REFUSED_KEY_TYPES:
        return REFUSED_KEY_TYPES[key.sshType()]
    if key.type() == "RSA" and key.size() < MIN_RSA_BITS:
        return f"{key.size()}-bit RSA key refused: at least {MIN_RSA_BITS} bits are needed"
    return None


def owner_and_mode_problem(what: str, path: str, info: os.stat_result, unsafe_bits: int,
                           fix: tuple[str, str]) -> str | None:
    """Why `path` is not safe to trust, or None: only root or the daemon's user may control it."""
    if info.st_uid not in (0, os.geteuid()):
        return (f"{what} {path} is owned by uid {info.st_uid}, not by root or the daemon's user "
                f"(uid {os.geteuid()}); run: chown root {path}")
    if info.st_mode & unsafe_bits:
        return f"{what} {path} is {fix[0]} (mode {stat.S_IMODE(info.st_mode):04o}); run: {fix[1]} {path}"
    return None


def parse_authorized_keys(data: bytes) -> KeyList:
    """Judge each line of an authorized_keys file; blank lines and comments are skipped."""
    found: list[keys.Key] = []
    ignored: list[tuple[int, str]] = []
    for number, line in enumerate(data.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            # A line with options (from=..., command=...) fails here and is ignored: honouring
            # its key while ignoring its restrictions would grant more than the file says.
            key = keys.Key.fromString(line)
        except MALFORMED_KEY:
            ignored.append((number, "not a plain public key"))
            continue
        problem = key_problem(key)
        if problem is None:
            found.append(key)
        else:
            ignored.append((number, problem))
    return KeyList(tuple(found), tuple(ignored))


def vet_authorized_keys(path: str) -> KeyList:
    """Read and judge the file; KeysRefused if it lets nobody in safely, OSError if unreadable.

    The file and its directory must be owned by root or the daemon's user and writable by
    nobody else (they could add their key); the owner and mode are those of the open file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        problem = owner_and_mode_problem("directory", directory, os.stat(directory), UNSAFE_MODE_BITS,
                                         _LIST_WRITABLE)
        if problem:
            raise KeysRefused(problem + f" (it holds the authorized_keys file {path})")
        data, info = read_bounded(path)
    except FileNotFoundError:
        raise KeysRefused(f"authorized_keys file {path} does not exist "
                          "(list the administrators' public keys in it, one per line)") from None
    except FileRefused as refused:
        raise KeysRefused(f"authorized_keys file {path} is {refused}") from None
    problem = owner_and_mode_problem("authorized_keys file", path, info, UNSAFE_MODE_BITS, _LIST_WRITABLE)
    if problem:
        raise KeysRefused(problem)
    found = parse_authorized_keys(data)
    if not found.keys:
        raise KeysRefused(f"authorized_keys file {path} lists no valid public key "
                          "(expected lines like 'ssh-ed25519 AAAA... admin@host')")
    return found


def read_host_key(path: str) -> bytes:
    """The host key file's content; KeysRefused if anyone but its owner may read it (it may
    already have been copied, so it is refused, not repaired), FileNotFoundError if absent."""
    try:
        data, info = read_bounded(path)
    except FileRefused as refused:
        raise KeysRefused(f"host key {path} is {refused}") from None
    problem = owner_and_mode_problem("host key", path, info, SECRET_MODE_BITS, _SECRET_READABLE)
    if problem:
        raise KeysRefused(problem)
    return data


def host_key_problem(path: str) -> str | None:
    """Why the console could neither load nor create its host key at `path`, or None."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.lexists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            return f"host key {path} cannot be created: {parent} is not a directory"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"host key {path} cannot be created: {parent} is not writable by uid {os.geteuid()}"
        return None
    except OSError as error:
        return f"host key {path} cannot be checked: {error.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return f"host key {path} is {describe_kind(info.st_mode)}, not a regular file"
    return owner_and_mode_problem("host key", path, info, SECRET_MODE_BITS, _SECRET_READABLE)

"""Dropping root once the devices and sockets are open.

Order matters: supplementary groups first, then the group, then the user
(after ``setuid`` nothing else could be changed).  Real, effective and saved
IDs are all set, so root cannot be regained, and the result is read back
from ``/proc/self/status`` rather than trusted.  Any failure raises: the
caller must refuse to run (fail closed).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import re

from greentap.errors import PrivilegeDropFailed

__all__ = ["drop_privileges", "read_status", "resolve"]


def resolve(user: str | int, group: str | int | None = None) -> tuple[str, int, int]:
    """Look a user (and group) up, before anything is opened.

    Args:
        user: a user name or uid (ASCII digits).
        group: a group name or gid, or None for the user's primary group.

    Returns:
        ``(user name, uid, gid)``.

    Raises:
        PrivilegeDropFailed: no such user or group.
    """
    try:
        pw = pwd.getpwuid(int(user)) if _is_id(user) else pwd.getpwnam(str(user))
    except (KeyError, ValueError, OverflowError):
        raise PrivilegeDropFailed(f"no such user: {user!r}", errno=errno.EINVAL) from None
    if group is None:
        return pw.pw_name, pw.pw_uid, pw.pw_gid
    try:
        gid = int(group) if _is_id(group) else grp.getgrnam(str(group)).gr_gid
        grp.getgrgid(gid)
    except (KeyError, ValueError, OverflowError):
        raise PrivilegeDropFailed(f"no such group: {group!r}", errno=errno.EINVAL) from None
    return pw.pw_name, pw.pw_uid, gid


def _is_id(value: str | int) -> bool:
    return isinstance(value, int) or bool(re.fullmatch(r"[0-9]+", value))


def read_status(path: str = "/proc/self/status") -> dict[str, list[str]]:
    """Return the ``Uid``, ``Gid``, ``Groups`` and ``CapEff`` lines of a status file as lists."""
    fields = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups", "CapEff"):
                fields[key] = value.split()
    return fields


def drop_privileges(user: str | int, group: str | int | None = None) -> tuple[int, int]:
    """Become ``user`` (and ``group``, default the user's primary group) for good.

    Args:
        user: a user name or uid.
        group: a group name or gid, or None.

    Returns:
        ``(uid, gid)`` now in force.

    Raises:
        PrivilegeDropFailed: unknown user/group, a refused call, or a state
            that does not read back as asked (the caller must stop).
    """
    name, uid, gid = resolve(user, group)
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise PrivilegeDropFailed.from_errno(
            exc.errno, f"cannot become {name} (uid {uid}, gid {gid})"
        ) from exc
    status = read_status()
    expected = {"Uid": [str(uid)] * 4, "Gid": [str(gid)] * 4, "Groups": []}
    for key, want in expected.items():
        if status.get(key) != want:
            raise PrivilegeDropFailed(
                f"after dropping to {name}: {key} reads {status.get(key)}, not {want}"
            )
    if uid != 0 and int(status["CapEff"][0], 16) != 0:
        raise PrivilegeDropFailed(f"capabilities remain after dropping to {name}")
    return uid, gid

"""Exit statuses of ``tap-forward`` (and of its workers), by whose fault it was."""

from __future__ import annotations

import errno

from greentap.errors import PrivilegeDropFailed, SetTapAttributes, UsageError

__all__ = [
    "EXIT_BUSY",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_PERMISSION",
    "EXIT_SYSTEM",
    "EXIT_USAGE",
    "STATUSES",
    "exit_status",
    "one_line",
]

EXIT_OK = 0  # stopped by SIGINT/SIGTERM, or --demo succeeded
EXIT_INTERNAL = 1  # a bug: please report it
EXIT_USAGE = 2  # bad arguments: syntax, names, numbers, fewer than two endpoints
EXIT_PERMISSION = 3  # not privileged (CAP_NET_ADMIN, CAP_NET_RAW), or --user failed
EXIT_BUSY = 4  # device busy or conflicting with an existing one
EXIT_SYSTEM = 5  # anything else the system refused (no /dev/net/tun, ...)

#: Every status with its meaning, as ``--help`` and the README print them.
STATUSES = {
    EXIT_OK: "stopped by SIGINT/SIGTERM (or --demo succeeded)",
    EXIT_INTERNAL: "internal error (a bug: please report it)",
    EXIT_USAGE: "usage: bad syntax, name or number, fewer than two endpoints",
    EXIT_PERMISSION: "not permitted (needs CAP_NET_ADMIN, or CAP_NET_RAW for packet:), "
    "or --user could not be applied",
    EXIT_BUSY: "device busy or conflicting, address or socket path in use",
    EXIT_SYSTEM: "other system error (e.g. /dev/net/tun missing)",
}


def exit_status(exc: BaseException) -> int:
    """Map an error to the documented exit status."""
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, PrivilegeDropFailed):
        return EXIT_PERMISSION
    if getattr(exc, "errno", None) in (errno.EPERM, errno.EACCES):
        return EXIT_PERMISSION
    if isinstance(exc, SetTapAttributes):
        return EXIT_BUSY
    if getattr(exc, "errno", None) in (errno.EADDRINUSE, errno.EEXIST):
        return EXIT_BUSY  # an address or socket path taken by something else
    return EXIT_SYSTEM


def one_line(message: str) -> str:
    """``message`` with every character that is not printable escaped (``\\x85``).

    An error line echoes what the user typed, which can hold line breaks
    (``\\n``, NEL, U+2028): escaped, the error stays one line.
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)

"""Entering a network namespace for the duration of a few syscalls.

A ``/dev/net/tun`` fd, like a socket, belongs to the network namespace of the
thread that opened it, and ``TUNSETIFF`` on a name absent there silently
creates a new device.  :func:`entered` switches the calling thread into a
namespace and back, so a device and its control socket can be opened *inside*
it while the rest of the program stays where it is.

The switch is per OS thread, and greenlets share a thread: nothing inside the
``with`` block may yield to the gevent hub.  greentap only runs plain syscalls
there.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator

from greentap.core.kernel_constants import CLONE_NEWNET
from greentap.errors import NamespaceUnavailable

__all__ = ["NETNS_RUN_DIR", "Netns", "entered", "netns_path"]

#: A network namespace: an ``ip netns`` name, a path, an open fd, or None
#: for the caller's own.
Netns = str | bytes | int | None

NETNS_RUN_DIR = "/run/netns"  # where `ip netns add NAME` pins namespaces


def _libc_setns(fd: int, nstype: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


_setns = getattr(os, "setns", _libc_setns)  # os.setns is Python 3.12+


def netns_path(netns: str | bytes) -> str:
    """Resolve a namespace given by ``ip netns`` name or by path.

    Args:
        netns: a name (``"blue"`` -> ``/run/netns/blue``) or a path containing ``/``.

    Returns:
        The path of the namespace file.
    """
    netns = os.fsdecode(netns)
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


@contextlib.contextmanager
def entered(netns: Netns, ifname: str | bytes | None = None) -> Iterator[None]:
    """Run the body with the calling thread inside a network namespace.

    Args:
        netns: None (stay put), an ``ip netns`` name, a path, or an open fd.
        ifname: the interface the caller is working on, for error messages.

    Yields:
        None.

    Raises:
        NamespaceUnavailable: the namespace does not exist or cannot be entered.
    """
    if netns is None:
        yield
        return
    label = f"fd {netns}" if isinstance(netns, int) else netns_path(netns)
    try:
        # dup() an fd we were given so that every path below owns what it closes.
        if isinstance(netns, int):
            target = os.dup(netns)
        else:
            target = os.open(label, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        hint = "; create it with `ip netns add`" if exc.errno == errno.ENOENT else ""
        raise NamespaceUnavailable.from_errno(
            exc.errno, f"network namespace {label}{hint}", endpoint=ifname
        ) from exc
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _setns(target, CLONE_NEWNET)
            except OSError as exc:
                hint = "needs CAP_SYS_ADMIN"
                if exc.errno != errno.EPERM:
                    hint = "not a network namespace?"
                raise NamespaceUnavailable.from_errno(
                    exc.errno, f"cannot enter network namespace {label}: {hint}", endpoint=ifname
                ) from exc
            try:
                yield
            finally:
                # Failing to return would leave this thread (and every greenlet
                # on it) in the wrong namespace: let that error propagate.
                _setns(home, CLONE_NEWNET)
        finally:
            os.close(home)
    finally:
        os.close(target)

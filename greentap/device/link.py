"""An interface's link settings: up/down, MTU, MAC, queue length.  Blocking layer.

:class:`Link` talks to the kernel with ioctls on a datagram socket opened in
the interface's network namespace (no shelling out to ``ip``), so it works
for a device in another namespace and after a privilege drop (reading;
changing needs ``CAP_NET_ADMIN``).  :meth:`Link.snapshot` and
:meth:`Link.restore` leave a device attached to as it was found.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import socket

from greentap.core import ifreq
from greentap.core import kernel_constants as kc
from greentap.core.ethernet import format_mac, parse_mac
from greentap.device.netns import Netns, entered
from greentap.errors import LinkConfigFailed, OpenTunFailed

__all__ = ["Link", "LinkState", "interface_exists"]

NEEDS_ADMIN = "needs CAP_NET_ADMIN"


@dataclasses.dataclass(frozen=True)
class LinkState:
    """What :meth:`Link.restore` puts back: administrative state and MTU."""

    up: bool
    mtu: int


class Link:
    """The link settings of interface ``name`` in namespace ``netns``.

    Args:
        name: the interface name.
        netns: the namespace it lives in (an ``ip netns`` name, a path, an
            fd), None for the caller's.

    Raises:
        NamespaceUnavailable: ``netns`` cannot be entered.
        OpenTunFailed: no socket can be opened there.
    """

    def __init__(self, name: str, *, netns: Netns = None) -> None:
        self.name = name
        self.netns = netns
        with entered(netns, name):
            self._sock: socket.socket | None = control_socket(name)

    def __repr__(self) -> str:
        return f"<Link {self.name!r}{'' if self.netns is None else f' netns={self.netns!r}'}>"

    def close(self) -> None:
        """Close the control socket; harmless if already closed."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _ioctl(self, request: int, arg: bytes, what: str) -> bytes:
        if self._sock is None:
            raise LinkConfigFailed(
                f"cannot {what}: the link's socket is closed", endpoint=self.name
            )
        try:
            return fcntl.ioctl(self._sock.fileno(), request, arg)
        except OSError as exc:
            hints = {
                errno.EPERM: NEEDS_ADMIN,
                errno.ENODEV: f"cannot {what}: no such interface in the namespace the device "
                "was opened in (deleted, or moved to another namespace?)",
            }
            hint = hints.get(exc.errno or 0, f"cannot {what}")
            raise LinkConfigFailed.from_errno(exc.errno, hint, endpoint=self.name) from exc

    def _raw(self) -> bytes:
        return os.fsencode(self.name)

    def exists(self) -> bool:
        """True if an interface of this name exists in the link's namespace."""
        return self._sock is not None and interface_exists(self._sock, self._raw())

    @property
    def ifindex(self) -> int:
        """The interface index."""
        out = self._ioctl(kc.SIOCGIFINDEX, ifreq.pack_int(self._raw()), "get ifindex")
        return ifreq.unpack_int(out)

    def _flags(self) -> int:
        out = self._ioctl(kc.SIOCGIFFLAGS, ifreq.pack_flags(self._raw(), 0), "get flags")
        return ifreq.unpack_flags(out)[1]

    def _set_flag(self, flag: int, on: bool, what: str) -> None:
        flags = self._flags()
        new = flags | flag if on else flags & ~flag
        if new != flags:
            self._ioctl(kc.SIOCSIFFLAGS, ifreq.pack_flags(self._raw(), new), what)

    @property
    def is_up(self) -> bool:
        """True if the link is administratively up (``IFF_UP``)."""
        return bool(self._flags() & kc.IFF_UP)

    def up(self) -> None:
        """Bring the link up (``ip link set NAME up``).

        Raises:
            LinkConfigFailed: the kernel refused.
        """
        self._set_flag(kc.IFF_UP, True, "bring link up")

    def down(self) -> None:
        """Bring the link down.

        Raises:
            LinkConfigFailed: the kernel refused.
        """
        self._set_flag(kc.IFF_UP, False, "bring link down")

    @property
    def mtu(self) -> int:
        """The link MTU; assigning sets it.

        Raises:
            LinkConfigFailed: the kernel refused the value (range 68..65535 for a TAP).
        """
        return ifreq.unpack_int(self._ioctl(kc.SIOCGIFMTU, ifreq.pack_int(self._raw()), "get MTU"))

    @mtu.setter
    def mtu(self, value: int) -> None:
        arg = ifreq.pack_int(self._raw(), int(value))
        self._ioctl(kc.SIOCSIFMTU, arg, f"set MTU to {value}")

    @property
    def mac(self) -> str | None:
        """The MAC address as ``"02:00:5e:00:00:01"`` (None for a TUN); assigning sets it.

        Raises:
            ValueError: not a MAC address.
            LinkConfigFailed: the kernel refused (e.g. a multicast address).
        """
        out = self._ioctl(kc.SIOCGIFHWADDR, ifreq.pack_hwaddr(self._raw(), 0), "get MAC")
        family, raw = ifreq.unpack_hwaddr(out)
        return format_mac(raw) if family == kc.ARPHRD_ETHER else None

    @mac.setter
    def mac(self, value: str | bytes) -> None:
        raw = parse_mac(value)
        arg = ifreq.pack_hwaddr(self._raw(), kc.ARPHRD_ETHER, raw)
        self._ioctl(kc.SIOCSIFHWADDR, arg, f"set MAC to {format_mac(raw)}")

    @property
    def txqueuelen(self) -> int:
        """The length of the transmit queue (frames the kernel holds for the
        reader before dropping); assigning sets it."""
        out = self._ioctl(kc.SIOCGIFTXQLEN, ifreq.pack_int(self._raw()), "get txqueuelen")
        return ifreq.unpack_int(out)

    @txqueuelen.setter
    def txqueuelen(self, value: int) -> None:
        arg = ifreq.pack_int(self._raw(), int(value))
        self._ioctl(kc.SIOCSIFTXQLEN, arg, f"set txqueuelen to {value}")

    def snapshot(self) -> LinkState:
        """Read what :meth:`restore` will put back.

        Raises:
            LinkConfigFailed: the interface cannot be read.
        """
        return LinkState(up=self.is_up, mtu=self.mtu)

    def restore(self, state: LinkState) -> None:
        """Put the MTU and administrative state back as ``state`` says.

        Raises:
            LinkConfigFailed: the interface is gone, moved, or the kernel refused.
        """
        if self.mtu != state.mtu:
            self.mtu = state.mtu
        if not state.up:
            self.down()


def control_socket(name: str) -> socket.socket:
    """Open the datagram socket link ioctls go through, in the current namespace.

    Raises:
        OpenTunFailed: the socket cannot be opened.
    """
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    except OSError as exc:
        raise OpenTunFailed.from_errno(
            exc.errno, "cannot open a control socket", endpoint=name
        ) from exc


def interface_exists(sock: socket.socket, raw: bytes) -> bool:
    """True if interface ``raw`` (bytes) exists in the namespace of socket ``sock``."""
    try:
        fcntl.ioctl(sock.fileno(), kc.SIOCGIFINDEX, ifreq.pack_int(raw))
    except OSError:
        return False
    return True

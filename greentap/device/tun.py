"""The TUN/TAP device: open or attach, TUN settings, blocking frame I/O.  No gevent.

:class:`TapDevice` owns one ``/dev/net/tun`` fd attached to an interface
(through an :class:`~greentap.device.fd.FdHolder`) and the interface's
:class:`~greentap.device.link.Link` (link settings on a control socket in
the same namespace).  The green layer's :class:`greentap.Tap` adds
:meth:`~greentap.Tap.polled`, which drives the fd on gevent's hub.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import struct
from typing import Any

from greentap.core import ifreq
from greentap.core import kernel_constants as kc
from greentap.core.layout import FrameLayout
from greentap.core.names import encode_ifname
from greentap.device.fd import FdHolder
from greentap.device.link import NEEDS_ADMIN, Link, control_socket, interface_exists
from greentap.device.netns import Netns, entered
from greentap.errors import (
    EndpointVanished,
    FrameRejected,
    GreentapError,
    NotATapDevice,
    OpenTunFailed,
    SetTapAttributes,
    io_error,
)

__all__ = ["MODES", "TUN_PATH", "TapDevice"]

TUN_PATH = "/dev/net/tun"
MODES = {"tap": kc.IFF_TAP, "tun": kc.IFF_TUN}
_INT = struct.Struct("i")


def _link_property(name: str, doc: str) -> Any:
    """A property of the device that reads and writes its :class:`Link`'s."""

    def get(self: TapDevice) -> Any:
        return getattr(self.link, name)

    def set_(self: TapDevice, value: Any) -> None:
        setattr(self.link, name, value)

    return property(get, set_, doc=doc)


class TapDevice:
    """A TAP (Ethernet) or TUN (IP) interface, opened through ``/dev/net/tun``.

    Attaches to an existing device of that name (a persistent one, or another
    queue of a multi-queue one) and creates it otherwise.  The fd is closed
    by :meth:`close`; a device that is not persistent disappears with its
    last fd.  Use :class:`greentap.Tap` (this plus :meth:`~greentap.Tap.polled`)
    unless gevent must stay out.

    Args:
        name: interface name, or a template with one ``%d`` (``"tap%d"``) for
            the kernel to number.  Never truncated: see
            :func:`greentap.core.names.encode_ifname`.
        mode: ``"tap"`` (Ethernet frames) or ``"tun"`` (IP packets).
        packet_info: keep the 4-byte ``struct tun_pi`` prefix (``IFF_NO_PI``
            is set unless this is true).
        vnet_hdr: prefix frames with a virtio-net header (``IFF_VNET_HDR``).
        multi_queue: True to open one queue of a multi-queue device
            (``IFF_MULTI_QUEUE``), False for a single-queue device, None
            (the default) to attach to an existing device as it was made
            (a new one is single-queue).
        exclusive: fail instead of attaching when the device already exists
            (``IFF_TUN_EXCL``).
        persist: True to mark the device persistent (it outlives the fd),
            False to clear that, None to leave it as found.
        owner: user (uid or name) allowed to attach without CAP_NET_ADMIN.
        group: group (gid or name) allowed to attach without CAP_NET_ADMIN.
        netns: network namespace to open the device in: an ``ip netns`` name,
            a path, or an fd; None for the caller's.

    Attributes:
        name: the interface name the kernel gave.
        created: whether this open created the device (False when it attached).
        netns: as given.
        layout: the :class:`~greentap.core.layout.FrameLayout` of the fd.
        link: the interface's :class:`~greentap.device.link.Link`.

    Raises:
        TapNameTooLong, TapNameConversion, InvalidInterfaceName: a bad name.
        OpenTunFailed: no ``/dev/net/tun`` or no privilege.
        SetTapAttributes: busy device, type/flag mismatch, ownership.
        NamespaceUnavailable: ``netns`` cannot be entered.
        UnsupportedArchitecture: unknown ioctl encoding.
    """

    name: str
    created: bool
    netns: Netns
    layout: FrameLayout
    link: Link | None

    def __init__(
        self,
        name: str | bytes = "tap%d",
        *,
        mode: str = "tap",
        packet_info: bool = False,
        vnet_hdr: bool = False,
        multi_queue: bool | None = None,
        exclusive: bool = False,
        persist: bool | None = None,
        owner: int | str | None = None,
        group: int | str | None = None,
        netns: Netns = None,
    ) -> None:
        raw = encode_ifname(name)
        label = os.fsdecode(raw)
        try:
            flags = MODES[mode]
        except KeyError:
            raise ValueError(f"mode must be 'tap' or 'tun', not {mode!r}") from None
        if not packet_info:
            flags |= kc.IFF_NO_PI
        if vnet_hdr:
            flags |= kc.IFF_VNET_HDR
        if multi_queue:
            flags |= kc.IFF_MULTI_QUEUE
        if exclusive:
            flags |= kc.IFF_TUN_EXCL
        kc.tun_ioctls()  # an unknown architecture fails before anything is opened
        with entered(netns, label):
            ctl = control_socket(label)
            try:
                existed = b"%" not in raw and interface_exists(ctl, raw)
                holder = FdHolder(_open_tun(label), name=label)
                try:
                    out = _attach(holder.fd, raw, flags, existed, multi_queue is None, label)
                except BaseException:
                    holder.close()
                    raise
            finally:
                ctl.close()
        assigned, _ = ifreq.unpack_flags(out)
        self._holder = holder  # owned from here on: close() releases it if anything fails
        self.link = None
        try:
            self._setup(assigned, netns)
            self.created = not existed
            if persist is not None:
                self.set_persist(persist)
            if owner is not None:
                self.set_owner(owner)
            if group is not None:
                self.set_group(group)
        except BaseException:
            self.close()
            raise

    def _setup(self, name: str, netns: Netns, *, link: bool = True) -> None:
        """Read what the kernel attached, and open the link next to it."""
        self._ioc = kc.tun_ioctls()
        self._holder.name = name
        self.name = name
        self.netns = netns
        flags = self._get_flags()
        # IFF_PERSIST changes at run time: the `persistent` property asks the kernel.
        self.flags = flags & ~kc.IFF_PERSIST
        self._offload = 0
        vnet = 0
        if flags & kc.IFF_VNET_HDR:
            vnet = _INT.unpack(self._ioctl(self._ioc.TUNGETVNETHDRSZ, _INT.pack(0)))[0]
        self.layout = FrameLayout.from_flags(flags, vnet)
        if link:
            self.link = Link(name, netns=netns)

    @classmethod
    def from_fd(cls, fd: int, *, netns: Netns = None) -> TapDevice:
        """Adopt an open ``/dev/net/tun`` fd that is already attached to a device.

        Meant for fd passing: a privileged helper opens the device and sends
        the fd (``SCM_RIGHTS``) to an unprivileged process.  The device takes
        ownership of ``fd`` and closes it in :meth:`close`.

        Args:
            fd: the file descriptor.
            netns: the namespace the device lives in, for link settings
                (default: the caller's).

        Returns:
            A device named after the attached interface.

        Raises:
            NotATapDevice: ``fd`` is not a TUN/TAP fd, or not attached.
        """
        try:
            out = fcntl.ioctl(fd, kc.tun_ioctls().TUNGETIFF, ifreq.pack_flags(b"", 0))
        except OSError as exc:
            hint = {
                errno.EBADFD: "a /dev/net/tun fd that is not attached: call TUNSETIFF first",
                errno.EBADF: "not an open file descriptor",
            }.get(exc.errno, "not a /dev/net/tun file descriptor")
            reason = f"fd {fd}: {os.strerror(exc.errno)} ({hint})"
            raise NotATapDevice(reason, errno=exc.errno) from exc
        name, _ = ifreq.unpack_flags(out)
        self = cls.__new__(cls)
        self._holder = FdHolder(fd, name=name)
        self.link = None
        try:
            self._setup(name, netns)
        except BaseException:
            self._holder.detach()  # still the caller's: it was not adopted
            raise
        self.created = False
        return self

    @classmethod
    def _adopt(cls, fd: int, name: str, flags: int = kc.IFF_TAP | kc.IFF_NO_PI) -> TapDevice:
        """Wrap any fd that keeps frame boundaries (tests use a SOCK_SEQPACKET socket)."""
        self = cls.__new__(cls)
        self._holder = FdHolder(fd, name=name)
        self.link = None
        self._ioc = kc.tun_ioctls()
        self.name, self.netns, self.flags, self.created = name, None, flags, False
        self._offload = 0
        self.layout = FrameLayout.from_flags(flags)
        return self

    # --- identity and geometry ----------------------------------------------
    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._holder.fd}"
        return f"<{type(self).__name__} {self.name!r} {self.mode} {state}>"

    @property
    def holder(self) -> FdHolder:
        """The :class:`~greentap.device.fd.FdHolder` that owns the fd."""
        return self._holder

    def fileno(self) -> int:
        """Return the ``/dev/net/tun`` fd.

        Raises:
            EndpointClosed: the device was closed.
        """
        return self._holder.fileno()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._holder.closed

    @property
    def mode(self) -> str:
        """``"tap"`` or ``"tun"``."""
        return self.layout.mode

    @property
    def vnet_hdr_size(self) -> int:
        """Bytes of virtio-net header before each frame (0 without ``vnet_hdr``)."""
        return self.layout.vnet_hdr_size

    @property
    def header_size(self) -> int:
        """Bytes before the frame proper: vnet header and tun_pi."""
        return self.layout.header_size

    @property
    def max_frame_size(self) -> int:
        """The largest read the device can return (see :class:`FrameLayout`)."""
        return self.layout.max_frame_size

    @property
    def min_frame_size(self) -> int:
        """The shortest write the kernel accepts."""
        return self.layout.min_frame_size

    # --- TUN settings ---------------------------------------------------------
    def _ioctl(self, request: int, arg: int | bytes, what: str = "") -> Any:
        try:
            return fcntl.ioctl(self._holder.fileno(), request, arg)
        except OSError as exc:
            hint = NEEDS_ADMIN if exc.errno == errno.EPERM else what
            raise SetTapAttributes.from_errno(exc.errno, hint, endpoint=self.name) from exc

    def _get_flags(self) -> int:
        out = self._ioctl(self._ioc.TUNGETIFF, ifreq.pack_flags(b"", 0), "TUNGETIFF")
        return ifreq.unpack_flags(out)[1]

    @property
    def persistent(self) -> bool:
        """True if the device outlives its last fd (``IFF_PERSIST``)."""
        return bool(self._get_flags() & kc.IFF_PERSIST)

    def set_persist(self, persist: bool = True) -> None:
        """Mark the device persistent (it stays after close) or not.

        Raises:
            SetTapAttributes: the kernel refused (privilege).
        """
        self._ioctl(self._ioc.TUNSETPERSIST, int(bool(persist)), "cannot change persistence")

    def set_owner(self, user: int | str) -> None:
        """Let ``user`` (uid or name) attach to this device without CAP_NET_ADMIN.

        Raises:
            KeyError: unknown user name.
            SetTapAttributes: the kernel refused.
        """
        uid = user if isinstance(user, int) else pwd.getpwnam(user).pw_uid
        self._ioctl(self._ioc.TUNSETOWNER, uid, f"cannot set owner {user}")

    def set_group(self, group: int | str) -> None:
        """Let members of ``group`` (gid or name) attach without CAP_NET_ADMIN.

        Raises:
            KeyError: unknown group name.
            SetTapAttributes: the kernel refused.
        """
        gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
        self._ioctl(self._ioc.TUNSETGROUP, gid, f"cannot set group {group}")

    def set_vnet_hdr_size(self, size: int) -> None:
        """Set the virtio-net header size (10, or 12 for ``num_buffers``).

        Raises:
            SetTapAttributes: no ``vnet_hdr`` on this device, or a bad size.
        """
        if not self.flags & kc.IFF_VNET_HDR:
            raise SetTapAttributes("device was opened without vnet_hdr=True", endpoint=self.name)
        self._ioctl(self._ioc.TUNSETVNETHDRSZ, _INT.pack(size), f"bad vnet header size {size}")
        self.layout = FrameLayout.from_flags(self.flags, size)

    @property
    def offload(self) -> int:
        """The ``TUN_F_*`` offload flags last set with :meth:`set_offload`."""
        return self._offload

    def set_offload(self, flags: int) -> None:
        """Tell the kernel which offloads the reader handles (``TUNSETOFFLOAD``).

        Args:
            flags: an OR of ``TUN_F_CSUM``, ``TUN_F_TSO4``, ... (0 for none).

        Raises:
            SetTapAttributes: the kernel does not support a flag.
        """
        self._ioctl(self._ioc.TUNSETOFFLOAD, flags, f"offload flags {flags:#x} not supported")
        self._offload = flags

    def enable_offloads(self) -> int:
        """Accept checksum and segmentation offloads: the widest set the kernel has.

        Tries CSUM, TSO4, TSO6, TSO_ECN, USO4 and USO6, then drops the newest
        (USO, then ECN) until the kernel accepts.  Frames then carry a
        virtio-net header saying what is left to do, and TCP can pass as 64 KiB
        super-frames.

        Returns:
            The ``TUN_F_*`` flags set.

        Raises:
            SetTapAttributes: the device has no ``vnet_hdr``, or the kernel
                accepts none of them.
        """
        if not self.flags & kc.IFF_VNET_HDR:
            raise SetTapAttributes(
                "offloads need a device opened with vnet_hdr=True", endpoint=self.name
            )
        base = kc.TUN_F_CSUM | kc.TUN_F_TSO4 | kc.TUN_F_TSO6
        candidates = (base | kc.TUN_F_TSO_ECN | kc.TUN_F_USO4 | kc.TUN_F_USO6,
                      base | kc.TUN_F_TSO_ECN, base)  # fmt: skip
        refused: GreentapError | None = None
        for flags in candidates:
            try:
                self.set_offload(flags)
                return flags
            except SetTapAttributes as exc:
                refused = exc
        assert refused is not None
        raise refused

    # --- after the interface vanished ---------------------------------------
    def attached(self) -> bool:
        """True while the fd is still attached to a device (``TUNGETIFF`` works).

        False once the interface was deleted, wherever it lived.
        """
        try:
            fcntl.ioctl(self._holder.fd, self._ioc.TUNGETIFF, ifreq.pack_flags(b"", 0))
        except OSError:
            return False
        return True

    def exists(self) -> bool:
        """True if an interface of this device's name exists in its namespace.

        Asked through the link's socket, so it works after a privilege drop
        and for a device in another namespace.
        """
        return self.link is not None and self.link.exists()

    def reattach(self) -> None:
        """Attach this fd again to a device of the same name, after the interface
        was deleted and re-created (a persistent TAP brought back by its owner).

        The fd opened at first is reused: it keeps its namespace and needs no
        new open of ``/dev/net/tun``, so this works after dropping root when
        the device is owned by this user (``TUNSETOWNER``).  Never creates a
        device.

        Raises:
            EndpointVanished: there is no such interface (nothing was attached).
            OpenTunFailed, SetTapAttributes: the kernel refused (not the
                owner, busy, another type of device).
        """
        if not self.exists():
            raise EndpointVanished("no interface of this name to attach to", endpoint=self.name)
        if self.attached():
            return  # done by an earlier call whose later steps failed
        raw = os.fsencode(self.name)
        _attach(self._holder.fileno(), raw, self.flags, True, False, self.name)
        if not self.persistent:
            # It vanished again in between, and TUNSETIFF made a new device:
            # not ours to keep.  Closing this fd deletes it.
            self.close()
            raise EndpointVanished("deleted again while re-attaching", endpoint=self.name)
        self.created = False
        if self.vnet_hdr_size:
            self.set_vnet_hdr_size(self.vnet_hdr_size)

    # --- link settings (see Link) ---------------------------------------------
    ifindex = _link_property("ifindex", "The interface index.")
    is_up = _link_property("is_up", "True if the link is administratively up.")
    mtu = _link_property("mtu", "The link MTU; assigning sets it.")
    mac = _link_property("mac", "The MAC address (None for a TUN); assigning sets it.")
    txqueuelen = _link_property("txqueuelen", "The transmit queue length; assigning sets it.")

    def up(self) -> None:
        """Bring the link up (see :meth:`Link.up`)."""
        self._need_link().up()

    def down(self) -> None:
        """Bring the link down (see :meth:`Link.down`)."""
        self._need_link().down()

    def _need_link(self) -> Link:
        if self.link is None:
            raise OpenTunFailed("no link settings for an adopted fd", endpoint=self.name)
        return self.link

    # --- blocking frame I/O -----------------------------------------------------
    def read(self) -> bytes:
        """Read one frame, blocking the thread until one arrives.

        Returns:
            The frame as bytes (with any vnet header / packet info).

        Raises:
            EndpointClosed, EndpointVanished, EndpointIOError.
        """
        try:
            return os.read(self._holder.fileno(), self.max_frame_size)
        except OSError as exc:
            raise io_error(self.name, exc, "read") from exc

    def write(self, frame: bytes | bytearray | memoryview) -> int:
        """Write one frame, blocking the thread if the device is in blocking mode.

        Returns:
            The bytes written.

        Raises:
            FrameRejected: runt or invalid frame.
            EndpointClosed, EndpointVanished, EndpointIOError.
        """
        if len(frame) < self.min_frame_size:
            raise FrameRejected(
                f"frame of {len(frame)} bytes is shorter than {self.min_frame_size}",
                endpoint=self.name,
            )
        try:
            return os.write(self._holder.fileno(), frame)
        except OSError as exc:
            raise io_error(self.name, exc, "write") from exc

    # --- lifetime ---------------------------------------------------------------
    def close(self) -> None:
        """Close the fd and the link's socket; harmless if already closed."""
        if self.link is not None:
            self.link.close()
        self._holder.close()

    def __enter__(self) -> TapDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _open_tun(name: str) -> int:
    try:
        return os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        hint = {
            errno.ENOENT: f"{TUN_PATH} is missing: load the driver (modprobe tun) or "
            "give the container the device",
            errno.ENXIO: "the TUN/TAP driver is not loaded (modprobe tun)",
            errno.ENODEV: "the TUN/TAP driver is not loaded (modprobe tun)",
            errno.EACCES: f"{NEEDS_ADMIN} or read-write access to {TUN_PATH}",
            errno.EPERM: f"{NEEDS_ADMIN} or read-write access to {TUN_PATH}",
        }.get(exc.errno, f"cannot open {TUN_PATH}")
        raise OpenTunFailed.from_errno(exc.errno, hint, endpoint=name) from exc


def _attach(fd: int, raw: bytes, flags: int, existed: bool, as_found: bool, name: str) -> bytes:
    """``TUNSETIFF``; with ``as_found``, match an existing device's queue mode.

    A device made multi-queue refuses a single-queue attach (and the other
    way round) with EINVAL; the kernel says nothing else about it, so the
    other mode is tried once.
    """
    try:
        return fcntl.ioctl(fd, kc.tun_ioctls().TUNSETIFF, ifreq.pack_flags(raw, flags))
    except OSError as exc:
        if not (as_found and existed and exc.errno == errno.EINVAL):
            raise _setiff_error(name, exc, flags, existed) from exc
        first = exc
    try:
        other = flags ^ kc.IFF_MULTI_QUEUE
        return fcntl.ioctl(fd, kc.tun_ioctls().TUNSETIFF, ifreq.pack_flags(raw, other))
    except OSError:
        raise _setiff_error(name, first, flags, existed) from first


def _setiff_error(name: str, exc: OSError, flags: int, existed: bool) -> GreentapError:
    code = exc.errno
    if code == errno.EPERM:
        hint = (
            f"{NEEDS_ADMIN}, or the device's owner/group must match this process"
            if existed
            else NEEDS_ADMIN
        )
        return OpenTunFailed.from_errno(code, hint, endpoint=name)
    if code == errno.EBUSY:
        if flags & kc.IFF_TUN_EXCL and existed:
            hint = "a device of this name already exists (exclusive=True)"
        elif flags & kc.IFF_MULTI_QUEUE:
            hint = "device is busy: all its queues are attached"
        else:
            hint = "device is busy: another file descriptor is attached to it"
    elif code == errno.EINVAL and existed:
        hint = (
            "an interface of this name exists with another type or flags: a tun/tap "
            "mismatch, a non-TUN/TAP device, or a multi_queue difference"
        )
    elif code == errno.EINVAL:
        hint = "the kernel refused these flags"
    elif code == errno.ENFILE:
        hint = "no free number for this name template"
    else:
        hint = "TUNSETIFF failed"
    return SetTapAttributes.from_errno(code, hint, endpoint=name)

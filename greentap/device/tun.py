"""The TUN/TAP device: open or attach, frame geometry, blocking frame I/O.  No gevent.

:class:`TapDevice` is the pair an interface needs: its ``/dev/net/tun`` fd
with the TUN ioctls (a :class:`~greentap.device.tunfd.TunFd`, whose
:class:`~greentap.device.fd.FdHolder` owns the fd) and its link settings (a
:class:`~greentap.device.link.Link`, on a control socket in the same
namespace).  The green layer's :class:`greentap.Tap` adds
:meth:`~greentap.Tap.polled`, which drives the fd on gevent's hub.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from greentap.core import kernel_constants as kc
from greentap.core.layout import FrameLayout
from greentap.core.names import encode_ifname
from greentap.device.fd import FdHolder
from greentap.device.link import Link, control_socket, interface_exists
from greentap.device.netns import Netns, entered
from greentap.device.tunfd import TUN_PATH, TunFd
from greentap.errors import (
    EndpointVanished,
    FrameRejected,
    LinkConfigFailed,
    io_error,
)

__all__ = ["MODES", "TUN_PATH", "TapDevice"]

MODES = {"tap": kc.IFF_TAP, "tun": kc.IFF_TUN}


def _link_property(name: str, doc: str) -> Any:
    """A property of the device that reads and writes its :class:`Link`'s."""

    def get(self: TapDevice) -> Any:
        return getattr(self._need_link(), name)

    def set_(self: TapDevice, value: Any) -> None:
        setattr(self._need_link(), name, value)

    return property(get, set_, doc=f"{doc} (see :class:`~greentap.device.link.Link`)")


def _delegate(attribute: str, method: Callable[..., Any]) -> Any:
    """A method of the device that calls the same method of its ``tun`` or ``link``."""
    name = method.__name__

    @functools.wraps(method)
    def call(self: TapDevice, *args: Any, **kw: Any) -> Any:
        target = self._need_link() if attribute == "link" else self.tun
        return getattr(target, name)(*args, **kw)

    return call


def _layout_property(name: str, doc: str) -> Any:
    """A read-only property of the device that is its :class:`FrameLayout`'s."""
    return property(lambda self: getattr(self.layout, name), doc=doc)


def _flags(mode: str, **asked: bool | None) -> int:
    """The ``IFF_*`` flags for ``mode`` and the options asked for."""
    try:
        flags = MODES[mode]
    except KeyError:
        raise ValueError(f"mode must be 'tap' or 'tun', not {mode!r}") from None
    for option, flag in _OPTION_FLAGS.items():
        if asked[option]:
            flags |= flag
    return flags


_OPTION_FLAGS = {
    "no_pi": kc.IFF_NO_PI,
    "vnet_hdr": kc.IFF_VNET_HDR,
    "multi_queue": kc.IFF_MULTI_QUEUE,
    "exclusive": kc.IFF_TUN_EXCL,
}


def _open(raw: bytes, flags: int, netns: Netns, as_found: bool) -> tuple[TunFd, bool]:
    """Open ``/dev/net/tun`` inside ``netns`` and attach it to ``raw``.

    Returns:
        The attached :class:`TunFd`, and whether the interface existed before.
    """
    label = os.fsdecode(raw)
    with entered(netns, label):
        ctl = control_socket(label)
        try:
            existed = b"%" not in raw and interface_exists(ctl, raw)
            tun = TunFd.open(label)
            try:
                tun.attach(raw, flags, existed=existed, as_found=as_found)
            except BaseException:
                tun.holder.close()
                raise
        finally:
            ctl.close()
    return tun, existed


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
        flags: the ``IFF_*`` flags the fd was attached with (without ``IFF_PERSIST``).
        layout: the :class:`~greentap.core.layout.FrameLayout` of the fd.
        tun: the :class:`~greentap.device.tunfd.TunFd`: the fd and its ioctls.
        link: the interface's :class:`~greentap.device.link.Link` (None for
            an fd adopted without one).

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
    flags: int
    layout: FrameLayout
    tun: TunFd
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
        flags = _flags(
            mode, no_pi=not packet_info, vnet_hdr=vnet_hdr, multi_queue=multi_queue,
            exclusive=exclusive,
        )  # fmt: skip
        tun, existed = _open(encode_ifname(name), flags, netns, as_found=multi_queue is None)
        self.tun = tun  # owned from here on: close() releases it if anything fails
        self.link = None
        try:
            self._setup(netns)
            self.created = not existed
            if persist is not None:
                tun.set_persist(persist)
            if owner is not None:
                tun.set_owner(owner)
            if group is not None:
                tun.set_group(group)
        except BaseException:
            self.close()
            raise

    def _setup(self, netns: Netns) -> None:
        """Read what the kernel attached, and open the link next to it."""
        self.name = self.tun.name
        self.netns = netns
        flags = self.tun.flags()
        # IFF_PERSIST changes at run time: the `persistent` property asks the kernel.
        self.flags = flags & ~kc.IFF_PERSIST
        vnet = self.tun.vnet_hdr_size() if flags & kc.IFF_VNET_HDR else 0
        self.layout = FrameLayout.from_flags(flags, vnet)
        self.link = Link(self.name, netns=netns)

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
        tun = TunFd.adopt(fd)
        self = cls.__new__(cls)
        self.tun = tun
        self.link = None
        try:
            self._setup(netns)
        except BaseException:
            tun.holder.detach()  # still the caller's: it was not adopted
            raise
        self.created = False
        return self

    @classmethod
    def _adopt(cls, fd: int, name: str, flags: int = kc.IFF_TAP | kc.IFF_NO_PI) -> TapDevice:
        """Wrap any fd that keeps frame boundaries (tests use a SOCK_SEQPACKET socket)."""
        self = cls.__new__(cls)
        self.tun = TunFd(FdHolder(fd, name=name))
        self.link = None
        self.name, self.netns, self.flags, self.created = name, None, flags, False
        self.layout = FrameLayout.from_flags(flags)
        return self

    # --- identity and geometry ----------------------------------------------
    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.tun.holder.fd}"
        return f"<{type(self).__name__} {self.name!r} {self.mode} {state}>"

    @property
    def holder(self) -> FdHolder:
        """The :class:`~greentap.device.fd.FdHolder` that owns the fd."""
        return self.tun.holder

    def fileno(self) -> int:
        """Return the ``/dev/net/tun`` fd.

        Raises:
            EndpointClosed: the device was closed.
        """
        return self.tun.holder.fileno()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self.tun.holder.closed

    mode = _layout_property("mode", '``"tap"`` or ``"tun"``.')
    vnet_hdr_size = _layout_property("vnet_hdr_size", "Bytes of virtio-net header per frame.")
    header_size = _layout_property("header_size", "Bytes before the frame: vnet header, tun_pi.")
    max_frame_size = _layout_property("max_frame_size", "The largest read the fd can return.")
    min_frame_size = _layout_property("min_frame_size", "The shortest write the kernel accepts.")

    # --- TUN settings (see TunFd) ---------------------------------------------
    persistent = property(
        lambda self: bool(self.tun.flags() & kc.IFF_PERSIST),
        doc="True if the device outlives its last fd (``IFF_PERSIST``).",
    )
    offload = property(lambda self: self.tun.offload, doc="The ``TUN_F_*`` flags last set.")
    set_persist = _delegate("tun", TunFd.set_persist)
    set_owner = _delegate("tun", TunFd.set_owner)
    set_group = _delegate("tun", TunFd.set_group)
    set_offload = _delegate("tun", TunFd.set_offload)
    enable_offloads = _delegate("tun", TunFd.enable_offloads)

    def set_vnet_hdr_size(self, size: int) -> None:
        """Set the virtio-net header size (see :meth:`TunFd.set_vnet_hdr_size`)."""
        self.tun.set_vnet_hdr_size(size)
        self.layout = FrameLayout.from_flags(self.flags, size)

    # --- after the interface vanished ---------------------------------------
    def attached(self) -> bool:
        """True while the fd is still attached to a device (False once it was deleted)."""
        return self.tun.attached()

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
        self.tun.attach(os.fsencode(self.name), self.flags, existed=True)
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

    up = _delegate("link", Link.up)
    down = _delegate("link", Link.down)

    def _need_link(self) -> Link:
        if self.link is None:
            # As before the split: a link setting the device cannot make.
            raise LinkConfigFailed("no control socket for this device", endpoint=self.name)
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
            return os.read(self.fileno(), self.max_frame_size)
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
            return os.write(self.fileno(), frame)
        except OSError as exc:
            raise io_error(self.name, exc, "write") from exc

    # --- lifetime ---------------------------------------------------------------
    def close(self) -> None:
        """Close the fd and the link's socket; harmless if already closed."""
        if self.link is not None:
            self.link.close()
        self.tun.holder.close()

    def __enter__(self) -> TapDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""The blocking TAP/TUN device: open, attach, configure.

:class:`Tap` owns one ``/dev/net/tun`` file descriptor attached to an
interface, plus a datagram control socket opened in the same network
namespace for link settings (up/down, MTU, MAC).  It does no gevent I/O
itself; :meth:`Tap.polled` hands the fd to a :class:`~greentap.polled.PolledTap`.
"""

import errno
import fcntl
import grp
import os
import pwd
import socket
import struct

from greentap import ifreq
from greentap import kernel_constants as kc
from greentap.errors import (
    FrameRejected,
    LinkConfigFailed,
    NotATapDevice,
    OpenTunFailed,
    SetTapAttributes,
    TapClosed,
    TapVanished,
    io_error,
)
from greentap.ethernet import format_mac, parse_mac
from greentap.names import encode_ifname
from greentap.netns import entered

TUN_PATH = "/dev/net/tun"
MODES = {"tap": kc.IFF_TAP, "tun": kc.IFF_TUN}
_NEEDS_ADMIN = "needs CAP_NET_ADMIN"
_INT = struct.Struct("i")


class Tap:
    """A TAP (Ethernet) or TUN (IP) interface, opened through ``/dev/net/tun``.

    Attaches to an existing device of that name (a persistent one, or another
    queue of a multi-queue one) and creates it otherwise.  The fd is closed by
    :meth:`close`; a device that is not persistent disappears with its last fd.

    Args:
        name: interface name, or a template with one ``%d`` (``"tap%d"``) for
            the kernel to number.  Never truncated: see
            :func:`greentap.names.encode_ifname`.
        mode: ``"tap"`` (Ethernet frames) or ``"tun"`` (IP packets).
        packet_info: keep the 4-byte ``struct tun_pi`` prefix (``IFF_NO_PI``
            is set unless this is true).
        vnet_hdr: prefix frames with a virtio-net header (``IFF_VNET_HDR``).
        multi_queue: open one queue of a multi-queue device (``IFF_MULTI_QUEUE``).
        exclusive: fail instead of attaching when the device already exists
            (``IFF_TUN_EXCL``).
        persist: True to mark the device persistent (it outlives the fd),
            False to clear that, None to leave it as found.
        owner: user (uid or name) allowed to attach without CAP_NET_ADMIN.
        group: group (gid or name) allowed to attach without CAP_NET_ADMIN.
        netns: network namespace to open the device in: an ``ip netns`` name,
            a path, or an fd; None for the caller's.

    Raises:
        TapNameTooLong, TapNameConversion, InvalidTapName: a bad name.
        OpenTunFailed: no ``/dev/net/tun`` or no privilege.
        SetTapAttributes: busy device, type/flag mismatch, ownership.
        NamespaceUnavailable: ``netns`` cannot be entered.
        UnsupportedArchitecture: unknown ioctl encoding.
    """

    def __init__(
        self,
        name="tap%d",
        *,
        mode="tap",
        packet_info=False,
        vnet_hdr=False,
        multi_queue=False,
        exclusive=False,
        persist=None,
        owner=None,
        group=None,
        netns=None,
    ):
        raw = encode_ifname(name)
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
        ioc = kc.tun_ioctls()
        self._fd = -1
        self._ctl = None
        with entered(netns, name):
            ctl = _control_socket(name)
            try:
                existed = b"%" not in raw and interface_exists(ctl, raw)
                fd = _open_tun(name)
                try:
                    out = _ioctl(fd, ioc.TUNSETIFF, ifreq.pack_flags(raw, flags))
                except OSError as exc:
                    os.close(fd)
                    raise _setiff_error(name, exc, flags, existed) from exc
            except BaseException:
                ctl.close()
                raise
        assigned, _ = ifreq.unpack_flags(out)
        self._fd = fd  # owned from here on: close() releases it if anything below fails
        self._ctl = ctl
        self.name = assigned
        try:
            _, actual = ifreq.unpack_flags(_ioctl(fd, ioc.TUNGETIFF, ifreq.pack_flags(b"", 0)))
            self._setup(fd, assigned, actual, ctl, netns)
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

    def _setup(self, fd, name, flags, ctl, netns):
        self._ioc = kc.tun_ioctls()
        self._fd = fd
        self._ctl = ctl
        self.name = name
        self.netns = netns
        # IFF_PERSIST changes at run time; the `persistent` property asks the kernel.
        self.flags = flags & ~kc.IFF_PERSIST
        self._offload = 0
        self._vnet_hdr_size = 0
        if flags & kc.IFF_VNET_HDR:
            out = _ioctl(fd, self._ioc.TUNGETVNETHDRSZ, _INT.pack(0))
            self._vnet_hdr_size = _INT.unpack(out)[0]

    @classmethod
    def from_fd(cls, fd, *, netns=None):
        """Adopt an open ``/dev/net/tun`` fd that is already attached to a device.

        Meant for fd passing: a privileged helper opens the device and sends
        the fd (``SCM_RIGHTS``) to an unprivileged process.  The Tap takes
        ownership of ``fd`` and closes it in :meth:`close`.

        Args:
            fd: the file descriptor.
            netns: the namespace the device lives in, for link settings
                (default: the caller's).

        Returns:
            A :class:`Tap` named after the attached device.

        Raises:
            NotATapDevice: ``fd`` is not a TUN/TAP fd, or not attached.
        """
        try:
            out = _ioctl(fd, kc.tun_ioctls().TUNGETIFF, ifreq.pack_flags(b"", 0))
        except OSError as exc:
            hint = {
                errno.EBADFD: "a /dev/net/tun fd that is not attached: call TUNSETIFF first",
                errno.EBADF: "not an open file descriptor",
            }.get(exc.errno, "not a /dev/net/tun file descriptor")
            reason = f"fd {fd}: {os.strerror(exc.errno)} ({hint})"
            raise NotATapDevice(None, reason, exc.errno) from exc
        name, flags = ifreq.unpack_flags(out)
        with entered(netns, name):
            ctl = _control_socket(name)
        self = cls.__new__(cls)
        self._setup(fd, name, flags, ctl, netns)
        self.created = False
        return self

    @classmethod
    def _adopt(cls, fd, name, flags=kc.IFF_TAP | kc.IFF_NO_PI):
        """Wrap any fd that keeps frame boundaries (tests use a SOCK_SEQPACKET socket)."""
        self = cls.__new__(cls)
        self._setup(fd, name, flags, None, None)
        self.created = False
        return self

    # --- identity ---------------------------------------------------------
    def __repr__(self):
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<{type(self).__name__} {self.name!r} {self.mode} {state}>"

    def fileno(self):
        """Return the ``/dev/net/tun`` fd.

        Raises:
            TapClosed: the device was closed.
        """
        if self._fd < 0:
            raise TapClosed(self.name)
        return self._fd

    @property
    def closed(self):
        """True once :meth:`close` has run."""
        return self._fd < 0

    @property
    def mode(self):
        """``"tap"`` or ``"tun"``."""
        return "tun" if self.flags & kc.IFF_TUN else "tap"

    @property
    def vnet_hdr_size(self):
        """Bytes of virtio-net header before each frame (0 without ``vnet_hdr``)."""
        return self._vnet_hdr_size

    @property
    def header_size(self):
        """Bytes greentap sees before the frame proper: vnet header and tun_pi."""
        pi = 0 if self.flags & kc.IFF_NO_PI else kc.TUN_PI_SIZE
        return self._vnet_hdr_size + pi

    @property
    def max_frame_size(self):
        """The largest read the device can return, whatever its MTU becomes.

        Sized for ``ETH_MAX_MTU`` (or a 64 KiB GSO frame) plus the Ethernet
        and VLAN headers and any vnet header / packet info, so a read is never
        truncated when someone raises the MTU at run time.
        """
        base = kc.MAX_L2_FRAME if self.mode == "tap" else max(kc.ETH_MAX_MTU, 65536)
        return base + self.header_size

    @property
    def min_frame_size(self):
        """The shortest write the kernel accepts (an Ethernet header for a TAP)."""
        return (kc.ETH_HLEN if self.mode == "tap" else 1) + self.header_size

    # --- TUN settings -----------------------------------------------------
    def _tun_ioctl(self, request, arg, what):
        try:
            return _ioctl(self.fileno(), request, arg)
        except OSError as exc:
            hint = _NEEDS_ADMIN if exc.errno == errno.EPERM else what
            raise SetTapAttributes.from_errno(self.name, exc.errno, hint) from exc

    @property
    def persistent(self):
        """True if the device outlives its last fd (``IFF_PERSIST``)."""
        out = self._tun_ioctl(self._ioc.TUNGETIFF, ifreq.pack_flags(b"", 0), "TUNGETIFF")
        return bool(ifreq.unpack_flags(out)[1] & kc.IFF_PERSIST)

    def set_persist(self, persist=True):
        """Mark the device persistent (it stays after close) or not.

        Raises:
            SetTapAttributes: the kernel refused (privilege).
        """
        self._tun_ioctl(self._ioc.TUNSETPERSIST, int(bool(persist)), "cannot change persistence")

    def set_owner(self, user):
        """Let ``user`` (uid or name) attach to this device without CAP_NET_ADMIN.

        Raises:
            KeyError: unknown user name.
            SetTapAttributes: the kernel refused.
        """
        uid = user if isinstance(user, int) else pwd.getpwnam(user).pw_uid
        self._tun_ioctl(self._ioc.TUNSETOWNER, uid, f"cannot set owner {user}")

    def set_group(self, group):
        """Let members of ``group`` (gid or name) attach without CAP_NET_ADMIN.

        Raises:
            KeyError: unknown group name.
            SetTapAttributes: the kernel refused.
        """
        gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
        self._tun_ioctl(self._ioc.TUNSETGROUP, gid, f"cannot set group {group}")

    def set_vnet_hdr_size(self, size):
        """Set the virtio-net header size (10, or 12 for ``num_buffers``).

        Raises:
            SetTapAttributes: no ``vnet_hdr`` on this device, or a bad size.
        """
        if not self.flags & kc.IFF_VNET_HDR:
            raise SetTapAttributes(self.name, "device was opened without vnet_hdr=True")
        self._tun_ioctl(self._ioc.TUNSETVNETHDRSZ, _INT.pack(size), f"bad vnet header size {size}")
        self._vnet_hdr_size = size

    @property
    def offload(self):
        """The ``TUN_F_*`` offload flags last set with :meth:`set_offload`."""
        return self._offload

    def set_offload(self, flags):
        """Tell the kernel which offloads the reader handles (``TUNSETOFFLOAD``).

        Args:
            flags: an OR of ``TUN_F_CSUM``, ``TUN_F_TSO4``, ... (0 for none).

        Raises:
            SetTapAttributes: the kernel does not support a flag.
        """
        self._tun_ioctl(self._ioc.TUNSETOFFLOAD, flags, f"offload flags {flags:#x} not supported")
        self._offload = flags

    def enable_offloads(self):
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
            raise SetTapAttributes(self.name, "offloads need a device opened with vnet_hdr=True")
        base = kc.TUN_F_CSUM | kc.TUN_F_TSO4 | kc.TUN_F_TSO6
        candidates = (
            base | kc.TUN_F_TSO_ECN | kc.TUN_F_USO4 | kc.TUN_F_USO6,
            base | kc.TUN_F_TSO_ECN,
            base,
        )
        for flags in candidates:
            try:
                self.set_offload(flags)
                return flags
            except SetTapAttributes as exc:
                refused = exc
        raise refused

    def attached(self):
        """True while the fd is still attached to a device (``TUNGETIFF`` works).

        False once the interface was deleted, wherever it lived.
        """
        try:
            _ioctl(self._fd, self._ioc.TUNGETIFF, ifreq.pack_flags(b"", 0))
        except OSError:
            return False
        return True

    def exists(self):
        """True if an interface of this device's name exists in its namespace.

        Asked on the control socket, so it works after a privilege drop and
        for a device in another namespace.
        """
        return self._ctl is not None and interface_exists(self._ctl, self._raw_name())

    def reattach(self):
        """Attach this fd again to a device of the same name, after the interface
        was deleted and re-created (a persistent TAP brought back by its owner).

        The fd opened at first is reused: it keeps its namespace and needs no
        new open of ``/dev/net/tun``, so this works after dropping root when
        the device is owned by this user (``TUNSETOWNER``).  Never creates a
        device.

        Raises:
            TapVanished: there is no such interface (nothing was attached).
            OpenTunFailed, SetTapAttributes: the kernel refused (not the
                owner, busy, another type of device).
        """
        if not self.exists():
            raise TapVanished(self.name, "no interface of this name to attach to")
        if self.attached():
            return  # done by an earlier call whose later steps failed
        raw = self._raw_name()
        try:
            _ioctl(self._fd, self._ioc.TUNSETIFF, ifreq.pack_flags(raw, self.flags))
        except OSError as exc:
            raise _setiff_error(self.name, exc, self.flags, True) from exc
        if not self.persistent:
            # It vanished again in between, and TUNSETIFF made a new device:
            # not ours to keep.  Closing this fd deletes it.
            self.close()
            raise TapVanished(self.name, "deleted again while re-attaching")
        self.created = False
        if self._vnet_hdr_size:
            self.set_vnet_hdr_size(self._vnet_hdr_size)

    # --- link settings (on the control socket) -----------------------------
    def _link_ioctl(self, request, arg, what):
        if self._ctl is None:
            raise LinkConfigFailed(self.name, f"cannot {what}: no control socket for this device")
        try:
            return _ioctl(self._ctl.fileno(), request, arg)
        except OSError as exc:
            hints = {
                errno.EPERM: _NEEDS_ADMIN,
                errno.ENODEV: f"cannot {what}: no such interface in the namespace the device "
                "was opened in (deleted, or moved to another namespace?)",
            }
            hint = hints.get(exc.errno, f"cannot {what}")
            raise LinkConfigFailed.from_errno(self.name, exc.errno, hint) from exc

    def _raw_name(self):
        return os.fsencode(self.name)

    @property
    def ifindex(self):
        """The interface index."""
        out = self._link_ioctl(kc.SIOCGIFINDEX, ifreq.pack_int(self._raw_name()), "get ifindex")
        return ifreq.unpack_int(out)

    def _get_flags(self):
        out = self._link_ioctl(kc.SIOCGIFFLAGS, ifreq.pack_flags(self._raw_name(), 0), "get flags")
        return ifreq.unpack_flags(out)[1]

    def _set_flag(self, flag, on, what):
        flags = self._get_flags()
        new = flags | flag if on else flags & ~flag
        if new != flags:
            self._link_ioctl(kc.SIOCSIFFLAGS, ifreq.pack_flags(self._raw_name(), new), what)

    @property
    def is_up(self):
        """True if the link is administratively up (``IFF_UP``)."""
        return bool(self._get_flags() & kc.IFF_UP)

    def up(self):
        """Bring the link up (``ip link set NAME up``).

        Raises:
            LinkConfigFailed: the kernel refused.
        """
        self._set_flag(kc.IFF_UP, True, "bring link up")

    def down(self):
        """Bring the link down.

        Raises:
            LinkConfigFailed: the kernel refused.
        """
        self._set_flag(kc.IFF_UP, False, "bring link down")

    @property
    def mtu(self):
        """The link MTU; assigning sets it.

        Raises:
            LinkConfigFailed: the kernel refused the value (range 68..65535).
        """
        out = self._link_ioctl(kc.SIOCGIFMTU, ifreq.pack_int(self._raw_name()), "get MTU")
        return ifreq.unpack_int(out)

    @mtu.setter
    def mtu(self, value):
        self._link_ioctl(
            kc.SIOCSIFMTU, ifreq.pack_int(self._raw_name(), int(value)), f"set MTU to {value}"
        )

    @property
    def mac(self):
        """The MAC address as ``"02:00:5e:00:00:01"`` (None for a TUN); assigning sets it.

        Raises:
            ValueError: not a MAC address.
            LinkConfigFailed: the kernel refused (e.g. a multicast address).
        """
        out = self._link_ioctl(kc.SIOCGIFHWADDR, ifreq.pack_hwaddr(self._raw_name(), 0), "get MAC")
        family, raw = ifreq.unpack_hwaddr(out)
        return format_mac(raw) if family == kc.ARPHRD_ETHER else None

    @mac.setter
    def mac(self, value):
        raw = parse_mac(value)
        arg = ifreq.pack_hwaddr(self._raw_name(), kc.ARPHRD_ETHER, raw)
        self._link_ioctl(kc.SIOCSIFHWADDR, arg, f"set MAC to {format_mac(raw)}")

    @property
    def txqueuelen(self):
        """The length of the device's transmit queue (frames the kernel holds
        for us before dropping); assigning sets it."""
        out = self._link_ioctl(kc.SIOCGIFTXQLEN, ifreq.pack_int(self._raw_name()), "get txqueuelen")
        return ifreq.unpack_int(out)

    @txqueuelen.setter
    def txqueuelen(self, value):
        self._link_ioctl(
            kc.SIOCSIFTXQLEN,
            ifreq.pack_int(self._raw_name(), int(value)),
            f"set txqueuelen to {value}",
        )

    # --- blocking frame I/O -----------------------------------------------
    def read(self):
        """Read one frame, blocking the thread until one arrives.

        Returns:
            The frame as bytes (with any vnet header / packet info).

        Raises:
            TapClosed, TapVanished, TapIOError.
        """
        try:
            return os.read(self.fileno(), self.max_frame_size)
        except OSError as exc:
            raise io_error(self.name, exc, "read") from exc

    def write(self, frame):
        """Write one frame, blocking the thread if the device is in blocking mode.

        Raises:
            FrameRejected: runt or invalid frame.
            TapClosed, TapVanished, TapIOError.
        """
        if len(frame) < self.min_frame_size:
            raise FrameRejected(
                self.name, f"frame of {len(frame)} bytes is shorter than {self.min_frame_size}"
            )
        try:
            return os.write(self.fileno(), frame)
        except OSError as exc:
            raise io_error(self.name, exc, "write") from exc

    def polled(self, hub=None, **options):
        """Return a :class:`~greentap.polled.PolledTap` driving this device
        cooperatively on a gevent hub.

        The PolledTap owns the fd until :meth:`PolledTap.into_inner` gives this
        Tap back.

        Args:
            hub: the gevent hub (default: the current thread's).
            **options: passed to :class:`~greentap.polled.PolledTap` (``budget``).
        """
        # Imported here so that the blocking Tap stays usable without gevent's hub.
        from greentap.polled import PolledTap

        return PolledTap(self, hub=hub, **options)

    # --- lifetime ---------------------------------------------------------
    def close(self):
        """Close the fd and the control socket; harmless if already closed."""
        fd, self._fd = self._fd, -1
        ctl, self._ctl = self._ctl, None
        if ctl is not None:
            ctl.close()
        if fd >= 0:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __del__(self):
        # A Tap dropped without close() must not leak the fd (and, with it,
        # a non-persistent interface that would otherwise live on).
        if getattr(self, "_fd", -1) >= 0:
            self.close()


def _ioctl(fd, request, arg):
    return fcntl.ioctl(fd, request, arg)


def _control_socket(name):
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    except OSError as exc:
        raise OpenTunFailed.from_errno(name, exc.errno, "cannot open a control socket") from exc


def interface_exists(ctl, raw):
    """True if interface ``raw`` (bytes) exists in the namespace of socket ``ctl``."""
    try:
        _ioctl(ctl.fileno(), kc.SIOCGIFINDEX, ifreq.pack_int(raw))
    except OSError:
        return False
    return True


def _open_tun(name):
    try:
        return os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        hint = {
            errno.ENOENT: f"{TUN_PATH} is missing: load the driver (modprobe tun) or "
            "give the container the device",
            errno.ENXIO: "the TUN/TAP driver is not loaded (modprobe tun)",
            errno.ENODEV: "the TUN/TAP driver is not loaded (modprobe tun)",
            errno.EACCES: f"{_NEEDS_ADMIN} or read-write access to {TUN_PATH}",
            errno.EPERM: f"{_NEEDS_ADMIN} or read-write access to {TUN_PATH}",
        }.get(exc.errno, f"cannot open {TUN_PATH}")
        raise OpenTunFailed.from_errno(name, exc.errno, hint) from exc


def _setiff_error(name, exc, flags, existed):
    code = exc.errno
    if code == errno.EPERM:
        hint = (
            f"{_NEEDS_ADMIN}, or the device's owner/group must match this process"
            if existed
            else _NEEDS_ADMIN
        )
        return OpenTunFailed.from_errno(name, code, hint)
    if code == errno.EBUSY:
        if flags & kc.IFF_TUN_EXCL and existed:
            hint = "a device of this name already exists (exclusive=True)"
        elif flags & kc.IFF_MULTI_QUEUE:
            hint = "device is busy: all its queues are attached"
        else:
            hint = "device is busy: another file descriptor is attached to it"
        return SetTapAttributes.from_errno(name, code, hint)
    if code == errno.EINVAL:
        if existed:
            hint = (
                "an interface of this name exists with another type or flags: a tun/tap "
                "mismatch, a non-TUN/TAP device, or a multi_queue/vnet_hdr difference"
            )
        else:
            hint = "the kernel refused these flags"
        return SetTapAttributes.from_errno(name, code, hint)
    if code == errno.ENFILE:
        return SetTapAttributes.from_errno(name, code, "no free number for this name template")
    return SetTapAttributes.from_errno(name, code, "TUNSETIFF failed")

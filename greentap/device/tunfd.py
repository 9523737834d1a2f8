"""A ``/dev/net/tun`` fd and the TUN ioctls on it.  Blocking layer: no gevent.

:class:`TunFd` opens ``/dev/net/tun``, attaches the fd to an interface
(``TUNSETIFF``) and carries the settings that belong to the fd or its
device: persistence, owner and group, the virtio-net header size and the
offloads the reader accepts.  Link settings (up, MTU, MAC) are not here:
they are the :class:`~greentap.device.link.Link`'s.
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
from greentap.device.fd import FdHolder
from greentap.device.link import NEEDS_ADMIN
from greentap.errors import GreentapError, NotATapDevice, OpenTunFailed, SetTapAttributes

__all__ = ["TUN_PATH", "TunFd"]

TUN_PATH = "/dev/net/tun"
_INT = struct.Struct("i")


class TunFd:
    """One ``/dev/net/tun`` fd, held by an :class:`~greentap.device.fd.FdHolder`.

    Args:
        holder: the holder of the fd.

    Attributes:
        holder: as given: the one owner of the fd.
        offload: the ``TUN_F_*`` flags last set with :meth:`set_offload`.

    Raises:
        UnsupportedArchitecture: unknown ioctl encoding.
    """

    def __init__(self, holder: FdHolder) -> None:
        self._ioc = kc.tun_ioctls()
        self.holder = holder
        self.offload = 0

    @classmethod
    def open(cls, name: str) -> TunFd:
        """Open ``/dev/net/tun`` (in the calling thread's namespace), not yet attached.

        Raises:
            OpenTunFailed: no device node, no driver, no privilege.
        """
        kc.tun_ioctls()  # an unknown architecture fails before anything is opened
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            hint = {
                errno.ENOENT: f"{TUN_PATH} is missing: load the driver (modprobe tun) or "
                "give the container the device",
                errno.ENXIO: "the TUN/TAP driver is not loaded (modprobe tun)",
                errno.ENODEV: "the TUN/TAP driver is not loaded (modprobe tun)",
                errno.EACCES: f"{NEEDS_ADMIN} or read-write access to {TUN_PATH}",
                errno.EPERM: f"{NEEDS_ADMIN} or read-write access to {TUN_PATH}",
            }.get(exc.errno or 0, f"cannot open {TUN_PATH}")
            raise OpenTunFailed.from_errno(exc.errno or 0, hint, endpoint=name) from exc
        return cls(FdHolder(fd, name=name))

    @classmethod
    def adopt(cls, fd: int) -> TunFd:
        """Take over an fd that is already attached to a device.

        Returns:
            The TunFd, named after the attached interface.

        Raises:
            NotATapDevice: not a TUN/TAP fd, or not attached (the fd is left
                to the caller).
        """
        try:
            out = fcntl.ioctl(fd, kc.tun_ioctls().TUNGETIFF, ifreq.pack_flags(b"", 0))
        except OSError as exc:
            hint = {
                errno.EBADFD: "a /dev/net/tun fd that is not attached: call TUNSETIFF first",
                errno.EBADF: "not an open file descriptor",
            }.get(exc.errno or 0, "not a /dev/net/tun file descriptor")
            reason = f"fd {fd}: {os.strerror(exc.errno or 0)} ({hint})"
            raise NotATapDevice(reason, errno=exc.errno) from exc
        name, _ = ifreq.unpack_flags(out)
        return cls(FdHolder(fd, name=name))

    @property
    def name(self) -> str:
        """The interface name (as asked for, or as the kernel gave it once attached)."""
        return self.holder.name

    def _ioctl(self, request: int, arg: int | bytes, what: str = "") -> Any:
        try:
            return fcntl.ioctl(self.holder.fileno(), request, arg)
        except OSError as exc:
            hint = NEEDS_ADMIN if exc.errno == errno.EPERM else what
            raise SetTapAttributes.from_errno(exc.errno or 0, hint, endpoint=self.name) from exc

    # --- attaching ------------------------------------------------------------
    def attach(self, raw: bytes, flags: int, *, existed: bool, as_found: bool = False) -> str:
        """``TUNSETIFF``: attach the fd to interface ``raw`` (creating it if absent).

        Args:
            raw: the name (or template) as bytes.
            flags: ``IFF_*`` flags.
            existed: whether an interface of this name existed (for the hints).
            as_found: match an existing device's queue mode.  A device made
                multi-queue refuses a single-queue attach (and the other way
                round) with EINVAL and says nothing else, so the other mode is
                tried once.

        Returns:
            The name the kernel gave.

        Raises:
            OpenTunFailed: no privilege (or not the device's owner).
            SetTapAttributes: busy, a type or flag mismatch.
        """
        request = self._ioc.TUNSETIFF
        fd = self.holder.fileno()
        try:
            out = fcntl.ioctl(fd, request, ifreq.pack_flags(raw, flags))
        except OSError as exc:
            if not (as_found and existed and exc.errno == errno.EINVAL):
                raise _setiff_error(self.name, exc, flags, existed) from exc
            try:
                out = fcntl.ioctl(fd, request, ifreq.pack_flags(raw, flags ^ kc.IFF_MULTI_QUEUE))
            except OSError:
                raise _setiff_error(self.name, exc, flags, existed) from exc
        name, _ = ifreq.unpack_flags(out)
        self.holder.name = name
        return name

    def attached(self) -> bool:
        """True while the fd is attached to a device (False once it was deleted)."""
        try:
            fcntl.ioctl(self.holder.fd, self._ioc.TUNGETIFF, ifreq.pack_flags(b"", 0))
        except OSError:
            return False
        return True

    def flags(self) -> int:
        """The ``IFF_*`` flags of the attached device (``TUNGETIFF``)."""
        out = self._ioctl(self._ioc.TUNGETIFF, ifreq.pack_flags(b"", 0), "TUNGETIFF")
        return ifreq.unpack_flags(out)[1]

    # --- settings ---------------------------------------------------------------
    def set_persist(self, persist: bool = True) -> None:
        """Mark the device persistent (it outlives its last fd) or not."""
        self._ioctl(self._ioc.TUNSETPERSIST, int(bool(persist)), "cannot change persistence")

    def set_owner(self, user: int | str) -> None:
        """Let ``user`` (uid or name) attach without CAP_NET_ADMIN.

        Raises:
            KeyError: unknown user name.
        """
        uid = user if isinstance(user, int) else pwd.getpwnam(user).pw_uid
        self._ioctl(self._ioc.TUNSETOWNER, uid, f"cannot set owner {user}")

    def set_group(self, group: int | str) -> None:
        """Let members of ``group`` (gid or name) attach without CAP_NET_ADMIN.

        Raises:
            KeyError: unknown group name.
        """
        gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
        self._ioctl(self._ioc.TUNSETGROUP, gid, f"cannot set group {group}")

    def vnet_hdr_size(self) -> int:
        """The virtio-net header size (``TUNGETVNETHDRSZ``)."""
        return int(_INT.unpack(self._ioctl(self._ioc.TUNGETVNETHDRSZ, _INT.pack(0)))[0])

    def set_vnet_hdr_size(self, size: int) -> None:
        """Set the virtio-net header size (10, or 12 for ``num_buffers``).

        Raises:
            SetTapAttributes: the fd has no virtio-net header, or a bad size.
        """
        self._need_vnet_hdr()
        self._ioctl(self._ioc.TUNSETVNETHDRSZ, _INT.pack(size), f"bad vnet header size {size}")

    def set_offload(self, flags: int) -> None:
        """Tell the kernel which offloads the reader handles (``TUNSETOFFLOAD``).

        Args:
            flags: an OR of ``TUN_F_CSUM``, ``TUN_F_TSO4``, ... (0 for none).

        Raises:
            SetTapAttributes: the kernel does not support a flag.
        """
        self._ioctl(self._ioc.TUNSETOFFLOAD, flags, f"offload flags {flags:#x} not supported")
        self.offload = flags

    def enable_offloads(self) -> int:
        """Accept the widest set of checksum and segmentation offloads the kernel has.

        Tries CSUM, TSO4, TSO6, TSO_ECN, USO4 and USO6, then drops the newest
        (USO, then ECN) until the kernel accepts.  Frames then carry a
        virtio-net header saying what is left to do, and TCP can pass as
        64 KiB super-frames.

        Returns:
            The ``TUN_F_*`` flags set.

        Raises:
            SetTapAttributes: the fd has no virtio-net header, or the kernel
                accepts none of them.
        """
        self._need_vnet_hdr()
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

    def _need_vnet_hdr(self) -> None:
        if not self.flags() & kc.IFF_VNET_HDR:
            raise SetTapAttributes(
                "the device was opened without vnet_hdr=True", endpoint=self.name
            )


def _setiff_error(name: str, exc: OSError, flags: int, existed: bool) -> GreentapError:
    code = exc.errno or 0
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

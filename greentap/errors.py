"""Every exception greentap raises, under one base class.

Each error is named for whose fault it was and carries the interface name
(``ifname``) and, where the kernel refused something, the ``errno``.  Its text
reads ``<ifname>: <what happened> (<what to do>)``, e.g.::

    OpenTunFailed: tap0: Operation not permitted (needs CAP_NET_ADMIN)

The kernel-facing errors also derive from :class:`OSError`, and the caller's
mistakes (bad names, runt frames) from :class:`ValueError`, so code that
already catches those keeps working.
"""

import errno as _errno
import os


class TapError(Exception):
    """Base class of every greentap error.

    Attributes:
        ifname: the interface (or endpoint) the error is about, or None.
        errno: the kernel's error number, or None if the kernel was not asked.
        reason: the human-readable explanation, without the interface name.
    """

    def __init__(self, ifname, reason, errno=None):
        # Exception.__init__ rather than super(): the OSError mixins below would
        # otherwise reinterpret the arguments as (errno, strerror, filename).
        Exception.__init__(self, ifname, reason, errno)
        self.ifname = ifname
        self.reason = reason
        self.errno = errno
        if isinstance(self, OSError) and errno is not None:
            self.strerror = os.strerror(errno)

    def __reduce__(self):
        return (self.__class__, (self.ifname, self.reason, self.errno))

    def __str__(self):
        if self.ifname is None:
            return self.reason
        return f"{self._display_name()}: {self.reason}"

    def _display_name(self):
        name = self.ifname
        if isinstance(name, bytes):
            name = name.decode("utf-8", "backslashreplace")
        return repr(name) if _needs_quoting(name) else name

    @classmethod
    def from_errno(cls, ifname, errno, hint=None):
        """Build the error from an errno, appending an actionable hint.

        Args:
            ifname: interface name.
            errno: the kernel's error number.
            hint: what the user can do about it, or None.

        Returns:
            An instance of ``cls`` whose reason is ``strerror (hint)``.
        """
        reason = os.strerror(errno)
        if hint:
            reason = f"{reason} ({hint})"
        return cls(ifname, reason, errno)


def _needs_quoting(name):
    return not name or any(c.isspace() or not c.isprintable() for c in name)


# --- the caller's fault: arguments ----------------------------------------
class TapNameError(TapError, ValueError):
    """The interface name cannot be a Linux interface name (the caller's fault)."""


class TapNameTooLong(TapNameError):
    """The name is 16 bytes or more; Linux names are at most 15 bytes.

    Attributes:
        length: the name's length in bytes.
    """

    def __init__(self, ifname, reason=None, errno=None):
        self.length = len(ifname if isinstance(ifname, bytes) else os.fsencode(ifname))
        if reason is None:
            reason = f"name is {self.length} bytes; Linux interface names are at most 15"
        super().__init__(ifname, reason, errno)


class TapNameConversion(TapNameError):
    """The name contains a NUL byte and cannot become a C string."""

    def __init__(self, ifname, reason="name contains a NUL byte", errno=None):
        super().__init__(ifname, reason, errno)


class InvalidTapName(TapNameError):
    """The name is empty, ``.``/``..``, or has ``/``, ``:`` or whitespace."""


class EndpointSyntaxError(TapError, ValueError):
    """An endpoint description (``tap:NAME``, ...) cannot be understood."""


class FrameRejected(TapError, ValueError):
    """A frame cannot be sent: too short for the device (a runt) or refused as invalid."""


# --- the environment's fault: privileges, missing devices -------------------
class OpenTunFailed(TapError, OSError):
    """``/dev/net/tun`` cannot be opened or the device cannot be created:
    missing driver or missing privilege."""


class SetTapAttributes(TapError, OSError):
    """The kernel refused ``TUNSETIFF`` or another TUN setting: busy device,
    type/flag mismatch with an existing device, or ownership."""


class NotATapDevice(SetTapAttributes):
    """A file descriptor given to :meth:`Tap.from_fd` is not an attached TUN/TAP fd."""


class EndpointUnavailable(TapError, OSError):
    """A socket or file behind an endpoint cannot be set up: an address in use
    or unresolvable, a file that cannot be created."""


class LinkConfigFailed(TapError, OSError):
    """A link setting (up/down, MTU, MAC, queue length) was refused."""


class NamespaceUnavailable(TapError, OSError):
    """A network namespace could not be entered."""


class PrivilegeDropFailed(TapError, OSError):
    """Dropping root (``--user``/``--group``) failed or could not be verified."""


class UnsupportedArchitecture(TapError):
    """greentap does not know this architecture's ioctl encoding."""

    def __init__(self, ifname, reason=None, errno=None):
        if reason is None:
            reason = (
                "unknown ioctl encoding for this architecture; "
                "add it to greentap.kernel_constants.IOC_ENCODINGS"
            )
        super().__init__(ifname, reason, errno)


# --- runtime: the device or its use ----------------------------------------
class TapClosed(TapError):
    """The device was closed (possibly by another greenlet while this one waited)."""

    def __init__(self, ifname, reason="device is closed", errno=_errno.EBADF):
        super().__init__(ifname, reason, errno)


class TapVanished(TapError, OSError):
    """The interface behind an open fd was deleted (or its namespace went away)."""

    def __init__(self, ifname, reason=None, errno=_errno.EBADFD):
        if reason is None:
            reason = "interface was deleted while open (EBADFD); reopen or recreate it"
        super().__init__(ifname, reason, errno)


class TapIOError(TapError, OSError):
    """Any other read or write failure on the device."""


def io_error(ifname, exc, operation):
    """Translate an ``OSError`` from a frame read or write into a greentap error.

    This is the one place where I/O errors enter the library.

    Args:
        ifname: the interface name.
        exc: the ``OSError`` raised by ``os.read``/``os.write``.
        operation: ``"read"`` or ``"write"``, for the message.

    Returns:
        The :class:`TapError` to raise (``raise io_error(...) from exc``).
    """
    code = exc.errno
    if code == _errno.EBADFD:
        return TapVanished(ifname)
    if code == _errno.EBADF:
        return TapClosed(ifname, "file descriptor was closed underneath greentap")
    if code == _errno.EINVAL and operation == "write":
        return FrameRejected.from_errno(ifname, code, "the kernel refused the frame")
    return TapIOError.from_errno(ifname, code, f"{operation} failed")

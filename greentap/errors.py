"""Every exception greentap raises, under one base class, named for whose fault it was.

:class:`GreentapError` is the base.  Below it, three families say who has to act:

* :class:`UsageError` (also a :class:`ValueError`): **the caller's input** was
  wrong — a bad interface name or endpoint, an option out of range, a runt
  frame, an fd that is not a TAP.  Fix the input; retrying will not help.
* :class:`SystemRefused` (also an :class:`OSError`): **the system refused** or
  failed — a missing privilege or driver, a busy device, an address in use, an
  interface deleted under an open fd, an I/O error.  Fix the environment.
* :class:`PeerError`: **the peer** went away or sent what cannot be carried.

and :class:`EndpointClosed`, which is nobody's fault: this program closed the
endpoint (possibly from another greenlet while a reader waited on it).

Every error carries the ``endpoint`` it is about (an interface name, an
endpoint description, or None) and, where the kernel was asked, its
``errno``.  Its text reads ``<endpoint>: <what happened> (<what to do>)``::

    OpenTunFailed: tap0: Operation not permitted (needs CAP_NET_ADMIN)

The names of earlier releases stay importable: ``TapError``, ``TapClosed``,
``TapVanished``, ``TapIOError``, ``TapNameError`` and ``InvalidTapName`` are
aliases of their generic successors.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any

__all__ = [
    "ConfigError",
    "EndpointClosed",
    "EndpointIOError",
    "EndpointSyntaxError",
    "EndpointUnavailable",
    "EndpointVanished",
    "FrameRejected",
    "GreentapError",
    "InterfaceNameError",
    "InvalidInterfaceName",
    "InvalidTapName",
    "LinkConfigFailed",
    "NamespaceUnavailable",
    "NotATapDevice",
    "OpenTunFailed",
    "PeerError",
    "PeerBrokeFraming",
    "PeerGone",
    "PrivilegeDropFailed",
    "SetTapAttributes",
    "SystemRefused",
    "TapClosed",
    "TapError",
    "TapIOError",
    "TapNameConversion",
    "TapNameError",
    "TapNameTooLong",
    "TapVanished",
    "UnsupportedArchitecture",
    "UsageError",
    "io_error",
]


class GreentapError(Exception):
    """Base class of every greentap error.

    Args:
        reason: what happened, and what to do about it, without the endpoint
            (default: the class's :attr:`default_reason`).
        endpoint: the interface or endpoint the error is about, or None.
        errno: the kernel's error number (default: the class's
            :attr:`default_errno`; None where the kernel was not asked).

    Attributes:
        endpoint: as given.
        errno: as given.
        reason: as given.
    """

    endpoint: str | bytes | None
    reason: str
    errno: int | None
    strerror: str | None
    #: What the error says when no reason is given.
    default_reason = "error"
    #: The errno of the error when none is given.
    default_errno: int | None = None

    def __init__(
        self,
        reason: str | None = None,
        *,
        endpoint: str | bytes | None = None,
        errno: int | None = None,
    ) -> None:
        reason = reason or self.default_reason
        errno = errno if errno is not None else self.default_errno
        # Exception.__init__ rather than super(): OSError would read the
        # arguments as (errno, strerror, filename).
        Exception.__init__(self, reason)
        self.reason = reason
        self.endpoint = endpoint
        self.errno = errno
        if isinstance(self, OSError) and errno is not None:
            self.strerror = os.strerror(errno)

    @property
    def ifname(self) -> str | bytes | None:
        """The endpoint, under the name earlier releases gave it."""
        return self.endpoint

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.reason, self.endpoint, self.errno))

    def __str__(self) -> str:
        if self.endpoint is None:
            return self.reason
        return f"{_display(self.endpoint)}: {self.reason}"

    @classmethod
    def from_errno(
        cls, code: int | None, hint: str | None = None, *, endpoint: str | bytes | None = None
    ) -> GreentapError:
        """Build the error from an errno, with an actionable hint.

        Args:
            code: the kernel's error number (None: not known).
            hint: what the user can do about it, or None.
            endpoint: what the error is about.

        Returns:
            An instance of ``cls`` whose reason is ``strerror (hint)``.
        """
        reason = os.strerror(code) if code is not None else "error"
        if hint:
            reason = f"{reason} ({hint})"
        return cls(reason, endpoint=endpoint, errno=code)


def _rebuild(cls: type[GreentapError], reason: str, endpoint: Any, code: Any) -> GreentapError:
    error = cls.__new__(cls)
    GreentapError.__init__(error, reason, endpoint=endpoint, errno=code)
    return error


def _display(name: str | bytes) -> str:
    if isinstance(name, bytes):
        name = name.decode("utf-8", "backslashreplace")
    if not name or any(c.isspace() or not c.isprintable() for c in name):
        return repr(name)
    return name


# --- the caller's input ------------------------------------------------------
class UsageError(GreentapError, ValueError):
    """The caller's input is wrong: a name, an endpoint, an option, a frame."""


class InterfaceNameError(UsageError):
    """The interface name cannot be a Linux interface name."""


class TapNameTooLong(InterfaceNameError):
    """The name is 16 bytes or more; Linux names are at most 15 bytes.

    Attributes:
        length: the name's length in bytes.
    """

    def __init__(
        self, reason: str | None = None, *, endpoint: str | bytes, errno: int | None = None
    ) -> None:
        self.length = len(endpoint if isinstance(endpoint, bytes) else os.fsencode(endpoint))
        reason = reason or f"name is {self.length} bytes; Linux interface names are at most 15"
        super().__init__(reason, endpoint=endpoint, errno=errno)


class TapNameConversion(InterfaceNameError):
    """The name contains a NUL byte and cannot become a C string."""

    default_reason = "name contains a NUL byte"


class InvalidInterfaceName(InterfaceNameError):
    """The name is empty, ``.``/``..``, or has ``/``, ``:``, whitespace or a bad ``%``."""


class EndpointSyntaxError(UsageError):
    """An endpoint description (``tap:NAME``, ``vxlan://...``) or an option cannot be used."""


class ConfigError(UsageError):
    """A configuration file cannot be used: its syntax, a key, a value, an endpoint.

    Its endpoint is ``FILE:LINE`` (or the file alone where no line applies),
    and its reason names the key: ``/etc/tap-forward.toml:7: endpoint 'vm1',
    key 'vni': expected a whole number from 0 to 16777215, not 'x'``.

    Attributes:
        path: the file.
        line: the line (1-based), or None.
        key: the key at fault, or None.
    """

    def __init__(
        self,
        reason: str | None = None,
        *,
        endpoint: str | bytes | None = None,
        errno: int | None = None,
        path: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        if endpoint is None and path is not None:
            endpoint = path if line is None else f"{path}:{line}"
        super().__init__(reason, endpoint=endpoint, errno=errno)
        self.path, self.line, self.key = path, line, key


class FrameRejected(UsageError):
    """A frame cannot be sent: shorter than the device's header (a runt), or refused."""


class NotATapDevice(UsageError):
    """An fd handed to greentap (``fd:N``, ``Tap.from_fd``) is not an attached TUN/TAP fd."""


# --- the system's refusal ----------------------------------------------------
class SystemRefused(GreentapError, OSError):
    """The system refused or failed: privileges, drivers, devices, addresses, I/O."""


class OpenTunFailed(SystemRefused):
    """``/dev/net/tun`` cannot be opened or the device cannot be created:
    a missing driver or a missing privilege."""


class SetTapAttributes(SystemRefused):
    """The kernel refused ``TUNSETIFF`` or another TUN setting: a busy device,
    a type or flag mismatch with an existing device, ownership."""


class EndpointUnavailable(SystemRefused):
    """A socket or file behind an endpoint cannot be set up: an address in use
    or unresolvable, a file that cannot be created."""


class LinkConfigFailed(SystemRefused):
    """A link setting (up/down, MTU, MAC, queue length) was refused."""


class NamespaceUnavailable(SystemRefused):
    """A network namespace cannot be entered."""


class PrivilegeDropFailed(SystemRefused):
    """Dropping root (``--user``/``--group``) failed or could not be verified."""


class EndpointVanished(SystemRefused):
    """The interface behind an open fd was deleted (or its namespace went away)."""

    default_reason = "interface was deleted while open (EBADFD); reopen or recreate it"
    default_errno = _errno.EBADFD


class EndpointIOError(SystemRefused):
    """Any other read or write failure on an endpoint."""


# --- the peer -----------------------------------------------------------------
class PeerError(GreentapError):
    """The other side of an endpoint went away or sent what cannot be carried."""


class PeerGone(PeerError):
    """The other side of an fd is gone: a read returned end of file."""

    default_reason = "end of file: the other side of the fd is gone"


class PeerBrokeFraming(PeerError):
    """The other side of a stream sent what is not a frame behind its length
    (a length over the largest frame, or garbage): nothing after it can be
    trusted, so the connection is closed."""

    default_reason = "the peer broke the stream's framing"


# --- nobody's fault -------------------------------------------------------------
class EndpointClosed(GreentapError):
    """This program closed the endpoint (possibly while another greenlet waited on it)."""

    default_reason = "endpoint is closed"
    default_errno = _errno.EBADF


class UnsupportedArchitecture(GreentapError):
    """greentap does not know this architecture's ioctl encoding (greentap's gap)."""

    default_reason = (
        "unknown ioctl encoding for this architecture; "
        "add it to greentap.core.kernel_constants.IOC_ENCODINGS"
    )


# --- the names of earlier releases -------------------------------------------
TapError = GreentapError
TapNameError = InterfaceNameError
InvalidTapName = InvalidInterfaceName
TapClosed = EndpointClosed
TapVanished = EndpointVanished
TapIOError = EndpointIOError


def io_error(endpoint: str | bytes | None, exc: OSError, operation: str) -> GreentapError:
    """Translate an ``OSError`` from a frame read or write into a greentap error.

    The one place where read and write failures become exceptions.

    Args:
        endpoint: what was read or written.
        exc: the ``OSError`` raised by the read or write.
        operation: ``"read"`` or ``"write"``, for the message.

    Returns:
        The error to raise (``raise io_error(...) from exc``).
    """
    code = exc.errno
    if code == _errno.EBADFD:
        return EndpointVanished(endpoint=endpoint)
    if code == _errno.EBADF:
        return EndpointClosed("file descriptor was closed underneath greentap", endpoint=endpoint)
    if code == _errno.EINVAL and operation == "write":
        return FrameRejected.from_errno(code, "the kernel refused the frame", endpoint=endpoint)
    return EndpointIOError.from_errno(code, f"{operation} failed", endpoint=endpoint)

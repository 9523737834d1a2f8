"""The one owner of a file descriptor.  Blocking layer: no gevent.

Every fd greentap opens — a ``/dev/net/tun`` fd, a UDP socket — is held by
exactly one :class:`FdHolder`.  Whoever needs the number asks the holder
(:attr:`FdHolder.fd`, -1 once closed), so an fd is never read across
objects or closed twice, and a closed number reused by the kernel for
another file is never touched again.  The green layer
(:class:`greentap.green.fdio.GreenFd`) adds the waiting on top.
"""

from __future__ import annotations

import _socket
import os

from greentap.errors import EndpointClosed

__all__ = ["FdHolder"]


class FdHolder:
    """Own one fd (an int) or one socket object, and close it exactly once.

    Args:
        handle: the fd number, or a socket object (which then owns the number
            and is closed through its ``close()``).
        name: what errors call the endpoint.

    Attributes:
        fd: the fd number, or -1 once closed or detached.  Set to -1 *before*
            the fd is closed, so a loop that re-reads it never uses a number
            the kernel may already have given to another file.
        handle: the fd number or socket object, None once closed or detached.
        name: as given.
    """

    __slots__ = ("fd", "handle", "name")

    def __init__(self, handle: int | _socket.socket, *, name: str) -> None:
        self.handle: int | _socket.socket | None = handle
        self.fd: int = handle if isinstance(handle, int) else handle.fileno()
        self.name = name

    def __repr__(self) -> str:
        state = "closed" if self.fd < 0 else f"fd={self.fd}"
        return f"<FdHolder {self.name!r} {state}>"

    @property
    def closed(self) -> bool:
        """True once the fd was closed or detached."""
        return self.fd < 0

    def fileno(self) -> int:
        """Return the fd number.

        Raises:
            EndpointClosed: closed or detached.
        """
        if self.fd < 0:
            raise EndpointClosed(endpoint=self.name)
        return self.fd

    def detach(self) -> int | _socket.socket:
        """Give up ownership without closing: the caller now owns the handle.

        Returns:
            The fd number or socket object.

        Raises:
            EndpointClosed: already closed or detached.
        """
        handle = self.handle
        if handle is None:
            raise EndpointClosed(endpoint=self.name)
        self.fd = -1
        self.handle = None
        return handle

    def close(self) -> None:
        """Close the fd; harmless when already closed."""
        if self.handle is not None:
            close_handle(self.detach())

    def __del__(self) -> None:
        # A holder dropped without close() must not leak its fd (and, for a
        # TAP, a non-persistent interface that would otherwise live on).
        if getattr(self, "handle", None) is not None:
            self.close()


def close_handle(handle: int | _socket.socket) -> None:
    """Close an fd number or a socket object."""
    if isinstance(handle, int):
        os.close(handle)
    else:
        handle.close()

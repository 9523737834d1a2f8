"""An fd on gevent's hub: cooperative, budgeted reads and a safe close.

:class:`GreenFd` is the one place where greentap waits on an fd.  Every
readable port — a TAP's :class:`~greentap.green.polled.PolledTap`, a UDP
socket of a tunnel — reads through it:

1. try the non-blocking read;
2. on ``EAGAIN``, wait on the persistent read watcher (created once, not per
   wait), then retry;
3. after ``budget`` reads in a row without a wait, yield to the hub, so an
   always-readable fd cannot starve the other greenlets.  The yield comes
   before the next read, never between a read and its caller: a greenlet
   interrupted there holds no frame.

:meth:`GreenFd.close` follows gevent's recipe for sockets: the fd is marked
closed (-1) first, a greenlet waiting on it gets
:class:`~greentap.errors.EndpointClosed` at once, the watcher is closed, and
only then is the fd itself closed, so the loop never watches a number the
kernel may already have handed to another file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import gevent
from gevent import get_hub

from greentap.device.fd import FdHolder, close_handle
from greentap.errors import EndpointClosed

__all__ = ["DEFAULT_BUDGET", "GreenFd"]

#: Reads back to back before yielding to the hub (QEMU's TAP backend uses the
#: same figure): an always-readable fd must not starve the others.
DEFAULT_BUDGET = 50

T = TypeVar("T")


class _Detached:
    """Stands in for the holder once a GreenFd let go of it: nothing to read."""

    fd = -1
    handle = None
    closed = True
    name = ""


_DETACHED: Any = _Detached()


class GreenFd:
    """Drive one :class:`~greentap.device.fd.FdHolder` cooperatively on a hub.

    Args:
        holder: the holder; its fd is put in non-blocking mode.
        hub: the gevent hub (default: the current thread's).
        budget: reads without a wait before yielding to the hub.

    Attributes:
        holder: the holder, or a stand-in whose ``fd`` is -1 once closed or
            released.  Loops re-read ``holder.fd`` after every yield.

    Raises:
        ValueError: ``budget`` below 1.
        EndpointClosed: the holder is already closed.
    """

    def __init__(self, holder: FdHolder, *, hub: Any = None, budget: int = DEFAULT_BUDGET) -> None:
        if budget < 1:
            raise ValueError("budget must be at least 1")
        self.name = holder.name
        self.budget = budget
        self._batch = 0
        self._hub = hub if hub is not None else get_hub()
        self.holder: FdHolder = _DETACHED
        self._watcher: Any = None
        self.attach(holder)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.holder.fd}"
        return f"<GreenFd {self.name!r} {state}>"

    @property
    def closed(self) -> bool:
        """True once closed or released (or before :meth:`attach`)."""
        return self.holder.fd < 0

    @property
    def hub(self) -> Any:
        """The gevent hub this fd waits on."""
        return self._hub

    def attach(self, holder: FdHolder) -> None:
        """Drive ``holder`` from now on (after :meth:`release`, for a re-attached device).

        Raises:
            ValueError: this GreenFd still drives another fd.
            EndpointClosed: ``holder`` is closed.
        """
        if not self.closed:
            raise ValueError(f"{self.name}: already driving an fd")
        fd = holder.fileno()
        os.set_blocking(fd, False)
        self._watcher = self._hub.loop.io(fd, 1)
        self._batch = 0
        self.name = holder.name
        self.holder = holder

    # --- reading ------------------------------------------------------------
    def read(self, fn: Callable[[Any, Any], T], arg: Any) -> T:
        """Run one non-blocking read, waiting (cooperatively) until it can succeed.

        Args:
            fn: the read, called as ``fn(handle, arg)`` with the holder's fd
                number or socket (``os.readv``, ``socket.recvmsg_into``).
            arg: its argument (the buffers).

        Returns:
            What ``fn`` returned.

        Raises:
            EndpointClosed: closed before or during the wait.
            OSError: the read failed (the caller names it).
        """
        self.before_read()
        while True:
            handle = self.holder.handle
            if handle is None:
                raise EndpointClosed(endpoint=self.name)
            try:
                result = fn(handle, arg)
            except BlockingIOError:
                self._batch = 0
                # Raises EndpointClosed here if close() runs while we wait.
                self._hub.wait(self._watcher)
                continue
            except OSError as exc:
                if self.holder.handle is None:
                    raise EndpointClosed(endpoint=self.name) from exc
                raise
            self.count()
            return result

    def before_read(self) -> None:
        """Yield to the hub once if the budget is spent; call it before taking a frame.

        The yield comes before a read, never with a frame in hand, so a
        greenlet thrown out of it (a forwarder rewiring its ports) loses nothing.
        """
        if self._batch >= self.budget:
            self._batch = 0
            gevent.sleep(0)

    def count(self, n: int = 1) -> None:
        """Count ``n`` reads; the next :meth:`read` after ``budget`` of them yields first."""
        self._batch += n

    def pause(self) -> None:
        """Yield to the hub once (a loop that spent its budget without waiting)."""
        self._batch = 0
        gevent.sleep(0)

    def wait_readable(self, timeout: float | None = None) -> bool:
        """Block this greenlet until the fd is readable, or at most ``timeout`` seconds.

        Returns:
            True when readable, False when the timeout passed first.

        Raises:
            EndpointClosed: closed before or during the wait.
        """
        if self.closed:
            raise EndpointClosed(endpoint=self.name)
        self._batch = 0
        if timeout is None:
            self._hub.wait(self._watcher)
            return True
        with gevent.Timeout(timeout, False):
            self._hub.wait(self._watcher)
            return True
        return False

    # --- lifetime -----------------------------------------------------------
    def _let_go(self, reason: str, then: Callable[..., Any], *args: Any) -> None:
        self.holder = _DETACHED
        watcher, self._watcher = self._watcher, None
        # gevent's own recipe: throw into the waiter first, close the watcher,
        # and only then run `then` (which may close the fd).
        error = EndpointClosed(reason, endpoint=self.name)
        self._hub.cancel_waits_close_and_then([watcher], error, then, *args)

    def close(
        self, reason: str = "endpoint was closed", then: Callable[[], Any] | None = None
    ) -> None:
        """Close the fd; a greenlet blocked in :meth:`read` gets EndpointClosed.

        Idempotent: the fd is closed exactly once.

        Args:
            reason: what the woken reader's EndpointClosed says.
            then: closes the fd instead of the holder itself (a device that
                also has a link to close); run once the watcher is closed.
        """
        holder = self.holder
        if holder.fd < 0:
            return
        if then is None:
            self._let_go(reason, close_handle, holder.detach())
        else:
            self._let_go(reason, then)

    def release(self, reason: str = "fd was detached from the hub") -> FdHolder:
        """Stop driving the fd without closing it; put it back in blocking mode.

        A greenlet blocked in :meth:`read` gets EndpointClosed.

        Returns:
            The holder, which still owns the fd.

        Raises:
            EndpointClosed: already closed or released.
        """
        holder = self.holder
        if holder.fd < 0:
            raise EndpointClosed(endpoint=self.name)
        self._let_go(reason, _noop)
        os.set_blocking(holder.fd, True)
        return holder


def _noop() -> None:
    pass

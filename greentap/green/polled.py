"""A TAP device driven cooperatively by the gevent hub.

:class:`Tap` is the device (:class:`~greentap.device.tun.TapDevice`) plus
:meth:`Tap.polled`, which returns a :class:`PolledTap`: the fd in
non-blocking mode, read with a blocking-style API that blocks only the
calling greenlet (through :class:`~greentap.green.fdio.GreenFd`).  Writes
never wait: a frame the device cannot take right now is dropped and
counted, as a NIC would.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from greentap.core.counters import DeviceCounters
from greentap.device.tun import TapDevice
from greentap.errors import EndpointClosed, GreentapError, PeerGone, io_error
from greentap.green import relay
from greentap.green.fdio import DEFAULT_BUDGET, GreenFd

__all__ = ["DEFAULT_BUDGET", "PolledTap", "Tap"]

Frame = bytes | bytearray | memoryview


class Tap(TapDevice):
    """A TAP or TUN interface (see :class:`~greentap.device.tun.TapDevice` for
    the arguments) that can be driven on gevent's hub with :meth:`polled`."""

    def polled(self, hub: Any = None, *, budget: int = DEFAULT_BUDGET) -> PolledTap:
        """Return a :class:`PolledTap` driving this device cooperatively on a hub.

        The PolledTap owns the fd until :meth:`PolledTap.into_inner` gives
        this Tap back.

        Args:
            hub: the gevent hub (default: the current thread's).
            budget: frames read without waiting before yielding to the hub.
        """
        return PolledTap(self, hub=hub, budget=budget)


class PolledTap:
    """A :class:`~greentap.device.tun.TapDevice` bound to a gevent hub.

    Create it with :meth:`Tap.polled`.  One greenlet may block in
    :meth:`recv` at a time; any greenlet may :meth:`send` or :meth:`close`.

    Args:
        tap: the device to drive; the PolledTap owns it.
        hub: the gevent hub (default: the current thread's).
        budget: frames read without waiting before yielding to the hub.

    Attributes:
        counters: the device's :class:`~greentap.core.counters.DeviceCounters`.
        io: the :class:`~greentap.green.fdio.GreenFd` reading the fd.
        max_frame_size: the largest frame a read can return (see
            :class:`~greentap.core.layout.FrameLayout`).
    """

    def __init__(self, tap: TapDevice, *, hub: Any = None, budget: int = DEFAULT_BUDGET) -> None:
        self.io = GreenFd(tap.holder, hub=hub, budget=budget)
        self._tap = tap
        self.name = tap.name
        self.counters = DeviceCounters()
        self.layout = tap.layout
        self.max_frame_size = tap.max_frame_size
        self._min_frame = tap.min_frame_size
        self._view = memoryview(bytearray(self.max_frame_size))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {'closed' if self.closed else 'open'}>"

    @property
    def tap(self) -> TapDevice:
        """The underlying device (for link settings)."""
        return self._tap

    @property
    def closed(self) -> bool:
        """True once :meth:`close` or :meth:`into_inner` has run."""
        return self.io.closed

    def fileno(self) -> int:
        """Return the device fd.

        Raises:
            EndpointClosed: closed.
        """
        if self.closed:
            raise EndpointClosed(endpoint=self.name)
        return self.io.holder.fd

    # --- receive ----------------------------------------------------------
    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Read one frame into ``buffer``, blocking only this greenlet.

        Args:
            buffer: a writable bytes-like object of at least
                :attr:`max_frame_size` bytes (a shorter one could truncate a
                frame, so it is refused).

        Returns:
            The frame's length in bytes.

        Raises:
            ValueError: ``buffer`` is shorter than :attr:`max_frame_size`.
            EndpointClosed: the device was closed, before or during the wait.
            EndpointVanished: the interface was deleted.
            PeerGone: the fd reads end of file (the other side of a socket left).
            EndpointIOError: another read error.
        """
        if len(buffer) < self.max_frame_size:
            raise ValueError(
                f"recv_into needs a buffer of at least {self.max_frame_size} bytes "
                "(the largest frame this device can return)"
            )
        return self._recv_into((buffer,))

    def _recv_into(self, buffers: tuple[Any, ...]) -> int:
        try:
            n = self.io.read(os.readv, buffers)
        except OSError as exc:
            raise io_error(self.name, exc, "read") from exc
        if not n:
            # A TAP never reads 0 bytes; an fd that does (a socket whose peer
            # left) would otherwise spin forever.
            raise PeerGone(endpoint=self.name)
        counters = self.counters
        counters.rx_packets += 1
        counters.rx_bytes += n
        return n

    def recv(self) -> bytes:
        """Read exactly one frame, blocking only this greenlet.

        Returns:
            The frame as bytes (with any vnet header / packet info in front).

        Raises:
            EndpointClosed, EndpointVanished, PeerGone, EndpointIOError: as
                :meth:`recv_into`.
        """
        view = self._view
        n = self._recv_into((view,))
        return bytes(view[:n])

    def __iter__(self) -> Iterator[bytes]:
        """Yield frames as bytes until the device is closed."""
        while True:
            try:
                frame = self.recv()
            except EndpointClosed:
                return
            yield frame

    # --- send -------------------------------------------------------------
    def send(self, frame: Frame) -> bool:
        """Write one frame without ever blocking the hub.

        Args:
            frame: a bytes-like object holding one whole frame.

        Returns:
            True if the device took the frame; False if it was dropped
            because the device could not take it now (EAGAIN/ENOBUFS,
            counted in ``tx_dropped``) or the link is down (EIO, counted in
            ``tx_link_down``).

        Raises:
            FrameRejected: a runt (shorter than an Ethernet header) or a
                frame the kernel refused (counted in ``tx_errors``).
            EndpointClosed, EndpointVanished, EndpointIOError: the device is unusable.
        """
        fd, size = relay.checked_fd(self, frame, self._min_frame)
        counters = self.counters
        try:
            return relay.send_counted(fd, frame, size, counters)
        except OSError as exc:
            if self.closed:
                raise EndpointClosed(endpoint=self.name) from exc
            counters.tx_errors += 1  # a closed device is counted by whoever sent to it
            raise io_error(self.name, exc, "write") from exc

    # --- relay --------------------------------------------------------------
    def relay_to(
        self,
        dst: relay.Sink,
        on_send_error: Callable[[GreentapError], Any],
        mirrors: Iterable[Callable[[Frame], Any]] = (),
    ) -> None:
        """Forward every frame read from this device to ``dst`` until this one closes.

        The wire's hot path (see :func:`greentap.green.relay.relay`): one
        read and one write per frame, in batches of at most ``budget``
        frames, in C when it was built.

        Args:
            dst: the :class:`PolledTap` (or another :class:`~greentap.green.relay.Sink`)
                to write to.  Writes never block: a frame ``dst`` cannot take
                is dropped and counted on ``dst``.
            on_send_error: called with the error when a write to ``dst``
                fails for good; the relay keeps reading.
            mirrors: callables given every frame read (a pcap port's ``send``).

        Raises:
            EndpointClosed: this device was closed (the normal end).
            EndpointVanished, PeerGone, EndpointIOError: this device failed.
        """
        relay.relay(self, dst, on_send_error, tuple(mirrors))

    # --- lifetime ---------------------------------------------------------
    def close(self) -> None:
        """Close the device; a greenlet blocked in :meth:`recv` gets EndpointClosed.

        Idempotent: the fd is closed exactly once.
        """
        self.io.close("device was closed", then=self._tap.close)

    def reattach(self, tap: TapDevice) -> None:
        """Drive a new device in place of the one released, keeping this object
        and its counters.

        For an interface that vanished and came back: whoever holds this
        PolledTap (a relay writing to it) carries on with the new device.

        Args:
            tap: the device, attached again (or a new one), with the same
                frame layout; this PolledTap takes it over.

        Raises:
            ValueError: this PolledTap is still open, or the layouts differ.
        """
        if not self.closed:
            raise ValueError(f"{self.name}: reattach needs a closed PolledTap")
        if tap.layout != self.layout:
            raise ValueError(f"{tap.name}: frame layout differs from the device it replaces")
        self.io.attach(tap.holder)
        self._tap = tap
        self.name = tap.name

    def into_inner(self) -> TapDevice:
        """Detach from the hub and give back the blocking device.

        A greenlet blocked in :meth:`recv` gets :class:`EndpointClosed`.  The
        fd is put back in blocking mode.

        Returns:
            The device.

        Raises:
            EndpointClosed: already closed or detached.
        """
        self.io.release()
        return self._tap

    def __enter__(self) -> PolledTap:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

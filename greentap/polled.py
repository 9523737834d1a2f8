"""A TAP device driven cooperatively by the gevent hub.

:class:`PolledTap` puts the device's fd in non-blocking mode and reads frames
with a blocking-style API that blocks only the calling greenlet: try the read,
and on ``EAGAIN`` wait on a persistent read watcher created once, then retry.
Writes never wait: a frame the device cannot take right now is dropped and
counted, as a NIC would.
"""

import errno
import os

import gevent
from gevent import get_hub

from greentap.counters import DeviceCounters
from greentap.errors import FrameRejected, TapClosed, TapVanished, io_error

try:  # the wire's inner loop in C, built when a compiler was there (setup.py)
    from greentap._relay import relay_batch as _relay_batch
except ImportError:  # pragma: no cover - depends on the build
    _relay_batch = None
if os.environ.get("GREENTAP_PURE_PYTHON"):  # for tests and benchmarks of the fallback
    _relay_batch = None
# How a C batch ended (greentap/_relay.c).
_BUDGET, _WAIT, _EOF_END, _READ_ERROR, _WRITE_ERROR = range(5)

#: Frames read back to back before yielding to the hub (QEMU's TAP backend
#: uses the same figure): an always-readable device must not starve others.
DEFAULT_BUDGET = 50

_BACKPRESSURE = (errno.EAGAIN, errno.ENOBUFS)
# A TAP never returns 0 bytes; an fd that does (a socket whose peer left)
# would otherwise spin forever.
_EOF = "end of file: the other side of the fd is gone"


class PolledTap:
    """A :class:`~greentap.device.Tap` bound to a gevent hub.

    Create it with :meth:`Tap.polled`.  One greenlet may block in
    :meth:`recv` at a time; any greenlet may :meth:`send` or :meth:`close`.

    Args:
        tap: the :class:`~greentap.device.Tap` to drive; the PolledTap owns it.
        hub: the gevent hub (default: the current thread's).
        budget: frames read without waiting before yielding to the hub.

    Attributes:
        counters: the device's :class:`~greentap.counters.DeviceCounters`.
    """

    def __init__(self, tap, *, hub=None, budget=DEFAULT_BUDGET):
        if budget < 1:
            raise ValueError("budget must be at least 1")
        fd = tap.fileno()
        self._hub = hub if hub is not None else get_hub()
        self._read_watcher = self._hub.loop.io(fd, 1)
        os.set_blocking(fd, False)
        self._tap = tap
        self._fd = fd
        self.name = tap.name
        self.counters = DeviceCounters()
        self.max_frame_size = tap.max_frame_size
        self._min_frame = tap.min_frame_size
        self._buf = bytearray(self.max_frame_size)
        self._view = memoryview(self._buf)
        self._budget = budget
        self._batch = 0

    def __repr__(self):
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<{type(self).__name__} {self.name!r} {state}>"

    @property
    def tap(self):
        """The underlying :class:`~greentap.device.Tap` (for link settings)."""
        return self._tap

    @property
    def closed(self):
        """True once :meth:`close` or :meth:`into_inner` has run."""
        return self._fd < 0

    def fileno(self):
        """Return the device fd.

        Raises:
            TapClosed: closed.
        """
        if self._fd < 0:
            raise TapClosed(self.name)
        return self._fd

    # --- receive ----------------------------------------------------------
    def recv_into(self, buffer):
        """Read one frame into ``buffer``, blocking only this greenlet.

        Args:
            buffer: a writable bytes-like object (of bytes) of at least
                :attr:`max_frame_size` bytes (a shorter one could truncate
                a frame, so it is refused).

        Returns:
            The frame's length in bytes.

        Raises:
            ValueError: ``buffer`` is shorter than :attr:`max_frame_size`.
            TapClosed: the device was closed, before or during the wait.
            TapVanished: the interface was deleted.
            TapIOError: another read error.
        """
        if len(buffer) < self.max_frame_size:
            raise ValueError(
                f"recv_into needs a buffer of at least {self.max_frame_size} bytes "
                "(the largest frame this device can return)"
            )
        return self._recv_into((buffer,))

    def _recv_into(self, buffers):
        readv = os.readv
        while True:
            fd = self._fd
            if fd < 0:
                raise TapClosed(self.name)
            try:
                n = readv(fd, buffers)
            except BlockingIOError:
                self._batch = 0
                # Raises TapClosed here if close() runs while we wait.
                self._hub.wait(self._read_watcher)
                continue
            except OSError as exc:
                if self._fd < 0:
                    raise TapClosed(self.name) from exc
                raise io_error(self.name, exc, "read") from exc
            if not n:
                raise TapVanished(self.name, _EOF)
            counters = self.counters
            counters.rx_packets += 1
            counters.rx_bytes += n
            self._batch += 1
            if self._batch >= self._budget:
                self._batch = 0
                gevent.sleep(0)
            return n

    def recv(self):
        """Read exactly one frame, blocking only this greenlet.

        Returns:
            The frame as bytes (with any vnet header / packet info in front).

        Raises:
            TapClosed, TapVanished, TapIOError: as :meth:`recv_into`.
        """
        view = self._view
        n = self._recv_into((view,))
        return bytes(view[:n])

    def __iter__(self):
        """Yield frames as bytes until the device is closed."""
        while True:
            try:
                frame = self.recv()
            except TapClosed:
                return
            yield frame

    # --- send -------------------------------------------------------------
    def send(self, frame):
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
            TapClosed, TapVanished, TapIOError: the device is unusable.
        """
        fd = self._fd
        if fd < 0:
            raise TapClosed(self.name)
        counters = self.counters
        size = len(frame)
        if size < self._min_frame:
            counters.tx_errors += 1
            raise FrameRejected(
                self.name, f"frame of {size} bytes is shorter than {self._min_frame} (a runt)"
            )
        try:
            os.write(fd, frame)
        except OSError as exc:
            code = exc.errno
            if code in _BACKPRESSURE:
                counters.tx_dropped += 1
                return False
            if code == errno.EIO:
                counters.tx_link_down += 1
                return False
            error = TapClosed(self.name) if self._fd < 0 else io_error(self.name, exc, "write")
            if not isinstance(error, TapClosed):
                counters.tx_errors += 1  # a closed device is counted by whoever sent to it
            raise error from exc
        counters.tx_packets += 1
        counters.tx_bytes += size
        return True

    # --- relay --------------------------------------------------------------
    def relay_to(self, dst, on_send_error, mirrors=()):
        """Forward every frame read from this device to ``dst`` until this one closes.

        The wire's hot path: per frame one ``read`` and one ``write``, nothing
        else, in batches of at most ``budget`` frames; between batches it
        yields to the hub, and it waits on the read watcher only when the
        device has nothing more to read.  Counters are published after every
        batch.  Without mirrors the batch runs in C (``greentap._relay``)
        when it was built; otherwise in Python, where ``os.read`` into a
        fresh bytes object measured faster than ``readv`` into a reused
        buffer.  Reads are sized for the largest frame either way.

        Args:
            dst: the :class:`PolledTap` to write to.  Writes never block: a
                frame ``dst`` cannot take is dropped and counted on ``dst``.
            on_send_error: called with the :class:`TapError` when a write to
                ``dst`` fails for good (not backpressure, not link down); the
                relay keeps reading, counting frames for a closed ``dst`` in
                its ``tx_errors``.
            mirrors: callables given every frame read (e.g. a pcap port's
                ``send``); they must not block or raise.

        Raises:
            TapClosed: this device was closed (the normal end).
            TapVanished, TapIOError: this device failed.
        """
        if _relay_batch is not None and not mirrors:
            self._relay_c(dst, on_send_error)
        else:
            self._relay_python(dst, on_send_error, mirrors)

    def _relay_c(self, dst, on_send_error):
        batch = _relay_batch
        buf = bytearray(self.max_frame_size)
        budget = self._budget
        rx_c, tx_c = self.counters, dst.counters
        hub_wait, watcher = self._hub.wait, self._read_watcher
        while True:
            fd = self._fd  # re-read after every yield: either side may close then
            if fd < 0:
                raise TapClosed(self.name)
            end, code, *counts = batch(fd, dst._fd, buf, budget)
            _publish(rx_c, tx_c, *counts)
            if end == _WAIT:
                hub_wait(watcher)  # raises TapClosed if close() runs meanwhile
            elif end == _BUDGET:
                gevent.sleep(0)  # the budget is spent: let the hub run
            elif end == _WRITE_ERROR:
                error = io_error(dst.name, OSError(code, os.strerror(code)), "write")
                if not isinstance(error, TapClosed):
                    tx_c.tx_errors += 1  # TapClosed is counted by on_send_error
                on_send_error(error)
            elif end == _EOF_END:
                raise TapVanished(self.name, _EOF)
            else:
                if self._fd < 0:
                    raise TapClosed(self.name)
                raise io_error(self.name, OSError(code, os.strerror(code)), "read")

    def _relay_python(self, dst, on_send_error, mirrors):
        read, write = os.read, os.write
        size = self.max_frame_size
        budget = self._budget
        rx_c, tx_c = self.counters, dst.counters
        hub_wait, watcher = self._hub.wait, self._read_watcher
        while True:
            fd, out = self._fd, dst._fd  # re-read after every yield: either may close then
            if fd < 0:
                raise TapClosed(self.name)
            rx = rx_bytes = tx = tx_bytes = dropped = link_down = errors = 0
            wait = False
            try:
                for _ in range(budget):
                    try:
                        frame = read(fd, size)
                    except BlockingIOError:
                        wait = True
                        break
                    n = len(frame)
                    if not n:
                        raise TapVanished(self.name, _EOF)
                    rx += 1
                    rx_bytes += n
                    if mirrors:
                        for mirror in mirrors:
                            mirror(frame)
                    if out < 0:
                        errors += 1
                        continue
                    try:
                        write(out, frame)
                    except OSError as exc:
                        code = exc.errno
                        if code in _BACKPRESSURE:
                            dropped += 1
                        elif code == errno.EIO:
                            link_down += 1
                        elif code == errno.EINVAL:
                            errors += 1  # this frame was refused; the next may pass
                        else:
                            out = -1  # the rest of this batch counts as errors below
                            error = io_error(dst.name, exc, "write")
                            if not isinstance(error, TapClosed):
                                errors += 1  # TapClosed is counted by on_send_error
                            on_send_error(error)
                        continue
                    tx += 1
                    tx_bytes += n
            except OSError as exc:
                if isinstance(exc, TapVanished):
                    raise
                if self._fd < 0:
                    raise TapClosed(self.name) from exc
                raise io_error(self.name, exc, "read") from exc
            finally:
                _publish(rx_c, tx_c, rx, rx_bytes, tx, tx_bytes, dropped, link_down, errors)
            if wait:
                hub_wait(watcher)  # raises TapClosed if close() runs meanwhile
            else:
                gevent.sleep(0)  # the budget is spent: let the hub run

    # --- lifetime ---------------------------------------------------------
    def _release(self, reason, then, *args):
        """Forget the fd now; wake a blocked reader with TapClosed; then call ``then``."""
        self._fd = -1
        watcher, self._read_watcher = self._read_watcher, None
        # gevent's own recipe for sockets: throw into the waiter first, close
        # the watcher, and only then run `then` (which may close the fd), so the
        # loop never holds a watcher on a closed (or reused) fd number.
        self._hub.cancel_waits_close_and_then([watcher], TapClosed(self.name, reason), then, *args)

    def close(self):
        """Close the device; a greenlet blocked in :meth:`recv` gets :class:`TapClosed`.

        Idempotent: the fd is closed exactly once.
        """
        if self._fd < 0:
            return
        self._release("device was closed", self._tap.close)

    def reattach(self, tap):
        """Drive a new device in place of the one closed, keeping this object and its counters.

        For an interface that vanished and came back: whoever holds this
        PolledTap (a relay writing to it) carries on with the new device.

        Args:
            tap: the new :class:`~greentap.device.Tap`, with the same frame
                layout (mode, vnet header); this PolledTap takes it over.

        Raises:
            ValueError: this PolledTap is still open, or the layouts differ.
        """
        if self._fd >= 0:
            raise ValueError(f"{self.name}: reattach needs a closed PolledTap")
        if tap.max_frame_size != self.max_frame_size or tap.min_frame_size != self._min_frame:
            raise ValueError(f"{tap.name}: frame layout differs from the device it replaces")
        fd = tap.fileno()
        self._read_watcher = self._hub.loop.io(fd, 1)
        os.set_blocking(fd, False)
        self._tap = tap
        self.name = tap.name
        self._batch = 0
        self._fd = fd

    def into_inner(self):
        """Detach from the hub and give back the blocking :class:`~greentap.device.Tap`.

        A greenlet blocked in :meth:`recv` gets :class:`TapClosed`.  The fd is
        put back in blocking mode.

        Returns:
            The :class:`~greentap.device.Tap`.

        Raises:
            TapClosed: already closed or detached.
        """
        fd = self.fileno()
        self._release("device was detached from the hub", _noop)
        os.set_blocking(fd, True)
        return self._tap

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _noop():
    pass


def _publish(rx_c, tx_c, rx, rx_bytes, tx, tx_bytes, dropped, link_down, errors):
    """Add one relay batch's counts to the source's and destination's counters."""
    rx_c.rx_packets += rx
    rx_c.rx_bytes += rx_bytes
    tx_c.tx_packets += tx
    tx_c.tx_bytes += tx_bytes
    tx_c.tx_dropped += dropped
    tx_c.tx_link_down += link_down
    tx_c.tx_errors += errors

"""Stream ports: frames over a unix or TCP stream socket, each behind its length (QEMU's framing).

QEMU's ``-netdev stream`` and ``-netdev socket``, and passt, carry Ethernet
frames on a stream socket, each behind a 4-byte big-endian length
(:mod:`greentap.core.streamframe`).  A :class:`StreamConnection` is one
connected socket as a port; a :class:`~greentap.ports.client.StreamClient`
(``unix:PATH``, ``tcp://HOST:PORT``) connects to a listening peer and
connects again, with backoff, whenever the peer goes away.  Listening
endpoints (``?listen``) are :mod:`~greentap.ports.listener`.

Reading: one large ``recv_into`` (256 KiB) fetches many frames at once; the
lengths are parsed out of it in one call (in C where it was built), and
``recv_into`` hands the frames out one by one.  A length over the largest
frame (QEMU's own limit) or end of file ends the connection: nothing after a
bad length can be trusted to be a frame boundary.  A frame shorter than an
Ethernet header is skipped and counted (``rx_runt``).

Writing never waits: :meth:`StreamConnection.send` appends the length and
the frame to the connection's send buffer and, once per turn of the hub,
everything queued leaves in one ``send``; what the socket does not take
waits for it to be writable.  The buffer is bounded (1 MiB by default): a
frame that does not fit is dropped and counted (``tx_backpressure``), as a
NIC drops what its ring cannot hold, so a peer that stops reading stalls
nothing else.  A failed send (the peer reset the connection) closes it.
"""

from __future__ import annotations

import _socket  # never monkey-patched: greentap does its own waiting
import collections
import errno
import mmap
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from greentap.core import kernel_constants as kc
from greentap.core.counters import DeviceCounters
from greentap.core.streamframe import HEADER_SIZE, MAX_FRAME, frame_header, split_frames
from greentap.device.fd import FdHolder
from greentap.errors import (
    EndpointClosed,
    GreentapError,
    PeerBrokeFraming,
    PeerGone,
    io_error,
)
from greentap.green import relay, streams
from greentap.green.fdio import DEFAULT_BUDGET, GreenFd
from greentap.ports.base import Port

__all__ = ["DEFAULT_SEND_BUFFER", "StreamConnection"]

#: Bytes a connection queues beyond what its socket holds before it drops frames.
DEFAULT_SEND_BUFFER = 1 << 20
_READ_SIZE = 256 * 1024
_SOCKET_BUFFER = 1 << 20
_recv_into = _socket.socket.recv_into
_GONE = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                   errno.ENETUNREACH, errno.ECONNABORTED})  # fmt: skip


class StreamConnection(Port):
    """One connected stream socket carrying QEMU's framing, as a port.

    Args:
        sock: the connected socket; the port owns it.
        name: what logs and counters call it.
        kind: ``"unix"`` or ``"tcp"``.
        hub: the gevent hub.
        budget: frames handed out back to back before yielding to the hub.
        counters, drops: shared with the port that made the connection (a
            :class:`StreamClient` counts across its connections), or None
            for the connection's own.
        send_buffer: bytes queued beyond the socket's own buffer.
        peer: the peer's address, for logs.

    Attributes:
        closed_because: why the connection ended, once it did.
        origin: the listener that accepted it (its removal removes this), or None.
        departed: called once with the port when it closes (a listener
            counts its connections this way).
    """

    transient = True

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        *,
        kind: str,
        hub: Any = None,
        budget: int = DEFAULT_BUDGET,
        counters: DeviceCounters | None = None,
        drops: collections.Counter[str] | None = None,
        send_buffer: int = DEFAULT_SEND_BUFFER,
        peer: str | None = None,
    ) -> None:
        self.name, self.kind, self.peer = name, kind, peer
        self.counters = counters if counters is not None else DeviceCounters()
        self.drops: collections.Counter[str] = drops if drops is not None else collections.Counter()
        self.max_frame_size = MAX_FRAME
        self.send_buffer = send_buffer
        self.closed_because: str | None = None
        self.ended = "closed"  # how, for a listener's count: peer_closed, peer_reset, ...
        self.departed: Any = None
        self.origin: Any = None  # the listener that accepted it, if any
        _tune(sock)
        self._io = GreenFd(FdHolder(sock, name=name), hub=hub, budget=budget)
        self._hub = self._io.hub
        # Room for a whole read after a partial frame of the largest size.  An
        # anonymous mapping: pages cost memory only once written, and all of it
        # goes back to the system when the connection goes (a heap block of
        # this size may not, after many connections came and went).
        self._rbuf = mmap.mmap(-1, _READ_SIZE + MAX_FRAME + HEADER_SIZE)
        self._rview = memoryview(self._rbuf)
        self._start = self._end = 0  # bytes read but not yet split into frames
        self._frames: list[int] = []  # [offset, length, ...] split, not yet handed out
        self._next = 0
        self._broken = 0  # a length over the limit seen: end once the frames before it are out
        self._pending = bytearray()
        self._flushing = False
        self._writer = self._hub.loop.io(sock.fileno(), 2)
        self.sink = self  # a TAP's relay gathers its frames for us (relay_from)

    closed = property(lambda self: self._io.closed, doc="True once the connection was closed.")

    def describe(self) -> dict[str, Any]:
        """Return a dict describing the port for logs."""
        return {**super().describe(), **({"peer": self.peer} if self.peer else {})}

    # --- reading ------------------------------------------------------------
    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Copy the next frame into ``buffer`` and return its length, blocking this greenlet.

        Raises:
            EndpointClosed: the port was closed (here, or because a send failed).
            PeerGone: the peer closed or reset the connection.
            PeerBrokeFraming: the peer announced a frame over the largest.
            EndpointIOError: the read failed otherwise.
        """
        io = self._io
        io.before_read()
        frames = self._frames
        at = self._next
        while at >= len(frames):
            self._fill()
            frames, at = self._frames, 0
        off, n = frames[at], frames[at + 1]
        self._next = at + 2
        buffer[:n] = self._rview[off : off + n]
        counters = self.counters
        counters.rx_packets += 1
        counters.rx_bytes += n
        io.count()
        return n

    def _read_more(self) -> None:
        """Read what the socket has, waiting if nothing, after the bytes not used yet.

        Raises:
            EndpointClosed, PeerGone, PeerBrokeFraming, EndpointIOError: as recv_into.
        """
        if self._broken:
            self._break(self._broken)
        start, end, buf = self._start, self._end, self._rbuf
        if start:
            # Move the partial frame to the front: the read below always has
            # room for a whole frame of the largest size after it.
            buf.move(0, start, end - start)  # memmove: the two may overlap
            self._start, self._end = 0, end - start
        try:
            n = self._io.read(_recv_into, self._rview[self._end :])
        except EndpointClosed as exc:
            if self.closed_because:
                raise EndpointClosed(self.closed_because, endpoint=self.name) from exc
            raise
        except OSError as exc:
            if exc.errno in _GONE:
                self._close(f"the peer is gone: {exc.strerror}", "peer_reset")
                raise PeerGone(f"the peer is gone: {exc.strerror}", endpoint=self.name) from exc
            raise io_error(self.name, exc, "read") from exc
        if n == 0:
            self._close("the peer closed the connection", "peer_closed")
            raise PeerGone("the peer closed the connection", endpoint=self.name)
        self._end += n

    def _split(self) -> tuple[list[int], int]:
        """Read more and split it: the frames' ``[offset, length, ...]``, and a length
        over the largest that ends them (0 if none)."""
        self._read_more()
        start, end = self._start, self._end
        frames, at, runts, too_long = split_frames(self._rbuf, start, end, MAX_FRAME)
        if runts:
            self._runts(runts)
        self._start, self._end = (0, 0) if at == end else (at, end)
        return frames, too_long

    def _ends_after(self, too_long: int, frames: int) -> None:
        """A length over the largest came after ``frames`` frames: end once they are out."""
        self._broken = too_long
        if not frames:
            self._break(too_long)

    def _fill(self) -> None:
        """Read more and split it into frames."""
        frames, too_long = self._split()
        self._frames, self._next = frames, 0
        if too_long:
            self._ends_after(too_long, len(frames))

    def _runts(self, count: int) -> None:
        self.drops["rx_runt"] += count
        self.counters.rx_errors += count

    def _break(self, length: int) -> None:
        self.drops["rx_bad_length"] += 1
        self.counters.rx_errors += 1
        why = f"the peer announced a frame of {length} bytes; the largest is {MAX_FRAME}"
        self._close(why, "broken_framing")
        raise PeerBrokeFraming(why, endpoint=self.name)

    def relay_to(
        self, sink: Any, on_send_error: Callable[[GreentapError], Any], mirrors: Sequence[Any]
    ) -> bool:
        """Write every frame read to ``sink`` (a TAP) in batches, in C where it was built.

        Returns:
            False at once with mirrors, or for a sink that does not take a frame
            per write (another stream, a tunnel): the generic loop serves them.
            Otherwise it returns only by raising, as :meth:`recv_into` does.
        """
        if mirrors or not relay.takes_frames(sink):
            return False
        _stream_to_sink(self, sink, on_send_error)
        return True  # pragma: no cover - it only ends by raising

    def relay_from(self, src: Any, on_send_error: Callable[[GreentapError], Any]) -> None:
        """The relay of a TAP to this port: its frames gathered in batches."""
        streams.tap_to_stream(src, self, on_send_error)

    # --- writing ------------------------------------------------------------
    def room(self) -> int:
        """Bytes the send buffer can still take."""
        return 0 if self._io.closed else self.send_buffer - len(self._pending)

    def send_gathered(self, data: memoryview, frames: int, nbytes: int, dropped: int) -> None:
        """Send ``frames`` frames already behind their lengths (``data``; ``nbytes``
        without the lengths), as send() would; count ``dropped`` that did not fit."""
        counters = self.counters
        if self._io.closed:
            counters.tx_errors += frames + dropped
            return
        if dropped:
            self.drops["tx_backpressure"] += dropped
            counters.tx_dropped += dropped
        counters.tx_packets += frames
        counters.tx_bytes += nbytes
        if not frames:
            return
        pending = self._pending
        if pending or self._flushing:
            pending += data  # behind what waits: order kept
            self._soon()
            return
        sock: Any = self._io.holder.handle
        try:
            sent = sock.send(data)  # nothing waits: straight out, no copy
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._close(f"a send failed: {exc.strerror}", "send_failed")
            return
        if sent < len(data):
            pending += data[sent:]
            self._flushing = True
            self._writer.start(self._flush)

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """Queue one frame behind its length; it leaves at the hub's next turn.

        Returns:
            False if the frame was dropped: over the largest frame
            (``tx_too_big``), the send buffer full (``tx_backpressure``) or
            the connection closed.
        """
        n = len(frame)
        counters = self.counters
        if n > MAX_FRAME:
            self.drops["tx_too_big"] += 1
            counters.tx_errors += 1
            return False
        pending = self._pending
        if self._io.closed:
            counters.tx_errors += 1
            return False
        if len(pending) + HEADER_SIZE + n > self.send_buffer:
            self.drops["tx_backpressure"] += 1
            counters.tx_dropped += 1
            return False
        pending += frame_header(n)
        pending += frame
        counters.tx_packets += 1
        counters.tx_bytes += n
        self._soon()
        return True

    def _soon(self) -> None:
        """Send what is queued at the hub's next turn (once, however many frames came)."""
        if not self._flushing:
            self._flushing = True
            self._hub.loop.run_callback(self._flush)

    def _flush(self) -> None:
        """Send what is queued (in the hub: never waits, never raises)."""
        pending = self._pending
        sock: Any = self._io.holder.handle
        if sock is None or not pending:
            self._flushing = False
            return
        try:
            sent = sock.send(pending)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._flushing = False
            self._close(f"a send failed: {exc.strerror}", "send_failed")
            return
        del pending[:sent]
        if pending:
            # The rest waits until the socket is writable: the watcher calls
            # this again then (it stays `_flushing` meanwhile).
            if not self._writer.active:
                self._writer.start(self._flush)
            return
        self._flushing = False
        if self._writer.active:
            self._writer.stop()

    queued = property(lambda self: len(self._pending), doc="Bytes waiting in the send buffer.")

    def _close(self, why: str, kind: str) -> None:
        if self.closed_because is None:
            self.closed_because, self.ended = why, kind
        self.close()

    def close(self) -> None:
        """Close the connection; harmless if already closed.  A reader gets EndpointClosed."""
        if self._io.closed:
            return
        self.closed_because = self.closed_because or "endpoint was closed"
        if self._pending:  # what the peer will never get
            self.drops["tx_unsent_at_close"] += 1
        self._pending.clear()
        self._frames, self._next = [], 0  # a closed port hands out nothing more
        self._writer.close()  # stops it too
        self._io.close(self.closed_because)
        departed, self.departed = self.departed, None
        if departed is not None:
            departed(self)


def _stream_to_sink(conn: StreamConnection, sink: Any, on_send_error: Callable[..., Any]) -> None:
    """The loop of :meth:`StreamConnection.relay_to`: every whole frame of each read
    written to ``sink`` (``write_stream_frames``), then the next read."""
    write, io = streams.write_stream_frames, conn._io
    counters, rview = conn.counters, conn._rview
    pending = [rview[o : o + n] for o, n in zip(conn._frames[conn._next :: 2],
                                                  conn._frames[conn._next + 1 :: 2],
                                                  strict=True)]  # fmt: skip
    conn._frames, conn._next = [], 0
    if pending:  # split by recv_into before this relay took over
        counters.rx_packets += len(pending)
        counters.rx_bytes += sum(len(f) for f in pending)
        relay.write_all(pending, sink, on_send_error)
    while True:
        if conn._end - conn._start >= HEADER_SIZE:
            end, code, at, rx, rx_bytes, *counts, runts, too_long = write(
                sink.io.holder.fd, conn._rbuf, conn._start, conn._end, MAX_FRAME
            )
            conn._start = at
            relay.publish(counters, sink.counters, rx, rx_bytes, *counts)
            if runts:
                conn._runts(runts)
            io.count(rx // io.budget)
            if end == streams.WRITE_ERROR:
                relay.write_failed(sink, OSError(code, os.strerror(code)), on_send_error)
                continue
            if too_long:
                conn._break(too_long)
        conn._read_more()


def _tune(sock: socket.socket) -> None:
    """A unix socket gets 1 MiB buffers each way (beyond the sysctl maxima where
    allowed): the kernel's defaults (208 KiB) cost a stream 35% of its TCP
    throughput here (3.4 against 5.2 Gbit/s between two tap-forwards).  A TCP
    socket sizes its buffers itself (autotuning) and gets TCP_NODELAY: frames
    are batched here, once per turn of the hub, and Nagle would only hold a
    lone frame (a ping) back."""
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return
    for force, plain in ((kc.SO_SNDBUFFORCE, socket.SO_SNDBUF),
                         (kc.SO_RCVBUFFORCE, socket.SO_RCVBUF)):  # fmt: skip
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, _SOCKET_BUFFER)
        except OSError:  # no CAP_NET_ADMIN (after --user): as far as the sysctl allows
            sock.setsockopt(socket.SOL_SOCKET, plain, _SOCKET_BUFFER)

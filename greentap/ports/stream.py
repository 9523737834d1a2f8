"""Stream ports: frames over a unix or TCP stream socket, each behind its length (QEMU's framing).

QEMU's ``-netdev stream`` and ``-netdev socket``, and passt, carry Ethernet
frames on a stream socket, each behind a 4-byte big-endian length
(:mod:`greentap.core.streamframe`).  A :class:`StreamConnection` is one
connected socket as a port; a :class:`StreamClient` (``unix:PATH``,
``tcp://HOST:PORT``) connects to a listening peer and connects again,
with backoff, whenever the peer goes away.  Listening endpoints
(``?listen``) are :mod:`~greentap.ports.listener`.

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
from typing import Any

import gevent
import gevent.event

from greentap.core.counters import DeviceCounters
from greentap.core.streamframe import HEADER_SIZE, MAX_FRAME, frame_header, split_frames
from greentap.device.fd import FdHolder
from greentap.errors import (
    EndpointClosed,
    EndpointUnavailable,
    GreentapError,
    PeerBrokeFraming,
    PeerGone,
    io_error,
)
from greentap.green.fdio import DEFAULT_BUDGET, GreenFd
from greentap.ports.base import Port

__all__ = ["DEFAULT_SEND_BUFFER", "StreamClient", "StreamConnection", "connect_address"]

#: Bytes a connection queues beyond what its socket holds before it drops frames.
DEFAULT_SEND_BUFFER = 1 << 20
_READ_SIZE = 256 * 1024
#: Reconnection delays (seconds): the first, and the most it doubles to.
BACKOFF = (0.1, 5.0)
_CONNECT_TIMEOUT = 10.0
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
        self.departed: Any = None
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Frames are batched here, once per turn of the hub: Nagle would
            # only hold a lone frame (a ping) back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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

    @property
    def closed(self) -> bool:
        """True once the connection was closed."""
        return self._io.closed

    @property
    def io(self) -> GreenFd:
        """The :class:`~greentap.green.fdio.GreenFd` the socket is read through."""
        return self._io

    def describe(self) -> dict[str, Any]:
        """Return a dict describing the port for logs."""
        info = super().describe()
        if self.peer is not None:
            info["peer"] = self.peer
        return info

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

    def _fill(self) -> None:
        """Read what the socket has (waiting if nothing) and split it into frames."""
        if self._broken:
            self._break(self._broken)
        start, end, buf = self._start, self._end, self._rbuf
        if start:
            # Move the partial frame to the front: the read below always has
            # room for a whole frame of the largest size after it.
            buf[: end - start] = self._rview[start:end]
            start, end = 0, end - start
            self._start, self._end = start, end
        try:
            n = self._io.read(_recv_into, self._rview[end:])
        except EndpointClosed as exc:
            if self.closed_because:
                raise EndpointClosed(self.closed_because, endpoint=self.name) from exc
            raise
        except OSError as exc:
            if exc.errno in _GONE:
                self._close(f"the peer is gone: {exc.strerror}")
                raise PeerGone(f"the peer is gone: {exc.strerror}", endpoint=self.name) from exc
            raise io_error(self.name, exc, "read") from exc
        if n == 0:
            self._close("the peer closed the connection")
            raise PeerGone("the peer closed the connection", endpoint=self.name)
        end += n
        frames, at, runts, too_long = split_frames(buf, start, end, MAX_FRAME)
        if runts:
            self.drops["rx_runt"] += runts
            self.counters.rx_errors += runts
        self._frames, self._next = frames, 0
        self._start, self._end = at, end
        if at == end:
            self._start = self._end = 0
        if too_long:
            self._broken = too_long
            if not frames:
                self._break(too_long)

    def _break(self, length: int) -> None:
        self.drops["rx_bad_length"] += 1
        self.counters.rx_errors += 1
        why = f"the peer announced a frame of {length} bytes; the largest is {MAX_FRAME}"
        self._close(why)
        raise PeerBrokeFraming(why, endpoint=self.name)

    # --- writing ------------------------------------------------------------
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
        if not self._flushing:
            self._flushing = True
            self._hub.loop.run_callback(self._flush)
        return True

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
            self._close(f"a send failed: {exc.strerror}")
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

    @property
    def queued(self) -> int:
        """Bytes waiting in the send buffer."""
        return len(self._pending)

    # --- lifetime -----------------------------------------------------------
    def _close(self, why: str) -> None:
        if self.closed_because is None:
            self.closed_because = why
        self.close()

    def close(self) -> None:
        """Close the connection; harmless if already closed.  A reader gets EndpointClosed."""
        if self._io.closed:
            return
        if self.closed_because is None:
            self.closed_because = "endpoint was closed"
        self.drops["tx_unsent_at_close"] += len(self._pending) and 1
        self._pending.clear()
        self._writer.stop()
        self._writer.close()
        self._io.close(self.closed_because)
        departed, self.departed = self.departed, None
        if departed is not None:
            departed(self)


def connect_address(kind: str, target: Any, *, endpoint: str) -> tuple[int, Any]:
    """The socket family and address a stream endpoint connects to or listens on.

    Args:
        kind: ``"unix"`` (``target`` a path) or ``"tcp"`` (``(host, port)``).
        target: as above.
        endpoint: for errors.

    Raises:
        EndpointUnavailable: the host name does not resolve.
    """
    if kind == "unix":
        return socket.AF_UNIX, target
    host, port = target
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise EndpointUnavailable(f"cannot resolve {host!r}: {why}", endpoint=endpoint) from exc
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr[:2]


class StreamClient(Port):
    """``unix:PATH`` or ``tcp://HOST:PORT``: connect to a listening peer, and again when it goes.

    The first attempt is made when the port is first read (by the forwarder's
    pump), then after every disconnection, with a delay doubling from 0.1 to
    5 s while attempts fail.  Each change is reported once through
    :attr:`notify` (``peer_connected``, ``peer_disconnected``,
    ``peer_unreachable``) and counted (:meth:`describe`: ``connects``,
    ``disconnects``, ``connect_failures``).  Frames sent while no
    connection is up are dropped as for a link that is down
    (``tx_link_down``).

    Args:
        name: what logs and counters call it.
        kind: ``"unix"`` or ``"tcp"``.
        target: the socket path, or ``(host, port)``.
        hub: the gevent hub.
        send_buffer: see :class:`StreamConnection`.

    Raises:
        EndpointUnavailable: a TCP host name that does not resolve.
    """

    def __init__(
        self,
        name: str,
        *,
        kind: str,
        target: Any,
        hub: Any = None,
        send_buffer: int = DEFAULT_SEND_BUFFER,
    ) -> None:
        self.name, self.kind = name, kind
        self.family, self.address = connect_address(kind, target, endpoint=name)
        self.counters = DeviceCounters()
        self.drops: collections.Counter[str] = collections.Counter()
        self.max_frame_size = MAX_FRAME
        self.send_buffer = send_buffer
        self._hub = hub if hub is not None else gevent.get_hub()
        self._conn: StreamConnection | None = None
        self._closed = False
        self._stopping = gevent.event.Event()
        self._connecting: Any = None  # the write watcher of a connect in progress
        self._last_failure: str | None = None
        self.events: collections.Counter[str] = collections.Counter()

    @property
    def connected(self) -> bool:
        """True while a connection is up."""
        return self._conn is not None and not self._conn.closed

    def describe(self) -> dict[str, Any]:
        """Return a dict describing the port for logs."""
        peer = self.address if self.kind == "unix" else "{}:{}".format(*self.address)
        return {
            **super().describe(),
            "peer": peer,
            "connected": self.connected,
            **{k: self.events[k] for k in ("connects", "disconnects", "connect_failures")},
        }

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Read the next frame, connecting (again) first if needed.

        Raises:
            EndpointClosed: the port was closed (the only way it ends).
        """
        while True:
            conn = self._conn
            if conn is None:
                conn = self._connect()
            try:
                return conn.recv_into(buffer)
            except EndpointClosed:
                if self._closed:
                    raise
                why = conn.closed_because or "the connection was closed"
            except GreentapError as exc:  # PeerGone, PeerBrokeFraming, an I/O error
                if self._closed:
                    raise EndpointClosed(endpoint=self.name) from exc
                why = exc.reason
            self._lost(conn, why)

    def _lost(self, conn: StreamConnection, why: str) -> None:
        conn.close()
        self._conn = None
        self.events["disconnects"] += 1
        self.notify("peer_disconnected", error=why)

    def _connect(self) -> StreamConnection:
        """Connect, waiting with backoff until it works.

        Raises:
            EndpointClosed: the port was closed meanwhile.
        """
        delay = BACKOFF[0]
        while True:
            if self._closed:
                raise EndpointClosed(endpoint=self.name)
            try:
                sock = self._attempt()
            except OSError as exc:
                why = exc.strerror or str(exc)
                self.events["connect_failures"] += 1
                if why != self._last_failure:
                    self._last_failure = why
                    self.notify("peer_unreachable", error=why, retry_in=delay)
                if self._stopping.wait(delay):
                    raise EndpointClosed(endpoint=self.name) from None
                delay = min(delay * 2, BACKOFF[1])
                continue
            self._last_failure = None
            self._conn = StreamConnection(
                sock, self.name, kind=self.kind, hub=self._hub, counters=self.counters,
                drops=self.drops, send_buffer=self.send_buffer,
            )  # fmt: skip
            self.events["connects"] += 1
            self.notify("peer_connected", level="info", peer=self.describe()["peer"])
            return self._conn

    def _attempt(self) -> socket.socket:
        """One non-blocking connect, waited for on the hub.

        Raises:
            OSError: it failed (refused, no such socket, timed out, ...).
        """
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(self.address)
            if code in (errno.EINPROGRESS, errno.EAGAIN):
                watcher = self._connecting = self._hub.loop.io(sock.fileno(), 2)
                try:
                    with gevent.Timeout(_CONNECT_TIMEOUT, OSError(errno.ETIMEDOUT, "timed out")):
                        self._hub.wait(watcher)
                finally:
                    self._connecting = None
                    watcher.close()
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
        except BaseException:
            sock.close()
            raise
        return sock

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """Queue one frame on the connection; dropped (``tx_link_down``) while there is none."""
        conn = self._conn
        if conn is None or conn.closed:
            self.counters.tx_link_down += 1
            return False
        return conn.send(frame)

    def close(self) -> None:
        """Close the port and its connection; a reader or a connect in progress ends."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        watcher = self._connecting
        if watcher is not None:
            self._hub.cancel_wait(watcher, EndpointClosed(endpoint=self.name))
        if self._conn is not None:
            self._conn.close()

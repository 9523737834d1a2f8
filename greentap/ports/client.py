"""``unix:PATH`` and ``tcp://HOST:PORT``: connect to a listening peer, and again when it goes.

A :class:`StreamClient` holds one :class:`~greentap.ports.stream.StreamConnection`
at a time: the first is made when the forwarder first reads the port, the
next after every disconnection, with a delay doubling from 0.1 to 5 s while
attempts fail.  Each change is reported once (``peer_connected``,
``peer_disconnected``, ``peer_unreachable``) and counted.
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.event

from greentap.core.counters import DeviceCounters
from greentap.core.streamframe import MAX_FRAME
from greentap.errors import EndpointClosed, GreentapError
from greentap.green import relay, streams
from greentap.ports.base import Port
from greentap.ports.datagram import resolve
from greentap.ports.stream import DEFAULT_SEND_BUFFER, StreamConnection
from greentap.ports.superstream import SuperStream

__all__ = ["BACKOFF", "StreamClient", "connect_address"]

#: Reconnection delays (seconds): the first, and the most it doubles to.
BACKOFF = (0.1, 5.0)
_CONNECT_TIMEOUT = 10.0
_STABLE = 1.0  # seconds a connection must last for the next to be tried at once


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
    return resolve(host, port, endpoint=endpoint, socktype=socket.SOCK_STREAM)


class StreamClient(Port):
    """``unix:PATH`` or ``tcp://HOST:PORT``: connect to a listening peer, and again when it goes.

    The first attempt is made when the port is first read (by the forwarder's
    pump), then after every disconnection: at once after a connection that
    lasted, otherwise (attempts failing, or connections dropped at once, as
    by a listener at its max=) with a delay doubling from 0.1 to 5 s.  Each
    change is reported once through :attr:`notify` (``peer_connected``,
    ``peer_disconnected``, ``peer_unreachable``) and counted
    (:meth:`describe`: ``connects``, ``disconnects``, ``connect_failures``).  Frames sent while no
    connection is up are dropped as for a link that is down
    (``tx_link_down``).

    Args:
        name: what logs and counters call it.
        kind: ``"unix"`` or ``"tcp"``.
        target: the socket path, or ``(host, port)``.
        hub: the gevent hub.
        send_buffer: see :class:`StreamConnection`.
        offload: carry super-frames behind a vnet header
            (:class:`~greentap.ports.superstream.SuperStream`), for TAPs with offloads.

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
        offload: bool = False,
    ) -> None:
        self.name, self.kind = name, kind
        self._connection = SuperStream if offload else StreamConnection
        self.header_size = SuperStream.header_size if offload else 0
        self.family, self.address = connect_address(kind, target, endpoint=name)
        self.counters = DeviceCounters()
        self.drops: collections.Counter[str] = collections.Counter()
        self.max_frame_size = self.header_size + MAX_FRAME
        self.send_buffer = send_buffer
        self._hub = hub if hub is not None else gevent.get_hub()
        self._conn: StreamConnection | None = None
        self._closed = False
        self._stopping = gevent.event.Event()
        self._connecting: Any = None  # the write watcher of a connect in progress
        self._last_failure: str | None = None
        self._delay, self._hold, self._since = BACKOFF[0], False, 0.0
        self.events: collections.Counter[str] = collections.Counter()
        self.sink = self  # a TAP's relay gathers its frames for us (relay_from)

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
        return self._through(lambda conn: conn.recv_into(buffer))

    def relay_to(
        self, sink: Any, on_send_error: Callable[[GreentapError], Any], mirrors: Sequence[Any]
    ) -> bool:
        """The connection's relay to ``sink`` (:meth:`StreamConnection.relay_to`),
        connecting again whenever the peer goes; False at once with mirrors."""
        if mirrors or not relay.takes_frames(sink):
            return False  # the generic loop serves them
        return self._through(lambda conn: conn.relay_to(sink, on_send_error, mirrors))

    def _through(self, use: Callable[[StreamConnection], Any]) -> Any:
        """``use(connection)``, connecting first and again after each disconnection.

        Raises:
            EndpointClosed: the port was closed (the only way it ends).
        """
        while True:
            conn = self._conn
            if conn is None:
                conn = self._connect()
            try:
                return use(conn)
            except EndpointClosed:
                if self._closed:
                    raise
                why = conn.closed_because or "the connection was closed"
            except GreentapError as exc:  # PeerGone, PeerBrokeFraming, an I/O error
                if self._closed:
                    raise EndpointClosed(endpoint=self.name) from exc
                why = exc.reason
            self._lost(conn, why)

    def relay_from(self, src: Any, on_send_error: Callable[[GreentapError], Any]) -> None:
        """The relay of a TAP to this port, through whichever connection is up."""
        streams.tap_to_stream(src, self, on_send_error)

    def room(self) -> int:
        """Bytes the connection's send buffer can take; 0 while there is none."""
        conn = self._conn
        return 0 if conn is None else conn.room()

    def send_gathered(self, data: memoryview, frames: int, nbytes: int, dropped: int) -> None:
        """As :meth:`StreamConnection.send_gathered`; while no connection is up the
        frames are dropped as for a link that is down."""
        conn = self._conn
        if conn is None or conn.closed:
            self.counters.tx_link_down += frames + dropped
            return
        conn.send_gathered(data, frames, nbytes, dropped)

    def _lost(self, conn: StreamConnection, why: str) -> None:
        conn.close()
        self._conn = None
        self.events["disconnects"] += 1
        self.notify("peer_disconnected", error=why)
        if time.monotonic() - self._since < _STABLE:
            self._hold = True  # it did not last (a peer at its max=): back off first
        else:
            self._delay = BACKOFF[0]

    def _connect(self) -> StreamConnection:
        """Connect, waiting with backoff until it works.

        Raises:
            EndpointClosed: the port was closed meanwhile.
        """
        while True:
            if self._closed:
                raise EndpointClosed(endpoint=self.name)
            if self._hold:
                if self._stopping.wait(self._delay):
                    raise EndpointClosed(endpoint=self.name) from None
                self._delay = min(self._delay * 2, BACKOFF[1])
            self._hold = True  # a failure below waits before the next attempt
            try:
                sock = self._attempt()
            except OSError as exc:
                why = exc.strerror or str(exc)
                self.events["connect_failures"] += 1
                if why != self._last_failure:
                    self._last_failure = why
                    self.notify("peer_unreachable", error=why, retry_in=self._delay)
                continue
            self._hold, self._since = False, time.monotonic()
            self._last_failure = None
            self._conn = self._connection(
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
            # EAGAIN on a unix socket is a full listen queue, not a connect in
            # progress: a failure, retried after the backoff.
            if code == errno.EINPROGRESS or (code == errno.EAGAIN and self.kind != "unix"):
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

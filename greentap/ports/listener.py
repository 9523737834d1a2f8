"""Listening stream endpoints: ``unix:PATH?listen`` and ``tcp://ADDR:PORT?listen``.

A :class:`StreamListener` is a port that carries no frames itself: the
forwarder runs its :meth:`~StreamListener.accept` loop, and each accepted
connection (a :class:`~greentap.ports.stream.StreamConnection`, named after
the endpoint and a number: ``unix:/run/sw.sock#3``) joins the forwarder as a
port of its own and leaves it when it disconnects.

The unix socket file is created 0600 (``mode=`` and ``group=`` change that),
removed when the listener closes (only if it is still the file this listener
made), and a file left by a crash is replaced only when nothing listens on
it.  ``max=`` bounds the connections at once (64 by default): one over is
accepted and closed at once, counted (``refused``) and logged (at most once
a second, with how many since).

A listener's counters (``rx_packets``, ``tx_bytes``, ...) are the sums over
the connections that have left: a connection's counters move there when it
leaves, so the totals over every endpoint never go back.
"""

from __future__ import annotations

import _socket
import collections
import errno
import grp
import os
import socket
import stat
import time
from typing import Any

from greentap.core.counters import DeviceCounters
from greentap.core.endpoints import EndpointSpec
from greentap.core.ratelimit import TokenBucket
from greentap.device.fd import FdHolder
from greentap.errors import EndpointClosed, EndpointUnavailable, UsageError
from greentap.green.fdio import GreenFd
from greentap.ports.base import Port
from greentap.ports.client import StreamClient, connect_address
from greentap.ports.datagram import format_addr
from greentap.ports.registry import OpenOptions, register
from greentap.ports.stream import StreamConnection
from greentap.ports.superstream import SuperStream

__all__ = ["StreamListener", "bind_private", "clear_stale", "unlink_if_ours"]

_BACKLOG = 128
_REFUSAL_LOG_INTERVAL = 1.0
_accept = _socket.socket._accept  # type: ignore[attr-defined]


class StreamListener(Port):
    """A listening stream socket whose connections join the forwarder as ports.

    Args:
        spec: the parsed ``unix:`` or ``tcp://`` endpoint with ``listen``.
        hub: the gevent hub.
        offload: its connections carry super-frames behind a vnet header
            (:class:`~greentap.ports.superstream.SuperStream`), for TAPs with offloads.

    Attributes:
        accepts: True: the forwarder runs :meth:`accept` rather than reading.
        active: connections open now.
        accepted, refused: connections taken, and refused over ``max``.
        departures: connections that left, by how (``peer_closed``,
            ``peer_reset``, ``broken_framing``, ``send_failed``, ``closed``).

    Raises:
        EndpointUnavailable: the address is in use, something listens on the
            socket path, the path is not a socket, or permission is denied.
        UsageError: ``group=`` names no group.
    """

    readable = False
    accepts = True

    def __init__(self, spec: EndpointSpec, *, hub: Any = None, offload: bool = False) -> None:
        self.name = spec.text
        # Beside TAPs with offloads its connections carry super-frames (cut and merged).
        self._connection = SuperStream if offload else StreamConnection
        self.header_size = SuperStream.header_size if offload else 0
        self.kind = f"{spec.kind}-listener"
        self._conn_kind = spec.kind
        self.max_connections: int = spec.options["max"]
        self.counters = DeviceCounters()
        self.drops: collections.Counter[str] = collections.Counter()
        self.max_frame_size = 0
        self.active = self.accepted = self.refused = 0
        # Connections that left, by how: peer_closed (end of file or a
        # half-close), peer_reset, broken_framing, send_failed, closed (by us).
        self.departures: collections.Counter[str] = collections.Counter()
        self._serial = 0
        self._rate = spec.options.get("rate"), spec.options.get("burst")
        self._refused_since = 0
        self._refusal_logged = -_REFUSAL_LOG_INTERVAL
        self._path: str | None = None
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        if spec.kind == "unix":
            sock = self._bind_unix(spec)
            self.label = f"unix:{spec.name}"
        else:
            sock = self._bind_tcp(spec)
            self.label = f"tcp://{format_addr(sock.getsockname())}"
        self.address = sock.getsockname()
        self._io = GreenFd(FdHolder(sock, name=self.name), hub=hub)

    # --- binding --------------------------------------------------------------
    def _bind_unix(self, spec: EndpointSpec) -> socket.socket:
        options = spec.options
        gid = _group_id(options["group"], spec.text) if "group" in options else -1
        # group= alone means the group may connect: 0660.
        mode = options.get("mode", 0o660) if "mode" in options or gid != -1 else None
        sock, made = bind_private(spec.name, spec.text, gid=gid, mode=mode)
        self._path, self._file = spec.name, made
        return sock

    def _bind_tcp(self, spec: EndpointSpec) -> socket.socket:
        family, address = connect_address("tcp", spec.options["address"], endpoint=spec.text)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
        except OSError as exc:
            sock.close()
            raise EndpointUnavailable.from_errno(
                exc.errno, f"cannot listen on {format_addr(address)}", endpoint=spec.text
            ) from exc
        return sock

    # --- accepting ------------------------------------------------------------
    def accept(self) -> StreamConnection:
        """Wait for the next connection within ``max`` and return it as a port.

        Connections over ``max`` are accepted and closed at once.

        Raises:
            EndpointClosed: the listener was closed.
            EndpointUnavailable: accept failed for want of resources (EMFILE,
                ENFILE, ENOBUFS, ENOMEM): the caller waits a moment and tries again.
        """
        while True:
            try:
                fd, peer = self._io.read(lambda sock, _: _accept(sock), None)
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue  # the peer gave up before we took it
                raise EndpointUnavailable.from_errno(
                    exc.errno, "cannot accept a connection", endpoint=self.name
                ) from exc
            sock = socket.socket(fileno=fd)
            if self.active >= self.max_connections:
                sock.close()
                self._refuse()
                continue
            try:
                conn = self._connection(
                    sock, f"{self.label}#{self._serial + 1}", kind=self._conn_kind,
                    hub=self._io.hub, peer=_format_peer(peer) if peer else None,
                )  # fmt: skip
            except OSError as exc:  # out of memory for its buffer
                sock.close()
                raise EndpointUnavailable.from_errno(
                    exc.errno, "cannot take a connection", endpoint=self.name
                ) from exc
            self._serial += 1
            self.active += 1
            self.accepted += 1
            rate, burst = self._rate
            if rate is not None:
                conn.policer = TokenBucket(rate, burst)
            conn.vlan = self.vlan  # every VM on it in the listener's VLAN (or trunk)
            conn.departed = self._departed
            conn.origin = self  # removing the listener removes its connections
            return conn

    def _refuse(self) -> None:
        self.refused += 1
        self._refused_since += 1
        now = time.monotonic()
        if now - self._refusal_logged >= _REFUSAL_LOG_INTERVAL:
            self._refusal_logged = now
            self.notify("connection_refused", reason=f"already {self.max_connections} connections "
                        "(max=)", refused=self._refused_since)  # fmt: skip
            self._refused_since = 0

    def _departed(self, conn: StreamConnection) -> None:
        """A connection closed: its counters become the listener's."""
        self.active -= 1
        self.departures[conn.ended] += 1
        mine, theirs = self.counters, conn.counters
        for field in DeviceCounters.__slots__:
            setattr(mine, field, getattr(mine, field) + getattr(theirs, field))
        self.drops.update(conn.drops)
        # What is still counted on it (a send in the same turn of the hub, before
        # the forwarder takes it out) lands here too.
        conn.counters, conn.drops = mine, self.drops

    def describe(self) -> dict[str, Any]:
        """Return a dict describing the listener for logs."""
        return {
            **super().describe(),
            "listening": self.label,
            "max": self.max_connections,
            "active": self.active,
            "accepted": self.accepted,
            "refused": self.refused,
            "departures": dict(self.departures),
        }

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """A listener carries no frames of its own."""
        raise EndpointClosed("a listener carries no frames", endpoint=self.name)

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """A listener carries no frames of its own: nothing is sent."""
        return False

    # --- lifetime -------------------------------------------------------------
    def close(self) -> None:
        """Stop listening and remove the socket file; harmless if already closed."""
        self._io.close("the listener was closed")
        self._unlink()

    def _unlink(self) -> None:
        path, made = self._path, self._file
        self._path = self._file = None
        if path is not None and made is not None:
            unlink_if_ours(path, made)


def bind_private(
    path: str,
    endpoint: str,
    *,
    uid: int = -1,
    gid: int = -1,
    mode: int | None = None,
    backlog: int = _BACKLOG,
) -> tuple[socket.socket, tuple[int, int]]:
    """Listen on a unix socket file made 0600, then given to ``uid``/``gid`` and ``mode``.

    A stale file is replaced (:func:`clear_stale`); the umask is 0177 while
    bind() makes the file, so there is no moment when others may connect.

    Returns:
        The listening socket and the file's ``(st_dev, st_ino)``, for
        :func:`unlink_if_ours`.

    Raises:
        EndpointUnavailable: the path is in use, not a socket, or cannot be made.
    """
    clear_stale(path, endpoint)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    made: tuple[int, int] | None = None
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        st = os.lstat(path)
        made = (st.st_dev, st.st_ino)
        if uid != -1 or gid != -1:
            os.chown(path, uid, gid, follow_symlinks=False)
        if mode is not None:
            os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if made is not None:
            unlink_if_ours(path, made)
        raise EndpointUnavailable.from_errno(
            exc.errno, f"cannot listen on {path}", endpoint=endpoint
        ) from exc
    return sock, made


def unlink_if_ours(path: str, made: tuple[int, int]) -> None:
    """Remove the socket file at ``path`` if it is still the one made (same device
    and inode), not one made since by someone else; quietly if it cannot be."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == made:
            os.unlink(path)
    except OSError:
        pass  # gone, or we no longer may (after --user)


def clear_stale(path: str, endpoint: str) -> None:
    """Remove a socket file nothing listens on; refuse anything else.

    Raises:
        EndpointUnavailable: something listens on it, or it is not a socket.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise EndpointUnavailable.from_errno(exc.errno, f"cannot use {path}",
                                             endpoint=endpoint) from exc  # fmt: skip
    if not stat.S_ISSOCK(st.st_mode):
        raise EndpointUnavailable(f"{path} exists and is not a socket: not replacing it",
                                  endpoint=endpoint, errno=errno.EEXIST)  # fmt: skip
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        code = probe.connect_ex(path)
    finally:
        probe.close()
    if code != errno.ECONNREFUSED:
        raise EndpointUnavailable(
            f"something already listens on {path}", endpoint=endpoint, errno=errno.EADDRINUSE
        )
    os.unlink(path)  # left by a listener that died without removing it


def _group_id(group: str, endpoint: str) -> int:
    if group.isascii() and group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"group={group}: no such group", endpoint=endpoint) from None


def _format_peer(peer: Any) -> str | None:
    return format_addr(peer) if isinstance(peer, tuple) else peer or None


@register("unix", "tcp")
def _open(spec: EndpointSpec, options: OpenOptions) -> Port:
    if spec.options["listen"]:
        return StreamListener(spec, hub=options.hub, offload=options.offload)
    target = spec.name if spec.kind == "unix" else spec.options["address"]
    return StreamClient(
        spec.text, kind=spec.kind, target=target, hub=options.hub, offload=options.offload
    )

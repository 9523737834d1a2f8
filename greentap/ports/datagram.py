"""What the UDP ports share: a bound socket on the hub, sends that never wait, ICMP errors.

The VXLAN and raw UDP ports (:mod:`~greentap.ports.tunnel`) read one non-
blocking UDP socket through a :class:`~greentap.green.fdio.GreenFd`, exactly
as a TAP is read: try ``recvmsg_into``, on ``EAGAIN`` wait on the persistent
read watcher, and yield to the hub after a batch. Sends never wait: what the
kernel refuses is classified by :mod:`greentap.core.verdicts` —
``EAGAIN``/``ENOBUFS`` drop the frame (``tx_dropped``); ``EMSGSIZE`` (path-
MTU discovery is set to "do", so the kernel refuses instead of fragmenting),
an unreachable remote or any other error drop it as ``tx_errors``, counted
by reason. A UDP socket does not fail for a send error: only closing ends
it.

A remote that becomes unreachable (no route, the underlay down) is reported
once through the port's ``notify`` (``peer_unreachable``), and once again
when a send to it succeeds (``peer_reachable``); sends go on being tried, so
the tunnel heals by itself.  A remote that is reachable but does not listen
(a stopped VM: its host answers with ICMP port unreachable) is noticed the
same way: the sockets set ``IP_RECVERR``, so the kernel queues each ICMP
error with the address it was about; each counts as ``tx_unreachable`` and
the remote is reported once, and reachable again once a datagram comes from
it (a send that succeeds proves nothing there).

Only datagrams from configured remotes are accepted: for VXLAN any source
port of a remote's address (the Linux kernel picks VXLAN source ports from a
range), for raw UDP the exact address and port.  Everything else is dropped
and counted by reason, never raised.

With offloads the port works on super-frames: :mod:`~greentap.ports.superframes`.
"""

from __future__ import annotations

import _socket  # never monkey-patched: greentap does its own waiting
import collections
import errno
import os
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any

from greentap.core.counters import DeviceCounters
from greentap.core.verdicts import Verdict, drop_reason, write_verdict
from greentap.device.fd import FdHolder
from greentap.errors import EndpointClosed, EndpointSyntaxError, EndpointUnavailable
from greentap.green import relay
from greentap.green.fdio import DEFAULT_BUDGET, GreenFd
from greentap.ports.superframes import MAX_DATAGRAM, Address, SuperFrames

__all__ = ["MAX_DATAGRAM", "Address", "DatagramPort", "format_addr", "resolve", "source_sockets"]

_IP_PMTUDISC_DO = 2  # linux/in.h
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)  # linux/in.h
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)  # linux/in6.h
_RECVERR = {(socket.IPPROTO_IP, _IP_RECVERR), (socket.IPPROTO_IPV6, _IPV6_RECVERR)}
_recvmsg_into = _socket.socket.recvmsg_into


def resolve(
    host: str, port: int, *, endpoint: str | None = None, socktype: int = socket.SOCK_DGRAM
) -> tuple[int, Address]:
    """Resolve ``host`` to a ``(family, (address, port))`` for UDP (or ``socktype``).

    Raises:
        EndpointUnavailable: the name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, 0, socktype)
    except socket.gaierror as exc:
        raise EndpointUnavailable(
            f"cannot resolve {host!r}: {exc.strerror}", endpoint=endpoint
        ) from exc
    except UnicodeError as exc:  # a name the IDNA codec refuses
        raise EndpointUnavailable(f"cannot resolve {host!r}: {exc}", endpoint=endpoint) from exc
    fam, _, _, _, sockaddr = infos[0]
    return fam, (str(sockaddr[0]), int(sockaddr[1]))


class DatagramPort(SuperFrames):
    """Common machinery of the UDP ports.

    Args:
        name: what logs and counters call the port.
        remotes: ``[(host, port)]``, at least one.
        local: ``(host, port)`` to bind, or None for the wildcard address
            of the remotes' family on ``default_port``.
        default_port: the port to bind when ``local`` is None (0: any).
        hub: the gevent hub.
        budget: datagrams handled back to back before yielding to the hub.
        offload: frames carry a virtio-net header: super-frames are cut on
            the way out and merged on the way in (see the module's notes).

    Raises:
        EndpointSyntaxError: the remotes and the local address mix IPv4 and IPv6.
        EndpointUnavailable: unresolvable names, or the socket cannot be bound
            (address in use, permission).
    """

    def __init__(
        self,
        name: str,
        remotes: Sequence[Address],
        local: Address | None = None,
        *,
        default_port: int = 0,
        hub: Any = None,
        budget: int = DEFAULT_BUDGET,
        offload: bool = False,
    ) -> None:
        self.name = name
        resolved = [resolve(h, p, endpoint=name) for h, p in remotes]
        families = {fam for fam, _ in resolved}
        if local is not None:
            lfam, laddr = resolve(local[0], local[1], endpoint=name)
            families.add(lfam)
        if len(families) != 1:
            raise EndpointSyntaxError("remotes and local address mix IPv4 and IPv6", endpoint=name)
        self.family = families.pop()
        self.remotes = [addr for _, addr in resolved]
        if local is None:
            wildcard = "::" if self.family == socket.AF_INET6 else "0.0.0.0"
            laddr = (wildcard, default_port)
        self.counters = DeviceCounters()
        self.drops: collections.Counter[str] = collections.Counter()
        self.max_frame_size = MAX_DATAGRAM
        sock = _bind(name, self.family, laddr)
        self.local: Address = sock.getsockname()[:2]
        self._io = GreenFd(FdHolder(sock, name=name), hub=hub, budget=budget)
        self._hub = self._io.hub
        self._prefix = b""  # what goes before each frame in a datagram
        self.offload = offload
        if offload:
            self._offloads(sock)
        self._unreachable: dict[Address, str] = {}  # remote -> why, while sends to it fail
        self._refused: set[Address] = set()  # of those, the ones an ICMP error named

    def describe(self) -> dict[str, Any]:
        """Return a dict describing the port for logs."""
        return {
            **super().describe(),
            "local": format_addr(self.local),
            "remotes": [format_addr(a) for a in self.remotes],
            "offload": {"gso": self.gso, "gro": self.gro} if self.offload else False,
        }

    def _receive(self, buffers: tuple[Any, ...]) -> tuple[int, Any]:
        """Receive one datagram into ``buffers``; return ``(nbytes, sender)``."""
        io = self._io
        while True:
            try:
                nbytes, _, flags, sender = io.read(_recvmsg_into, buffers)
            except OSError as exc:
                self._recv_failed(exc)
                io.count()  # counted against the budget all the same
                continue
            if flags & socket.MSG_TRUNC:
                self._drop("rx_truncated")
                continue
            return nbytes, sender

    def _recv_failed(self, exc: OSError) -> None:
        """A read failed, not for EAGAIN: the socket was closed, or ICMP errors from
        earlier sends surfaced.  Those are not the port's death: their details wait
        in the error queue, which must be emptied (it keeps the socket readable).

        Raises:
            EndpointClosed: the socket was closed.
        """
        if exc.errno in (errno.EBADF, errno.ENOTSOCK) or self._io.closed:
            raise EndpointClosed("socket was closed", endpoint=self.name) from exc
        self._read_error_queue()

    def _read_error_queue(self, sock: Any = None) -> None:
        """Take every ICMP error the kernel queued on ``sock`` (default: the port's
        socket); report the remotes they name."""
        if sock is None:
            sock = self._io.holder.handle
        while isinstance(sock, _socket.socket):
            try:
                _, ancillary, _, about = sock.recvmsg(1, 512, socket.MSG_ERRQUEUE)
            except OSError:  # BlockingIOError: empty
                return
            code = 0
            for level, kind, data in ancillary:
                if (level, kind) in _RECVERR and len(data) >= 4:
                    code = int.from_bytes(data[:4], sys.byteorder)  # sock_extended_err.ee_errno
            self.drops["tx_unreachable"] += 1
            if about and code:
                self._unreachable_now(tuple(about[:2]), os.strerror(code), refused=True)

    def _unreachable_now(self, addr: Address, why: str, *, refused: bool = False) -> None:
        if refused:
            self._refused.add(addr)
        if addr not in self._unreachable:
            self._unreachable[addr] = why
            self.notify("peer_unreachable", remote=format_addr(addr), error=why)

    def _heard(self, addr: Address) -> None:
        """A datagram came from ``addr``: a remote reported unreachable is back."""
        if addr in self._unreachable:
            del self._unreachable[addr]
            self._refused.discard(addr)
            self.notify("peer_reachable", level="info", remote=format_addr(addr))

    def _drop(self, reason: str) -> None:
        self.drops[reason] += 1
        self.counters.rx_errors += 1

    def _accept(self, n: int) -> int:
        self.counters.rx_packets += 1
        self.counters.rx_bytes += n
        return n

    def _sendmsg(self, buffers: Sequence[Any], size: int, addr: Address, sock: Any = None) -> bool:
        if sock is None:
            sock = self._io.holder.handle
            if sock is None:
                raise EndpointClosed(endpoint=self.name)
        try:
            sock.sendmsg(buffers, (), 0, addr)
        except OSError as exc:
            return self._send_failed(exc, addr, 1, sock)
        self._sent(addr, 1, size)
        return True

    def _sent(self, addr: Address, packets: int, size: int) -> None:
        self.counters.tx_packets += packets
        self.counters.tx_bytes += size
        if self._unreachable and addr in self._unreachable and addr not in self._refused:
            self._heard(addr)  # the route is back (a refusal is lifted by a datagram only)

    def _send_failed(self, exc: OSError, addr: Address, packets: int, sock: Any = None) -> bool:
        """Count a send the kernel refused (``packets`` datagrams); always False."""
        if self._io.closed:
            raise EndpointClosed(endpoint=self.name) from exc
        verdict = write_verdict(exc.errno)
        self.drops[f"tx_{drop_reason(exc.errno)}"] += packets
        if verdict is Verdict.BACKPRESSURE:
            self.counters.tx_dropped += packets
            return False
        self.counters.tx_errors += packets
        if exc.errno == errno.ECONNREFUSED:  # an ICMP error this send picked up
            self._read_error_queue(sock)
        elif verdict in (Verdict.UNREACHABLE, Verdict.LINK_DOWN):  # no route, way down
            self._unreachable_now(addr, exc.strerror or str(exc))
        return False

    def _sender(self, frame: Any) -> Any:
        """The socket a frame (no vnet header) leaves by; None: the port's own."""
        return None

    # --- the wire's C relay to this port --------------------------------------
    @property
    def io(self) -> GreenFd:
        """The socket on the hub (what a relay sends through)."""
        return self._io

    def _offer_relay(self) -> None:
        """Let the wire's C relay send to this port (:attr:`sink`) when every frame
        goes the same way: one remote, from the port's own socket, no limit of
        the port's own to apply.  Called by subclasses once they are set up."""
        host, port = self.remotes[0]
        if relay.sends_udp() and len(self.remotes) == 1 and "%" not in host:
            self.udp_relay: tuple[bytes, bytes] | None = (
                self._prefix, _sockaddr(self.family, host, port)
            )  # fmt: skip
            self.sink = self

    def udp_sent(self, tx: int, tx_bytes: int, failures: dict[int, int]) -> None:
        """Count what a C relay batch sent to the remote and what the kernel refused.

        Raises:
            EndpointClosed: the port was closed.
        """
        addr = self.remotes[0]
        if tx:
            self._sent(addr, tx, tx_bytes)
        for code, count in failures.items():
            self._send_failed(OSError(code, os.strerror(code)), addr, count)

    def close(self) -> None:
        """Close the socket; a greenlet blocked in recv_into gets EndpointClosed."""
        self._io.close("endpoint was closed")


def _sockaddr(family: int, host: str, port: int) -> bytes:
    """``struct sockaddr_in`` or ``sockaddr_in6`` for ``(host, port)``, as the kernel takes it."""
    packed = socket.inet_pton(family, host)
    head = struct.pack("=H", family) + struct.pack("!H", port)
    if family == socket.AF_INET6:
        return head + bytes(4) + packed + bytes(4)  # flowinfo, address, scope id
    return head + packed + bytes(8)


def source_sockets(
    name: str, family: int, host: str, ports: tuple[int, int], *, most: int
) -> list[_socket.socket]:
    """Sockets bound to ``most`` ports spread over ``ports`` (both ends included).

    A port in use is skipped (an operator's range may overlap other services).

    Raises:
        EndpointUnavailable: no port of the range could be bound.
    """
    first, last = ports
    count = min(most, last - first + 1)
    wanted = sorted({first + (i * (last - first)) // max(count - 1, 1) for i in range(count)})
    socks, error = [], None
    for port in wanted:
        try:
            sock = _bind(name, family, (host, port), receive_buffer=0)
        except EndpointUnavailable as exc:
            error = exc
            continue
        socks.append(sock)
    if not socks:
        raise EndpointUnavailable(
            f"no source port of {first}-{last} could be bound ({error})", endpoint=name
        )
    return socks


def _bind(
    name: str, family: int, laddr: Address, *, receive_buffer: int = 4 << 20
) -> _socket.socket:
    sock = _socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IP_PMTUDISC_DO)
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
            if opt is None:
                continue
            try:  # room for bursts; FORCE works as root, the plain one is capped
                sock.setsockopt(socket.SOL_SOCKET, opt, receive_buffer)  # 0: the least
                break
            except OSError:
                continue
        sock.bind(laddr)
    except OSError as exc:
        sock.close()
        hint = f"cannot bind UDP {format_addr(laddr)}"
        if exc.errno == errno.EADDRINUSE:
            hint += ": address in use (another tap-forward or a kernel vxlan device?)"
        raise EndpointUnavailable.from_errno(exc.errno or 0, hint, endpoint=name) from exc
    return sock


def format_addr(addr: Any) -> str:
    host, port = addr[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

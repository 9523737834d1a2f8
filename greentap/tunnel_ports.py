"""Ports that carry frames over UDP: VXLAN (RFC 7348) and raw UDP (QEMU's format).

Both use one non-blocking UDP socket read the same way as a TAP: try
``recvmsg_into``, on ``EAGAIN`` wait on a persistent read watcher, and yield
to the hub after a batch.  Sends never wait: ``EAGAIN``, ``ENOBUFS``,
``ECONNREFUSED``, an unreachable network or a datagram too large for the
path (``EMSGSIZE``: path-MTU discovery is set to "do", so the kernel refuses
instead of fragmenting) drop the frame and count it by reason.

A remote that becomes unreachable (no route, the underlay down) is reported
once through the port's ``notify`` (``peer_unreachable``), and once again
when a send to it succeeds (``peer_reachable``); sends go on being tried, so
the tunnel heals by itself.

Only datagrams from configured remotes are accepted: for VXLAN any source
port of a remote's address (the Linux kernel picks VXLAN source ports from a
range), for raw UDP the exact address and port.  Everything else is dropped
and counted by reason, never raised.
"""

import _socket  # never monkey-patched: greentap does its own waiting
import collections
import errno
import socket

import gevent
from gevent import get_hub

from greentap import vxlan
from greentap.counters import DeviceCounters
from greentap.errors import EndpointUnavailable, TapClosed, TapError
from greentap.ethernet import format_mac
from greentap.kernel_constants import ETH_HLEN
from greentap.polled import DEFAULT_BUDGET
from greentap.ports import Port
from greentap.switching import MacTable

# Largest UDP payload (IPv4: 65535 - 20 - 8); IPv6 allows 65527.
MAX_DATAGRAM = 65507

_IP_PMTUDISC_DO = 2  # linux/in.h
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)

_TX_REASONS = {
    errno.EAGAIN: "backpressure",
    errno.ENOBUFS: "backpressure",
    errno.EMSGSIZE: "too_big",
    errno.ECONNREFUSED: "unreachable",
    errno.EHOSTUNREACH: "unreachable",
    errno.ENETUNREACH: "unreachable",
    errno.EHOSTDOWN: "unreachable",
    errno.ENETDOWN: "unreachable",
}


def resolve(host, port):
    """Resolve ``host`` to a ``(family, sockaddr)`` for UDP.

    Raises:
        EndpointUnavailable: the name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise EndpointUnavailable(None, f"cannot resolve {host!r}: {exc.strerror}") from exc
    fam, _, _, _, sockaddr = infos[0]
    return fam, sockaddr[:2] if fam == socket.AF_INET6 else sockaddr


class DatagramPort(Port):
    """Common machinery of the UDP ports.

    Args:
        name: what logs and counters call the port.
        remotes: ``[(host, port)]``, at least one.
        local: ``(host, port)`` to bind, or None for the wildcard address
            of the remotes' family on ``default_port``.
        default_port: the port to bind when ``local`` is None (0: any).
        hub: the gevent hub.
        budget: datagrams handled back to back before yielding to the hub.

    Raises:
        EndpointUnavailable: unresolvable names, mixed address families, or the
            socket cannot be bound (address in use, permission).
    """

    def __init__(
        self, name, remotes, local=None, *, default_port=0, hub=None, budget=DEFAULT_BUDGET
    ):
        self.name = name
        resolved = [resolve(h, p) for h, p in remotes]
        families = {fam for fam, _ in resolved}
        if local is not None:
            lfam, laddr = resolve(local[0], local[1])
            families.add(lfam)
        if len(families) != 1:
            raise EndpointUnavailable(name, "remotes and local address mix IPv4 and IPv6")
        self.family = families.pop()
        self.remotes = [addr for _, addr in resolved]
        if local is None:
            wildcard = "::" if self.family == socket.AF_INET6 else "0.0.0.0"
            laddr = (wildcard, default_port)
        self.counters = DeviceCounters()
        self.drops = collections.Counter()
        self.max_frame_size = MAX_DATAGRAM
        self._hub = hub if hub is not None else get_hub()
        self._budget = budget
        self._batch = 0
        sock = _socket.socket(self.family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            if self.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IP_PMTUDISC_DO)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
            for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
                try:  # room for bursts; FORCE works as root, the plain one is capped
                    sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
                    break
                except (OSError, TypeError):
                    continue
            sock.bind(laddr)
        except OSError as exc:
            sock.close()
            hint = f"cannot bind UDP {laddr[0]}:{laddr[1]}"
            if exc.errno == errno.EADDRINUSE:
                hint += ": address in use (another tap-forward or a kernel vxlan device?)"
            raise EndpointUnavailable.from_errno(name, exc.errno, hint) from exc
        self.local = sock.getsockname()[:2]
        self._sock = sock
        self._read_watcher = self._hub.loop.io(sock.fileno(), 1)
        self._closed = False
        self._unreachable = {}  # remote address -> why, while sends to it fail

    def describe(self):
        """Return a dict describing the port for logs."""
        return {
            "endpoint": self.name,
            "kind": self.kind,
            "local": f"{self.local[0]}:{self.local[1]}",
            "remotes": [_format_addr(a) for a in self.remotes],
        }

    def _receive(self, buffers):
        """Receive one datagram into ``buffers``; return ``(nbytes, sender)``."""
        recvmsg_into = self._sock.recvmsg_into
        while True:
            if self._closed:
                raise TapClosed(self.name)
            self._batch += 1
            if self._batch > self._budget:
                self._batch = 0
                gevent.sleep(0)  # a flood, even of garbage, must not starve the hub
                continue
            try:
                nbytes, _, flags, sender = recvmsg_into(buffers)
            except BlockingIOError:
                self._batch = 0
                self._hub.wait(self._read_watcher)
                continue
            except OSError as exc:
                if self._closed or exc.errno in (errno.EBADF, errno.ENOTSOCK):
                    raise TapClosed(self.name, "socket was closed") from exc
                # ICMP errors from earlier sends surface here (one per error):
                # not the port's death.
                self.drops[f"rx_{errno.errorcode.get(exc.errno, exc.errno)}"] += 1
                continue
            if flags & socket.MSG_TRUNC:
                self._drop("rx_truncated")
                continue
            return nbytes, sender

    def _drop(self, reason):
        self.drops[reason] += 1
        self.counters.rx_errors += 1

    def _accept(self, n):
        self.counters.rx_packets += 1
        self.counters.rx_bytes += n
        return n

    def _sendmsg(self, buffers, size, addr):
        try:
            self._sock.sendmsg(buffers, (), 0, addr)
        except OSError as exc:
            if self._closed:
                raise TapClosed(self.name) from exc
            reason = _TX_REASONS.get(exc.errno) or errno.errorcode.get(exc.errno, str(exc.errno))
            self.drops[f"tx_{reason}"] += 1
            if reason == "backpressure":
                self.counters.tx_dropped += 1
            else:
                self.counters.tx_errors += 1
                if reason == "unreachable" and addr not in self._unreachable:
                    self._unreachable[addr] = exc.strerror
                    self.notify("peer_unreachable", remote=_format_addr(addr), error=exc.strerror)
            return False
        self.counters.tx_packets += 1
        self.counters.tx_bytes += size
        if self._unreachable and addr in self._unreachable:
            del self._unreachable[addr]
            self.notify("peer_reachable", level="info", remote=_format_addr(addr))
        return True

    def close(self):
        """Close the socket; a greenlet blocked in recv_into gets TapClosed."""
        if self._closed:
            return
        self._closed = True
        watcher, self._read_watcher = self._read_watcher, None
        self._hub.cancel_waits_close_and_then(
            [watcher], TapClosed(self.name, "endpoint was closed"), self._sock.close
        )


class UdpPort(DatagramPort):
    """Raw Ethernet frames, one per UDP datagram, no header: the format of
    QEMU's ``-netdev dgram`` and ``-netdev socket,udp=``.

    Only datagrams from the remote's exact address and port are accepted.
    """

    kind = "udp"

    def __init__(self, name, remote, local=None, **kw):
        super().__init__(name, [remote], local, **kw)
        self._peer = self.remotes[0]

    def recv_into(self, buffer):
        """Read one frame (one datagram from the peer) into ``buffer``; return its length."""
        buffers = (buffer,)
        while True:
            n, sender = self._receive(buffers)
            if sender[:2] != self._peer:
                self._drop("rx_unknown_sender")
                continue
            if n < ETH_HLEN:
                self._drop("rx_runt")
                continue
            return self._accept(n)

    def send(self, frame):
        """Send one frame as one datagram; return False if it was dropped."""
        if self._closed:
            raise TapClosed(self.name)
        return self._sendmsg((frame,), len(frame), self._peer)


class VxlanPort(DatagramPort):
    """A VXLAN tunnel endpoint (RFC 7348) towards one or more remote VTEPs.

    Broadcast, multicast and unknown unicast are replicated to every remote
    (head-end replication); the remote behind each inner source MAC is
    learned, so known unicast goes to that remote only.

    Args:
        name: what logs call it.
        remotes: ``[(host, port)]`` of the remote VTEPs.
        vni: the VXLAN network identifier (24 bits).
        local: ``(host, port)`` to bind; default the wildcard address on 4789.
        aging, max_entries: of the table of MAC -> remote.
    """

    kind = "vxlan"

    def __init__(self, name, remotes, vni, local=None, *, aging=300.0, max_entries=8192, **kw):
        self.vni = vni
        self._header = vxlan.header(vni)
        super().__init__(name, remotes, local, default_port=vxlan.VXLAN_PORT, **kw)
        self._remote_hosts = {addr[0]: i for i, addr in enumerate(self.remotes)}
        self._table = MacTable(aging=aging, max_entries=max_entries)
        self._hdr_buf = bytearray(vxlan.HEADER_SIZE)
        self._all = tuple(range(len(self.remotes)))
        self._learn = len(self.remotes) > 1  # with one remote there is nothing to learn

    def describe(self):
        """Return a dict describing the port for logs."""
        return {**super().describe(), "vni": self.vni}

    def recv_into(self, buffer):
        """Read one decapsulated frame into ``buffer``; return its length.

        The VXLAN header is scattered into a side buffer, so the inner frame
        lands at the start of ``buffer`` without a copy.
        """
        hdr = self._hdr_buf
        buffers = (hdr, buffer)
        size = vxlan.HEADER_SIZE
        while True:
            n, sender = self._receive(buffers)
            remote = self._remote_hosts.get(sender[0])
            if remote is None:
                self._drop("rx_unknown_sender")
                continue
            if n < size + ETH_HLEN:
                self._drop(f"rx_{vxlan.SHORT}")
                continue
            reason = vxlan.check_header(hdr, self.vni)
            if reason is not None:
                self._drop(f"rx_{reason}")
                continue
            if self._learn and not buffer[6] & 1:
                self._table.learn(bytes(buffer[6:12]), remote, self._hub.loop.now())
            return self._accept(n - size)

    def send(self, frame):
        """Encapsulate and send one frame; return False if no remote got it."""
        if self._closed:
            raise TapClosed(self.name)
        targets = self._all
        if self._learn and not frame[0] & 1:
            remote = self._table.lookup(bytes(frame[:6]), self._hub.loop.now())
            if remote is not None:
                targets = (remote,)
        buffers = (self._header, frame)
        size = vxlan.HEADER_SIZE + len(frame)
        sent = False
        for i in targets:
            sent = self._sendmsg(buffers, size, self.remotes[i]) or sent
        return sent

    def mac_table(self):
        """Return ``[(mac, remote "host:port", age)]`` learned on this tunnel."""
        now = self._hub.loop.now()
        return [
            (format_mac(mac), _format_addr(self.remotes[r]), age)
            for mac, r, age in self._table.entries(now)
        ]


def _format_addr(addr):
    host, port = addr[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def open_tunnel(spec, *, hub=None):
    """Open the VXLAN or UDP port an endpoint spec describes.

    Raises:
        TapError: the socket cannot be set up.
    """
    opts = spec.options
    if spec.kind == "vxlan":
        return VxlanPort(spec.name, opts["remotes"], opts["vni"], opts.get("local"), hub=hub)
    if spec.kind == "udp":
        return UdpPort(spec.name, opts["remotes"][0], opts.get("local"), hub=hub)
    raise TapError(None, f"not a tunnel endpoint: {spec.kind}")

"""Ports that carry frames over UDP: VXLAN (RFC 7348) and raw UDP (QEMU's format).

Both are :class:`~greentap.ports.datagram.DatagramPort`: one non-blocking
UDP socket on the hub, sends that never wait, ICMP errors noticed; with
offloads, super-frames cut and merged (:mod:`~greentap.ports.superframes`).
Only datagrams from configured remotes are accepted: for VXLAN any source
port of a remote's address (the Linux kernel picks VXLAN source ports from a
range), for raw UDP the exact address and port.  Everything else is dropped
and counted by reason, never raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from greentap.core import vxlan
from greentap.core.endpoints import EndpointSpec
from greentap.core.ethernet import format_mac
from greentap.core.kernel_constants import ETH_HLEN
from greentap.core.switching import MacTable
from greentap.ports.datagram import (
    MAX_DATAGRAM,
    Address,
    DatagramPort,
    format_addr,
    resolve,
    source_sockets,
)
from greentap.ports.registry import OpenOptions, register

__all__ = ["MAX_DATAGRAM", "SOURCE_PORTS", "DatagramPort", "UdpPort", "VxlanPort", "resolve"]

#: Sockets a ``srcport`` range is spread over: enough entropy for ECMP
#: underlays, few enough descriptors.
SOURCE_PORTS = 16


class UdpPort(DatagramPort):
    """Raw Ethernet frames, one per UDP datagram, no header: the format of
    QEMU's ``-netdev dgram`` and ``-netdev socket,udp=``.

    Only datagrams from the remote's exact address and port are accepted.

    Args:
        name: what logs call it.
        remote: the peer's ``(host, port)``.
        local: ``(host, port)`` to bind, or None for any port.
        mtu: the peer's MTU (a guest's): no frame sent is larger than it (plus
            the Ethernet header and tags); a super-frame is cut to fit, a
            larger plain frame is dropped and counted ``tx_too_big``.  None:
            no limit of its own (the TAPs' MTU decides).
    """

    kind = "udp"

    def __init__(
        self,
        name: str,
        remote: Address,
        local: Address | None = None,
        *,
        mtu: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(name, [remote], local, **kw)
        self._peer = self.remotes[0]
        self._peers = (self._peer,)
        self.mtu = mtu
        if mtu is None:
            self._offer_relay()

    def describe(self) -> dict[str, Any]:
        """Return a dict describing the port for logs."""
        info = super().describe()
        if self.mtu is not None:
            info["mtu"] = self.mtu
        return info

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Read one frame (one datagram from the peer) into ``buffer``; return its length."""
        buffers = (buffer,)
        while True:
            n, sender = self._receive(buffers)
            if sender[:2] != self._peer:
                self._drop("rx_unknown_sender")
                continue
            if self._unreachable:
                self._heard(self._peer)
            if n < ETH_HLEN:
                self._drop("rx_runt")
                continue
            return self._accept(n)

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """Send one frame as one datagram; return False if it was dropped."""
        if self.mtu is not None and not self._fits(frame):
            return self._refuse("tx_too_big")
        return self._sendmsg((frame,), len(frame), self._peer)

    def _targets(self, frame: Any) -> Sequence[Address]:
        return self._peers

    def _admit(self, sender: Any, data: memoryview, size: int, count: int) -> bool:
        if sender[:2] != self._peer:
            self.drops["rx_unknown_sender"] += count
            self.counters.rx_errors += count
            return False
        if self._unreachable:
            self._heard(self._peer)
        return True


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
        srcport: ``(min, max)``: send from source ports in this range, one per
            inner flow (RFC 7348 section 5), over :data:`SOURCE_PORTS` sockets
            bound to ports spread across it; receiving stays on ``local``.
            None: send from ``local``'s port.
    """

    kind = "vxlan"

    def __init__(
        self,
        name: str,
        remotes: Sequence[Address],
        vni: int,
        local: Address | None = None,
        *,
        aging: float = 300.0,
        max_entries: int = 8192,
        srcport: tuple[int, int] | None = None,
        **kw: Any,
    ) -> None:
        self.vni = vni
        self._header = vxlan.header(vni)
        super().__init__(name, remotes, local, default_port=vxlan.VXLAN_PORT, **kw)
        self._prefix = self._header
        self._vni, self._short = vni, f"rx_{vxlan.SHORT}"
        self._remote_hosts = {addr[0]: i for i, addr in enumerate(self.remotes)}
        self._table = MacTable(aging=aging, max_entries=max_entries)
        self._hdr_buf = bytearray(vxlan.HEADER_SIZE)
        self._learn = len(self.remotes) > 1  # with one remote there is nothing to learn
        self.srcport = srcport
        self._sources: list[Any] = []
        if srcport is not None:
            try:
                self._sources = source_sockets(
                    name, self.family, self.local[0], srcport, most=SOURCE_PORTS
                )
            except BaseException:
                self.close()
                raise
        else:
            self._offer_relay()

    def describe(self) -> dict[str, Any]:
        """Return a dict describing the port for logs."""
        info = {**super().describe(), "vni": self.vni}
        if self.srcport is not None:
            info["srcport"] = f"{self.srcport[0]}-{self.srcport[1]}"
            info["source_ports"] = [s.getsockname()[1] for s in self._sources]
        return info

    def _sender(self, frame: Any) -> Any:
        sources = self._sources
        if not sources:
            return None
        # As the kernel maps its hash onto the range: the top bits pick.
        return sources[(vxlan.flow_hash(frame) * len(sources)) >> 32]

    def check(self) -> bool:
        """Read the ICMP errors queued on the source-port sockets (none are read
        otherwise): a remote that does not listen is reported as for sends from
        the port's own socket."""
        for sock in self._sources:
            self._read_error_queue(sock)
        return False

    def close(self) -> None:
        """Close the sockets; harmless if already closed."""
        sources, self._sources = self._sources, []
        for sock in sources:
            sock.close()
        super().close()

    def recv_into(self, buffer: bytearray | memoryview) -> int:
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
            if self._unreachable:
                self._heard(self.remotes[remote])
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

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """Encapsulate and send one frame; return False if no remote got it."""
        return self._send_one(frame)

    def _targets(self, frame: Any) -> Sequence[Address]:
        if self._learn and not frame[0] & 1:
            remote = self._table.lookup(bytes(frame[:6]), self._hub.loop.now())
            if remote is not None:
                return (self.remotes[remote],)
        return self.remotes

    def _admit(self, sender: Any, data: memoryview, size: int, count: int) -> bool:
        remote = self._remote_hosts.get(sender[0])
        if remote is None:
            self.drops["rx_unknown_sender"] += count
            self.counters.rx_errors += count
            return False
        if self._unreachable:
            self._heard(self.remotes[remote])
        if self._learn:  # which remote each inner source MAC lives behind
            now, at = self._hub.loop.now(), vxlan.HEADER_SIZE
            for start in range(0, len(data), size):
                datagram = data[start : start + size]
                valid = vxlan.decode(datagram, self.vni)[1] is None
                if valid and not datagram[at + 6] & 1:
                    self._table.learn(bytes(datagram[at + 6 : at + 12]), remote, now)
        return True

    def mac_table(self) -> list[tuple[str, str, float]]:
        """Return ``[(mac, remote "host:port", age)]`` learned on this tunnel."""
        now = self._hub.loop.now()
        return [
            (format_mac(mac), format_addr(self.remotes[r]), age)
            for mac, r, age in self._table.entries(now)
        ]


@register("vxlan")
def _open_vxlan(spec: EndpointSpec, options: OpenOptions) -> VxlanPort:
    opts = spec.options
    return VxlanPort(
        spec.name, opts["remotes"], opts["vni"], opts.get("local"), hub=options.hub,
        offload=options.offload, srcport=opts.get("srcport"),
    )  # fmt: skip


@register("udp")
def _open_udp(spec: EndpointSpec, options: OpenOptions) -> UdpPort:
    opts = spec.options
    return UdpPort(
        spec.name, opts["remotes"][0], opts.get("local"), hub=options.hub, offload=options.offload,
        mtu=opts.get("mtu"),
    )  # fmt: skip

"""The half of a UDP port that carries super-frames: cut on the way out, merged on the way in.

With offloads (``offload=True``: the forwarder's default beside a TAP or a
``packet:`` interface) a tunnel port's frames carry a virtio-net header, so
the TAP's super-frames never shrink to 1450 bytes on the way through Python:

- out: a super-frame is cut into segments (:mod:`greentap.core.segment`)
  that leave in one ``sendmsg`` with ``UDP_SEGMENT`` (the kernel makes the
  datagrams); a checksum left to the NIC is finished.  A device without
  checksum offload on the way answers EIO: UDP GSO is then turned off for
  the socket (logged once as ``udp_gso_off``, counted ``tx_gso_off``) and
  the segments go one by one.  A segment over the path MTU makes the whole
  send fail (EINVAL): the segments are then sent one by one, so each is
  counted as ``tx_too_big`` as it would be without GSO;
- in: ``UDP_GRO`` hands over many datagrams per read; a batch of up to
  :data:`BATCH` datagrams is read (one ``recvmmsg`` in C, each datagram in its
  own 64 KiB slot of a mapped buffer; else ``recvmsg_into`` until the socket
  is empty), checked, opened and its TCP segments of one flow merged into
  super-frames in one call (:func:`~greentap.core.coalesce.merge_datagrams`).
  As a wire's source (:meth:`SuperFrames.relay_to`) the merged batch is
  written to the TAP in one C call (``write_frames``).

Counters count datagrams: a super-frame sent as 40 segments is 40 ``tx_packets``.
"""

from __future__ import annotations

import _socket  # never monkey-patched: greentap does its own waiting
import collections
import errno
import mmap
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

import gevent

from greentap.core import kernel_constants as kc
from greentap.core.coalesce import merge_datagrams
from greentap.core.ethernet import payload_offset
from greentap.core.kernel_constants import ETH_HLEN
from greentap.core.segment import SegmentError, cut, finished
from greentap.errors import EndpointClosed, GreentapError
from greentap.green import relay
from greentap.green.fdio import GreenFd
from greentap.ports.base import Port

__all__ = ["BATCH", "MAX_DATAGRAM", "Address", "SuperFrameSends", "SuperFrames"]

# Largest UDP payload (IPv4: 65535 - 20 - 8); IPv6 allows 65527.
MAX_DATAGRAM = 65507
BATCH = 64  # frames read back to back, and merged, before they are handed on

_recvmsg_into = _socket.socket.recvmsg_into
_GRO_SPACE = socket.CMSG_SPACE(4)  # the UDP_GRO control message: an int, the datagram size
_READ = MAX_DATAGRAM + 1024  # room for one read: a datagram, or what GRO joined
_GSO_SIZE = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")
_GSO_FIELDS = struct.Struct("=HH")  # the vnet header's gso_size and csum_start

Address = tuple[str, int]


class SuperFrameSends(Port):
    """The sending half of :class:`SuperFrames`: frames behind a vnet header cut,
    finished and sent, with UDP GSO where the kernel can.

    Subclasses provide the socket (``_io``), what goes before each frame
    (``_prefix``), where a frame goes (:meth:`_targets`) and by which socket
    (:meth:`_sender`), and the plain sends and counting.
    """

    _io: GreenFd
    _prefix: bytes
    drops: collections.Counter[str]
    gso = False  # sends use UDP_SEGMENT
    mtu: int | None = None  # the largest IP packet a frame sent may carry (udp://?mtu=)

    def _targets(self, frame: Any) -> Sequence[Address]:  # pragma: no cover - interface
        """The remotes a frame (no vnet header) goes to."""
        raise NotImplementedError

    def _sendmsg(  # pragma: no cover - interface
        self, buffers: Sequence[Any], size: int, addr: Address, sock: Any = None
    ) -> bool:
        raise NotImplementedError

    def _sender(self, frame: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def _sent(self, addr: Address, packets: int, size: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def _send_failed(  # pragma: no cover - interface
        self, exc: OSError, addr: Address, packets: int, sock: Any = None
    ) -> bool:
        raise NotImplementedError

    def _send_offloaded(self, frame: bytes | bytearray | memoryview) -> bool:
        """Send one frame behind its vnet header; return False if no remote got it.

        A super-frame leaves as segments, with UDP GSO where the kernel can.
        """
        if len(frame) < kc.VIRTIO_NET_HDR_SIZE + ETH_HLEN:
            self.drops["tx_runt"] += 1
            self.counters.tx_errors += 1
            return False
        if self.mtu is not None:
            fitted = self._fit(frame)
            if fitted is None:
                return self._refuse("tx_too_big")
            frame = fitted
        if not frame[1]:  # no segmentation: as it is, or with its checksum finished
            if not frame[0] & kc.VIRTIO_NET_HDR_F_NEEDS_CSUM:
                return self._send_one(memoryview(frame)[kc.VIRTIO_NET_HDR_SIZE :])
            try:
                (plain,) = finished(frame)
            except ValueError:
                return self._refuse("tx_bad_vnet_header")
            return self._send_one(plain)
        try:
            joined, each = cut(frame, self._prefix)
        except SegmentError:
            return self._refuse("tx_bad_super_frame")
        return self._send_segments(memoryview(joined), each)

    def _fits(self, frame: Any, at: int = 0) -> bool:
        """Whether the plain frame at ``frame[at:]`` carries at most :attr:`mtu` bytes."""
        return len(frame) - at - _l2_length(frame, at) <= self.mtu  # type: ignore[operator]

    def _fit(self, frame: Any) -> Any:
        """``frame`` (a vnet header first) within :attr:`mtu`: a super-frame with its
        segment size lowered to fit, or None for a plain frame that does not fit."""
        size = kc.VIRTIO_NET_HDR_SIZE
        if not frame[1]:
            return frame if self._fits(frame, size) else None
        gso_size, csum_start = _GSO_FIELDS.unpack_from(frame, 4)
        data_at = size + csum_start
        if data_at + 13 > len(frame):
            return frame  # cut() refuses it and says why
        kind = frame[1] & 0x7F
        l4_len = 8 if kind == kc.VIRTIO_NET_HDR_GSO_UDP_L4 else (frame[data_at + 12] >> 4) * 4
        room = self.mtu - (csum_start - _l2_length(frame, size)) - l4_len
        if room < 1:
            return None
        if gso_size <= room:
            return frame
        fitted = bytearray(frame)
        _GSO_FIELDS.pack_into(fitted, 4, room, csum_start)
        return fitted

    def _refuse(self, reason: str) -> bool:
        self.drops[reason] += 1
        self.counters.tx_errors += 1
        return False

    def _send_one(self, frame: Any) -> bool:
        prefix = self._prefix
        buffers = (prefix, frame) if prefix else (frame,)
        size = len(prefix) + len(frame)
        sock = self._sender(frame)
        sent = False
        for addr in self._targets(frame):
            sent = self._sendmsg(buffers, size, addr, sock) or sent
        return sent

    def _send_segments(self, joined: memoryview, each: int) -> bool:
        """Send datagrams of ``each`` bytes (the last may be shorter) laid end to end
        in ``joined``, up to 64 per ``sendmsg``."""
        step = max(1, min(kc.UDP_MAX_SEGMENTS, MAX_DATAGRAM // each)) * each
        first = joined[len(self._prefix) :]
        sock = self._sender(first)
        sent = False
        for addr in self._targets(first):
            for start in range(0, len(joined), step):
                chunk = joined[start : start + step]
                if self.gso and len(chunk) > each:
                    done = self._send_gso(chunk, each, addr, sock)
                    if done is not None:
                        sent = done or sent
                        continue
                for at in range(0, len(chunk), each):  # one by one: no GSO, or to learn which
                    datagram = chunk[at : at + each]
                    sent = self._sendmsg((datagram,), len(datagram), addr, sock) or sent
        return sent

    def _send_gso(self, chunk: memoryview, each: int, addr: Address, sock: Any) -> bool | None:
        """One ``sendmsg`` with ``UDP_SEGMENT``; None: send these one by one instead."""
        if sock is None:
            sock = self._io.holder.handle
            if sock is None:
                raise EndpointClosed(endpoint=self.name)
        count = -(-len(chunk) // each)
        try:
            sock.sendmsg((chunk,), [(kc.SOL_UDP, kc.UDP_SEGMENT, _GSO_SIZE.pack(each))], 0, addr)
        except OSError as exc:
            if self._io.closed:
                raise EndpointClosed(endpoint=self.name) from exc
            if exc.errno == errno.EIO:  # the way out has no checksum offload: no GSO here
                self.gso = False
                self.drops["tx_gso_off"] += 1
                self.notify("udp_gso_off", level="info", error="EIO from a UDP_SEGMENT send")
                return None
            if exc.errno in (errno.EINVAL, errno.EMSGSIZE):  # over the path MTU: each says so
                return None
            return self._send_failed(exc, addr, count, sock)
        self._sent(addr, count, len(chunk))
        return True


class SuperFrames(SuperFrameSends):
    """Offloads for a datagram port: what :class:`~greentap.ports.datagram.DatagramPort`
    switches to when opened with ``offload``.

    Besides what :class:`SuperFrameSends` needs, subclasses say whom a datagram
    comes from (:meth:`_admit`) and the VNI to check (``_vni``, -1 for none).
    """

    _vni = -1  # the VNI each datagram's VXLAN header must carry; -1: no header
    _short = "rx_runt"  # what a datagram too short for a frame is counted as
    offload = False  # frames carry a vnet header: this class's machinery is on
    gro = False  # the socket has UDP_GRO

    def _offloads(self, sock: Any) -> None:
        """Switch to frames behind a vnet header (called by the constructor)."""
        self.header_size = kc.VIRTIO_NET_HDR_SIZE
        self.max_frame_size = kc.MAX_L2_FRAME + self.header_size
        self.recv_into = self._recv_merged  # type: ignore[method-assign]
        self.send = self._send_offloaded  # type: ignore[method-assign]
        self.gso = True  # until a send says otherwise (EIO)
        try:
            sock.setsockopt(kc.SOL_UDP, kc.UDP_GRO, 1)
            self.gro = True
        except OSError:  # a kernel before 5.0: datagrams one by one, merged all the same
            pass
        if relay.recv_datagrams is not None:
            # A slot of 64 KiB per datagram of a batch (recvmmsg), mapped: pages
            # become resident only where datagrams land.
            self._rx: Any = mmap.mmap(-1, BATCH * _READ)
            self._fill = self._fill_c  # type: ignore[method-assign]
        else:  # a batch of reads laid one after another, each with room for 64 KiB
            self._rx = bytearray(4 * _READ)
        self._rx_view = memoryview(self._rx)
        self._pending: collections.deque[bytearray] = collections.deque()

    # --- what the subclasses say ------------------------------------------------
    def _admit(
        self, sender: Any, data: memoryview, size: int, count: int
    ) -> bool:  # pragma: no cover
        """Whether the ``count`` datagrams of one read (``size`` bytes each but the
        last) came from a remote; if not they are dropped and counted here."""
        raise NotImplementedError

    def _drop(self, reason: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _recv_failed(self, exc: OSError) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _recv_merged(self, buffer: bytearray | memoryview) -> int:
        """Read the next frame, with its vnet header, into ``buffer``; return its length.

        Frames come from batches: one (GRO) read waited for, then as many as
        are there without waiting, up to :data:`BATCH` datagrams, checked,
        opened and merged (:func:`~greentap.core.coalesce.merge_datagrams`).
        """
        pending = self._pending
        while not pending:
            self._fill()
        frame = pending.popleft()
        n = len(frame)
        buffer[:n] = frame
        return n

    def relay_to(
        self, sink: Any, on_send_error: Callable[[GreentapError], Any], mirrors: Sequence[Any]
    ) -> bool:
        """Forward every frame read to ``sink`` (a TAP, or any fd taking one frame per
        write), a batch at a time: a batch read and merged, then written in one C call
        (``write_frames``; its Python twin without the extension).

        Returns:
            False at once without offloads, with mirrors or for a sink that does
            not take a frame per write (the generic loop serves those);
            otherwise it returns only by raising.

        Raises:
            EndpointClosed: this port was closed.
        """
        if not self.offload or mirrors or not relay.takes_frames(sink):
            return False
        pending, budget = self._pending, self._io.budget
        written = 0
        while True:
            while not pending:
                self._fill()
            frames = list(pending)
            pending.clear()
            relay.write_all(frames, sink, on_send_error)
            written += len(frames)
            if written >= budget:  # never starve the hub: as the other relays yield
                written = 0
                gevent.sleep(0)

    def _fill(self) -> None:
        """Read one batch and merge it: at most :data:`BATCH` datagrams, whatever they
        hold (a flood of garbage cannot hold back the frames read before it), laid
        one read after another in the receive buffer while a read still fits."""
        rx, spans, used, datagrams = self._rx_view, [], 0, 0
        got = self._read_batch(rx[:_READ], wait=True)
        while got is not None:
            n, size, sender = got
            count = -(-n // size) if n else 1  # an empty datagram is one too
            datagrams += count
            if self._admit(sender, rx[used : used + n], size, count):
                spans.append((used, n, size))
                used += n
            if datagrams >= BATCH or len(rx) - used < _READ:
                break
            got = self._read_batch(rx[used : used + _READ], wait=False)
        if spans:
            self._merge(spans)

    def _merge(self, spans: list[tuple[int, int, int]]) -> None:
        """Open and merge what the batch read (``spans`` of the receive buffer); count it."""
        frames, accepted, size_total, short, no_i_flag, wrong_vni = merge_datagrams(
            self._rx, spans, self._vni
        )
        counters = self.counters
        counters.rx_packets += accepted
        counters.rx_bytes += size_total
        for reason, many in ((self._short, short), ("rx_no_i_flag", no_i_flag),
                             ("rx_wrong_vni", wrong_vni)):  # fmt: skip
            if many:
                self.drops[reason] += many
                counters.rx_errors += many
        self._pending.extend(frames)

    def _fill_c(self) -> None:
        """:meth:`_fill` with one ``recvmmsg`` for the batch, each datagram in a slot."""
        rx, spans = self._rx_view, []
        for offset, n, size, truncated, host, port in self._io.read(self._recv_datagrams, None):
            if truncated:
                self._drop("rx_truncated")
                continue
            count = -(-n // size) if n else 1
            if self._admit((host, port), rx[offset : offset + n], size, count):
                spans.append((offset, n, size))
        if spans:
            self._merge(spans)

    def _recv_datagrams(self, sock: Any, _: Any) -> list[tuple[int, int, int, bool, str, int]]:
        """One recvmmsg; an error that is not EAGAIN (an ICMP error) is read and retried."""
        while True:
            try:
                return relay.recv_datagrams(sock.fileno(), self._rx, 0, _READ, BATCH)
            except BlockingIOError:
                raise
            except OSError as exc:
                self._recv_failed(exc)

    def _read_batch(self, buffer: memoryview, *, wait: bool) -> tuple[int, int, Any] | None:
        """One read into ``buffer`` of a datagram, or of many that GRO joined:
        ``(n, datagram size, sender)``.

        Returns None when ``wait`` is False and nothing is there.
        """
        io, buffers = self._io, (buffer,)
        while True:
            try:
                if wait:
                    n, ancillary, flags, sender = io.read(_recv_gro, buffers)
                else:
                    sock = io.holder.handle
                    if sock is None:
                        raise EndpointClosed(endpoint=self.name)
                    n, ancillary, flags, sender = _recv_gro(sock, buffers)
                    io.count()
            except BlockingIOError:
                return None
            except OSError as exc:
                self._recv_failed(exc)
                io.count()
                continue
            if flags & socket.MSG_TRUNC:
                self._drop("rx_truncated")
                continue
            size = n
            for level, kind, data in ancillary:
                if level == kc.SOL_UDP and kind == kc.UDP_GRO and len(data) >= 4:
                    size = _GRO_SIZE.unpack_from(data)[0] or n
            return n, size, sender


def _l2_length(frame: Any, at: int) -> int:
    """The Ethernet header's length, tags included, of the frame at ``frame[at:]``
    (all of it when it ends inside them)."""
    found = payload_offset(frame, at)
    return (found[0] if found is not None else len(frame)) - at


def _recv_gro(sock: Any, buffers: tuple[Any, ...]) -> tuple[int, list[Any], int, Any]:
    return _recvmsg_into(sock, buffers, _GRO_SPACE)

"""Streams beside TAPs with offloads: super-frames cut on the way out, merged on the way in.

QEMU's stream framing carries plain frames: no virtio-net header, so no
super-frames.  Beside a TAP opened with offloads, whose TCP comes as 64 KiB
super-frames, a :class:`SuperStream` does in software what the tunnels do
(:mod:`~greentap.ports.superframes`):

* leaving: a super-frame is cut into its segments (:func:`~greentap.core.segment.cut`,
  in C where it was built), each behind its length, all queued at once; a
  frame whose checksum was left to the NIC is finished; the vnet header is
  dropped;
* arriving: the frames of each read are checked and the TCP segments of one
  flow merged into super-frames behind a vnet header
  (:func:`~greentap.core.coalesce.merge_datagrams`, the kernel's GRO rules,
  checksums verified first), written to the TAP one super-frame per write.

So a TAP reads and writes a few 64 KiB super-frames where it would otherwise
move forty-odd frames, one system call each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from greentap.core import kernel_constants as kc
from greentap.core.coalesce import merge_datagrams
from greentap.core.kernel_constants import ETH_HLEN
from greentap.core.segment import SegmentError, cut, finished
from greentap.core.streamframe import HEADER_SIZE, MAX_FRAME
from greentap.errors import GreentapError
from greentap.green import relay
from greentap.ports.stream import StreamConnection

__all__ = ["SuperStream"]

_HDR = kc.VIRTIO_NET_HDR_SIZE
_NO_LENGTH = bytes(HEADER_SIZE)  # stands for each segment's length (cut() fills it in)


class SuperStream(StreamConnection):
    """A :class:`~greentap.ports.stream.StreamConnection` whose frames carry a vnet header.

    Takes the same arguments.  Its :attr:`header_size` is the vnet header's;
    the frames it reads are merged super-frames; a TAP's frames reach it in
    gathered batches, the vnet header left out, but for those that need work
    (a super-frame to cut, a checksum to finish), which go through :meth:`send`.
    """

    header_size = _HDR

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.max_frame_size = _HDR + MAX_FRAME
        self._merged: list[bytearray] = []
        self._taken = 0

    # --- leaving -------------------------------------------------------------
    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """Queue a frame behind its vnet header: a super-frame as its segments.

        Returns:
            False if it was dropped (counted by reason).
        """
        if len(frame) < _HDR + ETH_HLEN:
            return self._refuse("tx_runt")
        if not frame[1]:  # no segmentation: as it is, or with its checksum finished
            if not frame[0] & kc.VIRTIO_NET_HDR_F_NEEDS_CSUM:
                return super().send(memoryview(frame)[_HDR:])
            try:
                (plain,) = finished(frame)
            except ValueError:
                return self._refuse("tx_bad_vnet_header")
            return super().send(plain)
        try:
            joined, each = cut(frame, _NO_LENGTH, True)  # each segment behind its length
        except SegmentError:
            return self._refuse("tx_bad_super_frame")
        count = -(-len(joined) // each)
        if len(self._pending) + len(joined) > self.send_buffer:
            self.drops["tx_backpressure"] += 1
            self.counters.tx_dropped += 1
            return False
        self.send_gathered(memoryview(joined), count, len(joined) - HEADER_SIZE * count, 0)
        return True

    def close(self) -> None:
        """As :meth:`StreamConnection.close`; merged frames not handed out yet go too."""
        self._merged, self._taken = [], 0
        super().close()

    def _refuse(self, reason: str) -> bool:
        self.drops[reason] += 1
        self.counters.tx_errors += 1
        return False

    # --- arriving ------------------------------------------------------------
    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Copy the next (merged) frame, its vnet header first, into ``buffer``.

        Raises:
            As :meth:`StreamConnection.recv_into`.
        """
        io = self._io
        io.before_read()
        while self._taken >= len(self._merged):
            self._merge()
        frame = self._merged[self._taken]
        self._taken += 1
        n = len(frame)
        buffer[:n] = frame
        io.count()
        return n

    def _merge(self) -> None:
        """Read more, split it into frames and merge those into super-frames."""
        offsets, too_long = self._split()
        lengths = offsets[1::2]
        merged, rx, rx_bytes, *_ = merge_datagrams(
            self._rview, list(zip(offsets[::2], lengths, lengths, strict=True)), -1
        )
        self.counters.rx_packets += rx
        self.counters.rx_bytes += rx_bytes
        self._merged, self._taken = merged, 0
        if too_long:
            self._ends_after(too_long, len(merged))

    def relay_to(
        self, sink: Any, on_send_error: Callable[[GreentapError], Any], mirrors: Sequence[Any]
    ) -> bool:
        """Write the merged super-frames of every read to ``sink`` (a TAP), in one call
        a read (``write_frames``).

        Returns:
            False at once with mirrors or for a sink that does not take a frame
            per write; otherwise it returns only by raising.
        """
        if mirrors or not relay.takes_frames(sink):
            return False
        io = self._io
        while True:
            waiting = self._merged[self._taken :]
            self._merged, self._taken = [], 0
            if waiting:
                relay.write_all(waiting, sink, on_send_error)
                io.count(len(waiting) // io.budget)
            self._merge()

"""TPACKET_V3 receive rings: their geometry, reading a block, putting VLAN tags back.  Pure.

A packet socket with a ``TPACKET_V3`` ring (``linux/if_packet.h``,
``Documentation/networking/packet_mmap.rst``) hands the reader whole
*blocks*: the kernel fills one with frames and gives it to user space when
it is full or its retire timer fires; one wake-up then covers every frame
in it, read in place.  The reader gives each block back by writing
``TP_STATUS_KERNEL`` into its status.

Everything here reads bytes the kernel wrote and trusts none of it: every
offset and length is checked against the block, and a block that does not
add up is refused whole (:class:`RingCorrupt`) rather than read out of
bounds.  The per-frame work in C (``greentap/green/_relay.c``) follows the
same rules and runs under the same tests.

The kernel moves an 802.1Q or 802.1ad tag out of a received frame into the
frame's metadata (``tp_vlan_tci``, ``tp_vlan_tpid``); :func:`frame_with_tag`
puts it back where it was, so a tagged frame leaves the forwarder as it
arrived on the wire.
"""

from __future__ import annotations

import dataclasses
import struct

from greentap.core import kernel_constants as kc
from greentap.core.segment import finished

__all__ = [
    "BLOCK_HEADER",
    "PACKET_HEADER",
    "STATUS_OFFSET",
    "RingCorrupt",
    "RingGeometry",
    "Slot",
    "block_ready",
    "frame_at",
    "frame_with_tag",
    "open_block",
    "plain_frames",
    "read_block",
]

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1:
# block_status, num_pkts, offset_to_first_pkt, blk_len, seq_num (and two
# timestamps we do not read).  Host byte order: the kernel writes it.
BLOCK_HEADER = struct.Struct("=IIIIIIQ")
BLOCK_HEADER_SIZE = 48  # BLK_PLUS_PRIV(0): the descriptor, 8-aligned
STATUS_OFFSET = 8  # of block_status in the block
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len,
# tp_status, tp_mac, tp_net, then hv1: tp_rxhash, tp_vlan_tci, tp_vlan_tpid.
PACKET_HEADER = struct.Struct("=IIIIIIHHIIH")
_STATUS = struct.Struct("=I")
_TAG = struct.Struct("!HH")
# struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start,
# csum_offset (host order for a legacy header, as TAPs and packet sockets use).
_VNET = struct.Struct("=BBHHHH")
_CSUM_START = 6  # offset of csum_start in the vnet header


class RingCorrupt(ValueError):
    """A ring block's offsets or lengths do not fit in the block: refused whole."""


@dataclasses.dataclass(frozen=True)
class RingGeometry:
    """The shape of a receive ring.

    Attributes:
        block_size: bytes per block: a power of two, at least a page; a
            block must hold the largest frame (a 64 KiB super-frame) with
            its headers, so at least 128 KiB.
        block_count: blocks in the ring (memory: ``block_size * block_count``).
        retire_ms: how long the kernel keeps a block that is not full before
            handing it over: the latency a lone frame can see (1 ms, the least).
    """

    block_size: int = 1 << 18
    block_count: int = 32
    retire_ms: int = 1
    frame_size: int = 2048  # only for the request's bookkeeping in V3

    def __post_init__(self) -> None:
        size = self.block_size
        if size < 1 << 17 or size & (size - 1):
            raise ValueError(f"block_size {size}: a power of two of at least 128 KiB")
        if not 1 <= self.block_count <= 1 << 16:
            raise ValueError(f"block_count {self.block_count}: 1 to 65536")
        if not 1 <= self.retire_ms <= 1000:
            raise ValueError(f"retire_ms {self.retire_ms}: 1 to 1000")

    @property
    def size(self) -> int:
        """Bytes to map: every block."""
        return self.block_size * self.block_count

    def request(self) -> bytes:
        """The ``struct tpacket_req3`` for ``PACKET_RX_RING``."""
        frames = self.size // self.frame_size
        return struct.pack(
            "=7I", self.block_size, self.block_count, self.frame_size, frames,
            self.retire_ms, 0, 0,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one frame of a block lies, and what the kernel said about it.

    Attributes:
        start: offset of the frame (with its vnet header, if any) in the ring.
        length: bytes of the frame from ``start`` (the vnet header included).
        truncated: the kernel cut the frame to fit (``tp_snaplen < tp_len``).
        tag: the VLAN tag taken out of the frame, as ``(tpid, tci)``, or None.
    """

    start: int
    length: int
    truncated: bool
    tag: tuple[int, int] | None


def block_ready(ring: object, base: int) -> bool:
    """True if the block at ``base`` belongs to user space (the kernel filled it)."""
    return bool(_STATUS.unpack_from(ring, base + STATUS_OFFSET)[0] & kc.TP_STATUS_USER)  # type: ignore[arg-type]


def open_block(ring: object, base: int, block_size: int) -> tuple[int, int]:
    """How many frames the ready block at ``base`` holds, and where the first one starts.

    Returns:
        ``(count, offset of the first frame's header in ring)``.

    Raises:
        RingCorrupt: the first frame would start inside the block descriptor or past the end.
    """
    _, _, _, count, first, _, _ = BLOCK_HEADER.unpack_from(ring, base)  # type: ignore[arg-type]
    if count and (first < BLOCK_HEADER_SIZE or first + PACKET_HEADER.size > block_size):
        raise RingCorrupt(f"the first of {count} frames starts outside the block")
    return count, base + first


def frame_at(ring: object, offset: int, end: int, header: int, last: bool) -> tuple[Slot, int]:
    """The frame whose ``tpacket3_hdr`` is at ``offset``, and where the next one starts.

    Args:
        ring: the mapped ring.
        offset: the frame header's offset in ``ring``.
        end: the offset where its block ends.
        header: bytes of vnet header the kernel puts before each frame.
        last: it is the block's last frame (its next offset is not used).

    Returns:
        ``(slot, offset of the next frame's header)``.

    Raises:
        RingCorrupt: the header, the frame or the next offset lie outside the block.
    """
    if offset + PACKET_HEADER.size > end:
        raise RingCorrupt("a frame starts outside the block")
    nxt, _, _, snap, length, status, mac, _, _, tci, tpid = PACKET_HEADER.unpack_from(ring, offset)  # type: ignore[arg-type]
    start = offset + mac - header
    if mac - header < PACKET_HEADER.size or start + header + snap > end:
        raise RingCorrupt("a frame lies outside the block")
    if not last and nxt < PACKET_HEADER.size:
        raise RingCorrupt("a frame points back into itself")
    tag = None
    if status & kc.TP_STATUS_VLAN_VALID or tci:
        # tp_vlan_tci is 32 bits wide; a TCI is the low 16 (as the C loop reads it).
        tag = (tpid if status & kc.TP_STATUS_VLAN_TPID_VALID else kc.ETH_P_8021Q, tci & 0xFFFF)
    return Slot(start, header + snap, snap < length, tag), offset + nxt


def read_block(ring: object, base: int, block_size: int, header: int = 0) -> list[Slot]:
    """List the frames of the block at ``base`` of ``ring`` (:func:`open_block` and
    :func:`frame_at` over the whole block).

    Raises:
        RingCorrupt: an offset or length points outside the block.
    """
    count, offset = open_block(ring, base, block_size)
    slots = []
    for i in range(count):
        slot, offset = frame_at(ring, offset, base + block_size, header, i + 1 == count)
        slots.append(slot)
    return slots


def frame_with_tag(
    frame: bytes | bytearray | memoryview, header: int, tag: tuple[int, int]
) -> bytes:
    """Put a VLAN tag the kernel took out back into the frame, after the MAC addresses.

    Args:
        frame: the frame as the ring holds it (a vnet header first, if any).
        header: bytes of vnet header before the Ethernet header (0 or 10).
        tag: ``(tpid, tci)``.

    Returns:
        The frame with the tag; with a vnet header whose checksum must still
        be filled in, ``csum_start`` moved past the tag (as a TAP does).

    Raises:
        ValueError: the frame is shorter than two MAC addresses.
    """
    macs = header + 2 * kc.ETH_ALEN
    if len(frame) < macs:
        raise ValueError(f"a frame of {len(frame)} bytes has no room for a tag")
    head = bytearray(frame[:macs])
    if header:
        flags, _, _, _, csum_start, _ = _VNET.unpack_from(head)
        if flags & kc.VIRTIO_NET_HDR_F_NEEDS_CSUM:
            struct.pack_into("=H", head, _CSUM_START, (csum_start + kc.VLAN_HLEN) & 0xFFFF)
    return bytes(head) + _TAG.pack(*tag) + bytes(frame[macs:])


def plain_frames(
    frame: bytes | bytearray | memoryview, tag: tuple[int, int] | None
) -> list[bytearray]:
    """The frame without its vnet header, finished as a NIC would have: the tag put
    back, a checksum left to the NIC filled in, a super-frame cut into segments.

    For a port whose frames carry no vnet header (offloads off): the packet
    socket always reads one, so that what a sender on this host left to the
    NIC (``NEEDS_CSUM``, GSO) is done here instead of passed on unfinished.

    Args:
        frame: a vnet header, then the frame.
        tag: a VLAN tag to put back, as :func:`frame_with_tag`, or None.

    Returns:
        The Ethernet frame, or the segments of a super-frame
        (:func:`greentap.core.segment.segment`).

    Raises:
        ValueError: a runt, checksum offsets outside the frame, or a
            super-frame that cannot be cut (:class:`~greentap.core.segment.SegmentError`).
    """
    size = kc.VIRTIO_NET_HDR_SIZE
    if len(frame) < size + kc.ETH_HLEN:
        raise ValueError(f"a frame of {len(frame)} bytes with its vnet header is a runt")
    if tag is not None:
        frame = frame_with_tag(frame, size, tag)
    return finished(frame)

"""TPACKET_V2 transmit rings: their geometry, a frame's header, the send hint.  Pure.

A packet socket with a transmit ring (``PACKET_TX_RING``,
``Documentation/networking/packet_mmap.rst``) takes frames written into
mapped slots: user space fills slots in order, marks each
``TP_STATUS_SEND_REQUEST``, and one ``send()`` with no data hands every
marked slot to the driver, where ``sendmmsg()`` would cost a message (its
header copied in, its socket checks) per frame.

The kernel keeps its own position (the ring's *head*) and only ever looks
at the slot there: it sends marked slots one after the other and stops at
the first unmarked one, or at a slot it could not send, which it leaves
marked (or marks ``TP_STATUS_WRONG_FORMAT``) without moving on.  So the
filler keeps one rule: after every send, each slot it filled has either
been taken (``AVAILABLE`` once sent, ``SENDING`` while the driver holds it)
or is given back by the filler (``AVAILABLE`` again), and its next slot is
the kernel's head.  ``greentap/green/_relay.c`` (``relay_batch_to_ring``)
and its twin :mod:`greentap.green.txring` follow that rule.

The kernel has no ``TPACKET_V3`` transmit ring, so the ring lives on a
socket of its own (``TPACKET_V2``), beside the receive ring's.
"""

from __future__ import annotations

import dataclasses
import mmap
import struct

from greentap.core import kernel_constants as kc

__all__ = ["DATA_OFFSET", "TX_HEADER", "TxGeometry", "hint_linear"]

# struct tpacket2_hdr: tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_sec,
# tp_nsec, tp_vlan_tci, tp_vlan_tpid, tp_padding.  Host byte order.
TX_HEADER = struct.Struct("=IIIHHIIHH4x")
#: Where a slot's frame starts: TPACKET_ALIGN(sizeof(struct tpacket2_hdr)),
#: what the kernel reads from when no tp_mac offset is asked for.
DATA_OFFSET = 32
# How much of a small frame the kernel should copy into the packet's head:
# all of it, up to this, so that the receiving stack finds its headers
# there instead of pulling them out of the ring's pages one by one.
_LINEAR = 128
# hdr_len in struct virtio_net_hdr, in host order (a packet socket's legacy header).
_HDR_LEN = struct.Struct("=H")
_HDR_LEN_OFFSET = 2


@dataclasses.dataclass(frozen=True)
class TxGeometry:
    """The shape of a transmit ring.

    A slot holds a frame of an ordinary MTU with its headers; a larger one
    (a super-frame, a jumbo frame) is sent on its own with ``sendmsg()``.

    Attributes:
        frame_size: bytes per slot, its header included: a multiple of 16 of
            at least 64 (the kernel's header and address take 52).
        frames_per_block: slots per block; a block is ``frame_size *
            frames_per_block`` bytes, a whole number of pages, so the slots
            lie back to back in the mapping.
        block_count: blocks in the ring.
    """

    frame_size: int = 2048
    frames_per_block: int = 32
    block_count: int = 16

    def __post_init__(self) -> None:
        if self.frame_size < 64 or self.frame_size % 16:
            raise ValueError(f"frame_size {self.frame_size}: a multiple of 16 of at least 64")
        if self.frames_per_block < 1 or self.block_size % mmap.PAGESIZE:
            raise ValueError(
                f"{self.frames_per_block} slots of {self.frame_size} bytes: a block must be "
                f"a whole number of {mmap.PAGESIZE}-byte pages"
            )
        if not 1 <= self.block_count <= 1 << 12:
            raise ValueError(f"block_count {self.block_count}: 1 to 4096")

    @property
    def block_size(self) -> int:
        """Bytes per block."""
        return self.frame_size * self.frames_per_block

    @property
    def frame_count(self) -> int:
        """Slots in the ring."""
        return self.frames_per_block * self.block_count

    @property
    def size(self) -> int:
        """Bytes to map: every block."""
        return self.block_size * self.block_count

    @property
    def room(self) -> int:
        """The largest frame (its vnet header included) a slot holds."""
        return self.frame_size - DATA_OFFSET

    def request(self) -> bytes:
        """The ``struct tpacket_req`` for ``PACKET_TX_RING``."""
        return struct.pack("=4I", self.block_size, self.block_count, self.frame_size,
                           self.frame_count)  # fmt: skip


def hint_linear(slot: memoryview, length: int) -> None:
    """Ask the kernel to copy a small frame whole into the packet's head.

    The kernel copies ``hdr_len`` bytes of a ring frame (at least the
    Ethernet header) and passes the rest by reference to the ring's pages;
    a receiving stack then pulls each header out of those pages.  For a
    frame that is not a super-frame ``hdr_len`` is only that hint, so it is
    raised to the frame's length, up to 128 bytes; a super-frame's (its
    headers, for segmentation) is left alone, as is a larger one already
    there.

    Args:
        slot: the frame as it lies in the slot, its vnet header first.
        length: the frame's length, the vnet header included.
    """
    frame = length - kc.VIRTIO_NET_HDR_SIZE
    if frame <= 0 or slot[1] != kc.VIRTIO_NET_HDR_GSO_NONE:
        return
    want = min(frame, _LINEAR)
    if _HDR_LEN.unpack_from(slot, _HDR_LEN_OFFSET)[0] < want:
        _HDR_LEN.pack_into(slot, _HDR_LEN_OFFSET, want)

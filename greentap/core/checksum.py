"""The Internet checksum (RFC 1071), and finishing one the sender left to the NIC.  Pure.

A frame handed over with a virtio-net header flagged ``NEEDS_CSUM`` (the
kernel's ``CHECKSUM_PARTIAL``) carries in its TCP or UDP checksum field only
the sum of the pseudo-header: the rest is the NIC's job.  A port that hands
such a frame to something without checksum offload (a TAP opened without a
vnet header, a tunnel) finishes it first, as the kernel's
``skb_checksum_help`` does.
"""

from __future__ import annotations

import struct

from greentap.core._accel import offload

__all__ = [
    "finish_checksum",
    "ones_complement_sum",
    "pseudo_header",
    "python_ones_complement_sum",
]

_FIELD = struct.Struct("!H")


def python_ones_complement_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit ones' complement sum of ``data`` (big-endian words, odd length padded).

    Computed on one big integer: as 2**16 is 1 modulo 0xFFFF, the sum of the
    words is the number itself modulo 0xFFFF (0xFFFF standing for a
    non-zero multiple).
    """
    if len(data) % 2:
        data = bytes(data) + b"\0"
    value = int.from_bytes(data, "big")
    folded = value % 0xFFFF
    return 0xFFFF if folded == 0 and value else folded


# The C twin where it was built (greentap/core/_offload.c); the same results.
ones_complement_sum = offload.checksum if offload is not None else python_ones_complement_sum


def pseudo_header(addresses: bytes, proto: int, length: int) -> bytes:
    """The TCP/UDP pseudo-header (RFC 793, RFC 8200 section 8.1) the checksum covers.

    Args:
        addresses: source then destination address: 8 bytes for IPv4, 32 for IPv6.
        proto: the transport protocol (6 TCP, 17 UDP).
        length: the transport header and payload's length.
    """
    if len(addresses) == 8:
        return addresses + struct.pack("!HH", proto, length)
    return addresses + struct.pack("!II", length, proto)


def finish_checksum(frame: bytearray | memoryview, start: int, offset: int) -> None:
    """Fill in the checksum of ``frame[start:]`` at ``start + offset``, in place.

    Args:
        frame: the frame (its Ethernet header first, no vnet header).
        start: where the checksummed part begins (the vnet header's ``csum_start``).
        offset: where its checksum field lies, from ``start`` (``csum_offset``);
            the field holds the pseudo-header's sum.

    Raises:
        ValueError: the field does not lie inside the frame.
    """
    at = start + offset
    if start < 0 or offset < 0 or at + 2 > len(frame):
        raise ValueError(
            f"checksum field at {start}+{offset} outside a frame of {len(frame)} bytes"
        )
    checksum = ~ones_complement_sum(memoryview(frame)[start:]) & 0xFFFF
    _FIELD.pack_into(frame, at, checksum or 0xFFFF)  # 0 is sent as 0xFFFF (CSUM_MANGLED_0)

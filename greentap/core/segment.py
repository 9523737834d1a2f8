"""Segmentation offload in software: a super-frame cut into the frames a NIC would send.  Pure.

A frame with a virtio-net header whose ``gso_type`` is not NONE is a
*super-frame*: one TCP (or UDP, with USO) payload of up to 64 KiB behind one
set of headers, which the NIC (or the kernel, on the way out) cuts into
segments of ``gso_size`` bytes.  A port that must hand frames to something
without segmentation offload (a TAP opened without a vnet header, a tunnel)
cuts it here instead, as wireguard-go's ``gsoSplit`` (tun/offload_linux.go)
and the kernel's ``tcp_gso_segment`` do:

- every segment gets a copy of the headers; IPv4's total length, identifier
  (incremented per segment) and header checksum, or IPv6's payload length;
- TCP: the sequence number advances by the bytes before it; FIN and PSH stay
  on the last segment only, CWR on the first only; the checksum is computed
  whole over each segment;
- UDP (``GSO_UDP_L4``): each segment its own datagram, with its length and
  checksum.

Frames may carry 802.1Q/802.1ad tags (any number) before the IP header.
Everything is checked against the frame and nothing is truncated: a header
that does not add up raises :class:`SegmentError`.
"""

from __future__ import annotations

import struct

from greentap.core import kernel_constants as kc
from greentap.core._accel import offload
from greentap.core.checksum import finish_checksum, ones_complement_sum, pseudo_header
from greentap.core.ethernet import payload_offset

__all__ = [
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP_L4",
    "SegmentError",
    "cut",
    "finished",
    "python_cut",
    "segment",
]

# linux/virtio_net.h: gso_type values.
GSO_TCPV4 = 1
GSO_UDP = 3  # UFO: IPv4 fragmentation, long gone from the kernel; refused
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

_VNET = struct.Struct("=BBHHHH")
_IPV4_SUM_AT, _IPV4_ID_AT, _IPV4_LEN_AT = 10, 4, 2
_IPV6_LEN_AT = 4
_TCP_SEQ_AT, _TCP_FLAGS_AT, _TCP_SUM_AT = 4, 13, 16
_UDP_LEN_AT, _UDP_SUM_AT = 4, 6
_FIN, _PSH, _CWR = 0x01, 0x08, 0x80
_PROTO_TCP, _PROTO_UDP = 6, 17
MAX_SEGMENTS = 1 << 16  # more than a 64 KiB payload can make, even at gso_size 1


class SegmentError(ValueError):
    """A super-frame whose headers do not add up: refused whole."""


if offload is not None:
    offload.set_segment_error(SegmentError)  # what its segment() raises


def segment(frame: bytes | bytearray | memoryview) -> list[bytearray]:
    """Cut a super-frame (a vnet header first) into finished Ethernet frames.

    Args:
        frame: a 10-byte virtio-net header, then the Ethernet frame.

    Returns:
        The segments, without vnet header, each with its checksums filled in.

    Raises:
        SegmentError: not a super-frame this can cut (UFO, an unknown type), or
            headers, offsets and lengths that do not add up.
    """
    size = kc.VIRTIO_NET_HDR_SIZE
    if len(frame) < size + kc.ETH_HLEN:
        raise SegmentError(f"a super-frame of {len(frame)} bytes is a runt")
    _, gso_type, _, gso_size, csum_start, _ = _VNET.unpack_from(frame)
    kind = gso_type & ~GSO_ECN
    data = memoryview(frame)[size:]
    if kind not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        raise SegmentError(f"gso type {gso_type} cannot be segmented here")
    if gso_size == 0:
        raise SegmentError("gso_size 0")
    found = payload_offset(data)
    if found is None:
        raise SegmentError("the frame ends inside its Ethernet header")
    ip_at, ethertype = found
    v4 = ethertype == 0x0800
    if not v4 and ethertype != 0x86DD:
        raise SegmentError(f"ethertype {ethertype:#06x} is not IP")
    if (kind == GSO_TCPV4 and not v4) or (kind == GSO_TCPV6 and v4):
        raise SegmentError("the gso type and the IP version disagree")
    l4_at = csum_start  # the transport header: where its checksum starts
    minimum = 20 if v4 else 40
    if l4_at < ip_at + minimum or l4_at + 8 > len(data):
        raise SegmentError(f"csum_start {csum_start} is not a transport header in this frame")
    if v4 and (data[ip_at] >> 4 != 4 or (data[ip_at] & 0xF) * 4 != l4_at - ip_at):
        raise SegmentError("the IPv4 header's length does not reach csum_start")
    if not v4 and data[ip_at] >> 4 != 6:
        raise SegmentError("not an IPv6 header")
    proto = data[ip_at + 9] if v4 else data[ip_at + 6]
    tcp = kind != GSO_UDP_L4
    if tcp:
        l4_len = (data[l4_at + 12] >> 4) * 4 if l4_at + 20 <= len(data) else 0
        if proto != _PROTO_TCP or l4_len < 20 or l4_at + l4_len > len(data):
            raise SegmentError("not a whole TCP header at csum_start")
    else:
        l4_len = 8
        if proto != _PROTO_UDP:
            raise SegmentError("not a UDP header at csum_start")
    headers = l4_at + l4_len
    payload = data[headers:]
    if (l4_at - ip_at - (0 if v4 else 40)) + l4_len + min(gso_size, len(payload)) > 0xFFFF:
        raise SegmentError("a segment longer than IP allows")
    count = -(-len(payload) // gso_size)
    if count > MAX_SEGMENTS:
        raise SegmentError(f"{count} segments")
    if count <= 1:  # nothing to cut: finish it as one frame
        count = 1
    src_dst = bytes(data[ip_at + 12 : ip_at + 20] if v4 else data[ip_at + 8 : ip_at + 40])
    out = []
    seq = struct.unpack_from("!I", data, l4_at + _TCP_SEQ_AT)[0] if tcp else 0
    ident = struct.unpack_from("!H", data, ip_at + _IPV4_ID_AT)[0] if v4 else 0
    flags = data[l4_at + _TCP_FLAGS_AT] if tcp else 0
    for i in range(count):
        chunk = payload[i * gso_size : (i + 1) * gso_size]
        seg = bytearray(data[:headers])
        seg += chunk
        l4_total = l4_len + len(chunk)
        if v4:
            struct.pack_into("!H", seg, ip_at + _IPV4_LEN_AT, l4_at - ip_at + l4_total)
            struct.pack_into("!H", seg, ip_at + _IPV4_ID_AT, (ident + i) & 0xFFFF)
            struct.pack_into("!H", seg, ip_at + _IPV4_SUM_AT, 0)
            ip_sum = ~ones_complement_sum(memoryview(seg)[ip_at:l4_at]) & 0xFFFF
            struct.pack_into("!H", seg, ip_at + _IPV4_SUM_AT, ip_sum)
        else:
            struct.pack_into("!H", seg, ip_at + _IPV6_LEN_AT, l4_at - ip_at - 40 + l4_total)
        if tcp:
            struct.pack_into("!I", seg, l4_at + _TCP_SEQ_AT, (seq + i * gso_size) & 0xFFFFFFFF)
            mask = 0xFF
            if i + 1 < count:
                mask &= ~(_FIN | _PSH)
            if i > 0:
                mask &= ~_CWR
            seg[l4_at + _TCP_FLAGS_AT] = flags & mask
            at = l4_at + _TCP_SUM_AT
        else:
            struct.pack_into("!H", seg, l4_at + _UDP_LEN_AT, l4_total)
            at = l4_at + _UDP_SUM_AT
        struct.pack_into("!H", seg, at, 0)
        pseudo = pseudo_header(src_dst, proto, l4_total)
        l4_sum = ~ones_complement_sum(pseudo + bytes(memoryview(seg)[l4_at:])) & 0xFFFF
        struct.pack_into("!H", seg, at, l4_sum or (0xFFFF if not tcp else 0))
        out.append(seg)
    return out


def finished(frame: bytes | bytearray | memoryview) -> list[bytearray]:
    """The frames a NIC would send for ``frame`` (a vnet header first), without the header.

    A checksum left to the NIC (``NEEDS_CSUM``) is filled in; a super-frame is
    cut into segments (:func:`segment`); anything else comes back as it is.

    Args:
        frame: a 10-byte virtio-net header, then the Ethernet frame.

    Returns:
        The Ethernet frame, or the segments of a super-frame.

    Raises:
        ValueError: a runt, checksum offsets outside the frame, or a
            super-frame that cannot be cut (:class:`SegmentError`).
    """
    size = kc.VIRTIO_NET_HDR_SIZE
    if len(frame) < size + kc.ETH_HLEN:
        raise ValueError(f"a frame of {len(frame)} bytes with its vnet header is a runt")
    flags, gso_type, _, _, csum_start, csum_offset = _VNET.unpack_from(frame)
    if gso_type != kc.VIRTIO_NET_HDR_GSO_NONE:
        return segment(frame)
    out = bytearray(memoryview(frame)[size:])
    if flags & kc.VIRTIO_NET_HDR_F_NEEDS_CSUM:
        finish_checksum(out, csum_start, csum_offset)
    return [out]


def python_cut(
    frame: bytes | bytearray | memoryview, prefix: bytes, lengths: bool = False
) -> tuple[bytes, int]:
    """The segments of a super-frame, each behind ``prefix``, joined into one buffer.

    What a UDP GSO send takes: datagrams of one size (``each``) but the last.

    Args:
        frame: a 10-byte virtio-net header, then the Ethernet frame.
        prefix: what goes before each segment (a VXLAN header, or nothing).
        lengths: ``prefix`` is 4 bytes standing for each segment's length,
            big-endian: QEMU's stream framing.

    Returns:
        ``(buffer, each)``: ``each`` is the first datagram's length.

    Raises:
        SegmentError: as :func:`segment`.
        ValueError: ``lengths`` with a prefix that is not 4 bytes.
    """
    if lengths and len(prefix) != 4:
        raise ValueError("lengths: the prefix must be 4 bytes")
    pieces = segment(frame)
    if lengths:
        joined = b"".join(len(piece).to_bytes(4, "big") + piece for piece in pieces)
    else:
        joined = b"".join(prefix + piece for piece in pieces)
    return joined, len(prefix) + len(pieces[0])


# The C twin where it was built (greentap/core/_offload.c); the same results.
cut = offload.segment if offload is not None else python_cut

"""Receive offload in software: TCP segments of one flow merged into a super-frame.  Pure.

A tunnel carries finished frames, one per datagram; a TAP opened with
offloads takes *super-frames* (a virtio-net header saying "cut me into
segments of ``gso_size``"), and one 64 KiB write costs the kernel about what
one 1450-byte write does.  So a tunnel port merges what it read in one batch
before handing it on, as the kernel's ``tcp_gro_receive`` and wireguard-go's
``tcpGRO`` (tun/offload_linux.go) do.  Segment B is appended to the
super-frame A held for its flow (same Ethernet header and tags, addresses and
ports) only when:

- both are TCP over IPv4 without options and not fragmented, or over IPv6
  without extension headers, and the frame ends where the IP length says;
- both checksums check (a damaged segment is passed on as it came, for the
  receiver to drop: merging would give it a fresh, valid checksum);
- B's flags are ACK, or ACK and PSH; PSH ends the super-frame;
- B's sequence number is the next one A expects; ACK number, data offset,
  window and options (timestamps included) are equal, and so are the IP
  fields that matter (TOS/traffic class, TTL/hop limit, DF, flow label);
- B carries no more payload than A's first segment (``gso_size``), and A's
  last segment was full: a short segment ends a super-frame;
- the IP length stays within 65535.

Anything else of that flow (a FIN, a pure ACK, a gap) ends the held
super-frame first, so order within a flow is kept; other frames pass as they
came, in their place.  Every frame that comes out starts with a vnet header:
all zeros for a frame as it came, ``NEEDS_CSUM`` and ``GSO_TCPV4``/``GSO_TCPV6``
for a merged one (whose checksum field holds the pseudo-header's sum, as
``CHECKSUM_PARTIAL`` wants).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from greentap.core import kernel_constants as kc
from greentap.core import vxlan
from greentap.core._accel import offload
from greentap.core.checksum import ones_complement_sum, pseudo_header
from greentap.core.ethernet import payload_offset
from greentap.core.segment import GSO_TCPV4, GSO_TCPV6

__all__ = ["PLAIN_HEADER", "coalesce", "merge", "merge_datagrams", "python_merge_datagrams"]

PLAIN_HEADER = bytes(kc.VIRTIO_NET_HDR_SIZE)  # a finished frame: nothing for the TAP to do
_VNET = struct.Struct("=BBHHHH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_ACK, _PSH = 0x10, 0x08
_MAX_IP_LENGTH = 0xFFFF
_TCP_SUM_AT = 16

Frame = bytes | bytearray | memoryview
# flow, match, seq, payload, headers, l4_at, v4, candidate, l4_len, flags
_Parsed = tuple[bytes, bytes, int, int, int, int, bool, bool, int, int]


class _Held:
    """A super-frame being built: the first segment's headers and every payload so far."""

    __slots__ = (
        "count",
        "frame",
        "ip_at",
        "l4_at",
        "l4_len",
        "match",
        "next_seq",
        "open",
        "size",
        "v4",
    )

    def __init__(
        self, frame: Frame, v4: bool, ip_at: int, l4_at: int, l4_len: int, payload: int,
        seq: int, match: bytes, push: bool,
    ) -> None:  # fmt: skip
        self.frame = bytearray(frame)
        self.v4, self.ip_at, self.l4_at, self.l4_len = v4, ip_at, l4_at, l4_len
        self.size = payload  # gso_size: every segment but the last has exactly this
        self.next_seq = (seq + payload) & 0xFFFFFFFF
        self.match = match
        self.open = not push
        self.count = 1

    def takes(self, match: bytes, seq: int, payload: int) -> bool:
        return (
            self.open
            and seq == self.next_seq
            and match == self.match
            and payload <= self.size
            and len(self.frame) - self.ip_at + payload <= _MAX_IP_LENGTH
        )

    def add(self, frame: Frame, headers: int, payload: int, push: bool) -> None:
        self.frame += memoryview(frame)[headers:]
        self.next_seq = (self.next_seq + payload) & 0xFFFFFFFF
        self.count += 1
        if push:
            self.frame[self.l4_at + 13] |= _PSH
        if push or payload < self.size:
            self.open = False

    def output(self) -> bytearray:
        """The vnet header and the frame: as it came, or merged with its headers fixed up."""
        frame = self.frame
        if self.count == 1:
            return bytearray(PLAIN_HEADER) + frame
        ip_at, l4_at = self.ip_at, self.l4_at
        tcp_length = len(frame) - l4_at
        if self.v4:
            _U16.pack_into(frame, ip_at + 2, len(frame) - ip_at)
            _U16.pack_into(frame, ip_at + 10, 0)
            _U16.pack_into(frame, ip_at + 10, ~ones_complement_sum(frame[ip_at:l4_at]) & 0xFFFF)
            addresses = bytes(frame[ip_at + 12 : ip_at + 20])
        else:
            _U16.pack_into(frame, ip_at + 4, tcp_length)
            addresses = bytes(frame[ip_at + 8 : ip_at + 40])
        # CHECKSUM_PARTIAL: the field holds the pseudo-header's sum; the rest is the NIC's.
        pseudo = pseudo_header(addresses, 6, tcp_length)
        _U16.pack_into(frame, l4_at + _TCP_SUM_AT, ones_complement_sum(pseudo))
        header = _VNET.pack(
            kc.VIRTIO_NET_HDR_F_NEEDS_CSUM,
            GSO_TCPV4 if self.v4 else GSO_TCPV6,
            l4_at + self.l4_len,
            self.size,
            l4_at,
            _TCP_SUM_AT,
        )
        return bytearray(header) + frame


def _parse(frame: Frame) -> _Parsed | None:
    """What coalescing needs to know of a TCP/IP frame, or None for anything else.

    Returns:
        ``(flow, match, seq, payload, headers, l4_at, v4, candidate, l4_len, flags)``.
    """
    found = payload_offset(frame)
    if found is None:
        return None
    ip_at, ethertype = found
    end = len(frame)
    if ethertype == 0x0800:
        if ip_at + 20 > end or frame[ip_at] != 0x45 or frame[ip_at + 9] != 6:
            return None
        l4_at = ip_at + 20
        ip_end = ip_at + (frame[ip_at + 2] << 8 | frame[ip_at + 3])
        fragment = frame[ip_at + 6] << 8 | frame[ip_at + 7]
        addresses = bytes(frame[ip_at + 12 : ip_at + 20])
        ip_match = bytes((frame[ip_at + 1], frame[ip_at + 8], fragment >> 14))  # TOS, TTL, DF
        v4 = True
        fits = fragment & 0x3FFF == 0  # not a fragment
    elif ethertype == 0x86DD:
        if ip_at + 40 > end or frame[ip_at] >> 4 != 6 or frame[ip_at + 6] != 6:
            return None
        l4_at = ip_at + 40
        ip_end = l4_at + (frame[ip_at + 4] << 8 | frame[ip_at + 5])
        addresses = bytes(frame[ip_at + 8 : ip_at + 40])
        ip_match = bytes(frame[ip_at : ip_at + 4]) + bytes((frame[ip_at + 7],))  # class, flow, hops
        v4 = False
        fits = True
    else:
        return None
    if l4_at + 20 > end:
        return None
    l4_len = (frame[l4_at + 12] >> 4) * 4
    flags = frame[l4_at + 13]
    flow = bytes(frame[:ip_at]) + addresses + bytes(frame[l4_at : l4_at + 4])
    headers = l4_at + l4_len
    payload = ip_end - headers
    candidate = (
        fits
        and l4_len >= 20
        and ip_end == end  # no Ethernet padding, no truncation
        and payload > 0
        and flags & ~_PSH == _ACK
    )
    seq = _U32.unpack_from(frame, l4_at + 4)[0]
    match = b""
    if candidate:
        # ACK number, data offset, flags but PSH, window, options; then the IP fields.
        word = bytearray(frame[l4_at + 8 : l4_at + 16])
        word[5] &= ~_PSH & 0xFF
        match = bytes(word) + bytes(frame[l4_at + 20 : headers]) + ip_match
        candidate = _checks(frame, v4, ip_at, l4_at, addresses, end - l4_at)
    return flow, match, seq, payload, headers, l4_at, v4, candidate, l4_len, flags


def _checks(
    frame: Frame, v4: bool, ip_at: int, l4_at: int, addresses: bytes, tcp_length: int
) -> bool:
    """Whether the IPv4 header checksum and the TCP checksum both verify."""
    view = memoryview(frame)
    if v4 and ones_complement_sum(view[ip_at:l4_at]) != 0xFFFF:
        return False
    return (
        ones_complement_sum(pseudo_header(addresses, 6, tcp_length) + bytes(view[l4_at:])) == 0xFFFF
    )


def coalesce(frames: Iterable[Frame]) -> list[bytearray]:
    """Merge the TCP segments in ``frames`` that a NIC's receive offload would merge.

    Args:
        frames: Ethernet frames, no vnet header, in the order they arrived.

    Returns:
        The frames, each behind a 10-byte vnet header: merged super-frames in
        the place of their first segment, everything else as it came, in order.
    """
    out: list[bytearray | _Held] = []
    held: dict[bytes, _Held] = {}
    for frame in frames:
        parsed = _parse(frame)
        if parsed is None:
            out.append(bytearray(PLAIN_HEADER) + frame)
            continue
        flow, match, seq, payload, headers, l4_at, v4, candidate, l4_len, flags = parsed
        push = bool(flags & _PSH)
        current = held.get(flow)
        if candidate and current is not None and current.takes(match, seq, payload):
            current.add(frame, headers, payload, push)
            continue
        if current is not None:
            del held[flow]  # ends here: what follows of the flow must come after it
        if candidate:
            ip_at = l4_at - (20 if v4 else 40)
            new = _Held(frame, v4, ip_at, l4_at, l4_len, payload, seq, match, push)
            held[flow] = new
            out.append(new)
        else:
            out.append(bytearray(PLAIN_HEADER) + frame)
    return [item.output() if isinstance(item, _Held) else item for item in out]


def python_merge_datagrams(
    buffer: bytes | bytearray | memoryview, spans: Iterable[tuple[int, int, int]], vni: int
) -> tuple[list[bytearray], int, int, int, int, int]:
    """Check, open and merge the datagrams of a batch of reads into ``buffer``.

    Args:
        buffer: what the reads filled.
        spans: ``(offset, length, size)`` per read: ``length`` bytes of
            datagrams of ``size`` bytes but the last (UDP GRO joins them).
        vni: VXLAN's network identifier, each datagram's header checked
            (:func:`greentap.core.vxlan.decode`); or -1 for raw UDP, where a
            datagram shorter than an Ethernet header is a runt.

    Returns:
        ``(frames, rx, rx_bytes, short, no_i_flag, wrong_vni)``: the frames
        behind vnet headers (:func:`coalesce`), how many frames and bytes the
        datagrams held, and the datagrams dropped by reason (a runt counts as
        ``short``).

    Raises:
        ValueError: a span outside ``buffer``.
    """
    view = memoryview(buffer)
    frames: list[memoryview] = []
    counts = {vxlan.SHORT: 0, vxlan.NO_I_FLAG: 0, vxlan.WRONG_VNI: 0}
    size_total = 0
    for offset, length, size in spans:
        if offset < 0 or length < 0 or offset > len(view) or length > len(view) - offset:
            raise ValueError("a span outside the buffer")
        if size <= 0:
            size = length or 1
        for at in range(0, max(length, 1), size):  # an empty datagram is one too
            datagram = view[offset + at : offset + min(at + size, length)]
            if vni >= 0:
                start, reason = vxlan.decode(datagram, vni)
                if reason is not None:
                    counts[reason] += 1
                    continue
                datagram = datagram[start:]
            elif len(datagram) < kc.ETH_HLEN:
                counts[vxlan.SHORT] += 1
                continue
            frames.append(datagram)
            size_total += len(datagram)
    merged = coalesce(frames)
    return (merged, len(frames), size_total, counts[vxlan.SHORT], counts[vxlan.NO_I_FLAG],
            counts[vxlan.WRONG_VNI])  # fmt: skip


# The C twins where they were built (greentap/core/_offload.c); the same results.
merge = offload.coalesce if offload is not None else coalesce
merge_datagrams = offload.merge_datagrams if offload is not None else python_merge_datagrams

"""VXLAN encapsulation (RFC 7348): bytes in, bytes or a verdict out.  No I/O.

A VXLAN datagram is an 8-byte header followed by an Ethernet frame::

    flags (8 bits, I = 0x08) | reserved (24) | VNI (24) | reserved (8)

Decoding never raises: malformed input yields a reason the caller counts.
Reserved bits are ignored on receipt, as the RFC says.
"""

from __future__ import annotations

import struct
import zlib

from greentap.core.ethernet import payload_offset
from greentap.core.kernel_constants import ETH_HLEN

VXLAN_PORT = 4789  # IANA
HEADER_SIZE = 8
FLAG_I = 0x08
MAX_VNI = (1 << 24) - 1
#: What VXLAN over IPv4 adds to an Ethernet frame on the wire: outer IPv4 (20),
#: UDP (8), VXLAN (8) and the inner Ethernet header (14) that a TAP's MTU
#: does not count.  Over IPv6 the outer header is 40: 70 in all.
OVERHEAD_IPV4 = 20 + 8 + HEADER_SIZE + ETH_HLEN
OVERHEAD_IPV6 = 40 + 8 + HEADER_SIZE + ETH_HLEN

# Reasons a datagram is dropped (counter names).
SHORT = "short"  # shorter than a VXLAN header plus an Ethernet header
NO_I_FLAG = "no_i_flag"  # the I flag (valid VNI) is not set
WRONG_VNI = "wrong_vni"

_WORD = struct.Struct("!I")


def header(vni: int) -> bytes:
    """Return the 8-byte VXLAN header for ``vni``.

    Raises:
        ValueError: ``vni`` is not in 0..2**24-1.
    """
    if not 0 <= vni <= MAX_VNI:
        raise ValueError(f"a VNI is between 0 and {MAX_VNI}, not {vni}")
    return bytes([FLAG_I, 0, 0, 0]) + _WORD.pack(vni << 8)


def encode(vni: int, frame: bytes | bytearray | memoryview) -> bytes:
    """Encapsulate an Ethernet frame: header + frame, as one bytes object."""
    return header(vni) + bytes(frame)


def check_header(hdr: bytes | bytearray | memoryview, vni: int) -> str | None:
    """Check an 8-byte VXLAN header.

    Returns:
        None if valid for ``vni``, else :data:`NO_I_FLAG` or :data:`WRONG_VNI`.
    """
    if not hdr[0] & FLAG_I:
        return NO_I_FLAG
    if _WORD.unpack_from(hdr, 4)[0] >> 8 != vni:
        return WRONG_VNI
    return None


def decode(
    datagram: bytes | bytearray | memoryview, vni: int
) -> tuple[int, None] | tuple[None, str]:
    """Check a datagram and find its inner frame.

    Args:
        datagram: the UDP payload (bytes-like).
        vni: the VNI this endpoint accepts.

    Returns:
        ``(offset, None)`` when valid: the inner frame is ``datagram[offset:]``;
        ``(None, reason)`` otherwise, ``reason`` being :data:`SHORT`,
        :data:`NO_I_FLAG` or :data:`WRONG_VNI`.
    """
    if len(datagram) < HEADER_SIZE + ETH_HLEN:
        return None, SHORT
    reason = check_header(datagram, vni)
    if reason is not None:
        return None, reason
    return HEADER_SIZE, None


def flow_hash(frame: bytes | bytearray | memoryview) -> int:
    """A 32-bit hash of the inner frame's flow, for the outer UDP source port.

    RFC 7348 section 5 asks for a source port from a hash of the inner
    packet, so that ECMP underlays spread tunnels; like the kernel's flow
    dissector it covers the MAC addresses, the IP addresses and the TCP or UDP
    ports (not those of a later fragment), behind any VLAN tags.
    """
    key = bytes(frame[:12])
    found = payload_offset(frame)
    if found is not None:
        ip, ethertype = found
        end = len(frame)
        if ethertype == 0x0800 and ip + 20 <= end:
            ihl = (frame[ip] & 0xF) * 4
            key += bytes(frame[ip + 12 : ip + 20])
            first = (frame[ip + 6] << 8 | frame[ip + 7]) & 0x1FFF == 0
            if frame[ip + 9] in (6, 17) and first and ip + ihl + 4 <= end:
                key += bytes(frame[ip + ihl : ip + ihl + 4])
        elif ethertype == 0x86DD and ip + 40 <= end:
            key += bytes(frame[ip + 8 : ip + 40])
            if frame[ip + 6] in (6, 17) and ip + 44 <= end:
                key += bytes(frame[ip + 40 : ip + 44])
    # CRC-32 is linear: flows a port apart differ in few bits.  Murmur3's
    # finalizer spreads them over all 32, the top ones included.
    h = zlib.crc32(key)
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)

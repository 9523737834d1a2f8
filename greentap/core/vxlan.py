"""VXLAN encapsulation (RFC 7348): bytes in, bytes or a verdict out.  No I/O.

A VXLAN datagram is an 8-byte header followed by an Ethernet frame::

    flags (8 bits, I = 0x08) | reserved (24) | VNI (24) | reserved (8)

Decoding never raises: malformed input yields a reason the caller counts.
Reserved bits are ignored on receipt, as the RFC says.
"""

from __future__ import annotations

import struct

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

"""Ethernet addresses and header fields.  Pure code, no I/O."""

from __future__ import annotations

from greentap.core.kernel_constants import ETH_ALEN, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, VLAN_HLEN

BROADCAST = b"\xff" * ETH_ALEN


def parse_mac(text: str | bytes | bytearray) -> bytes:
    """Parse ``"02:00:5e:10:00:01"`` (``:`` or ``-`` separated) into 6 bytes.

    Args:
        text: a MAC address as str, or already 6 bytes.

    Returns:
        The address as 6 bytes.

    Raises:
        ValueError: not six hexadecimal octets.
    """
    if isinstance(text, (bytes, bytearray)):
        if len(text) != ETH_ALEN:
            raise ValueError(f"a MAC address is {ETH_ALEN} bytes, got {len(text)}")
        return bytes(text)
    parts = text.replace("-", ":").split(":")
    if len(parts) != ETH_ALEN or not all(1 <= len(p) <= 2 for p in parts):
        raise ValueError(f"invalid MAC address {text!r}: expected six hex octets")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"invalid MAC address {text!r}: expected six hex octets") from None


def format_mac(raw: bytes | bytearray | memoryview) -> str:
    """Format 6 bytes as ``"02:00:5e:10:00:01"``.

    Args:
        raw: the address as bytes.

    Returns:
        Lower-case, colon-separated text.
    """
    return ":".join(f"{b:02x}" for b in raw)


def is_multicast(mac: bytes | bytearray | memoryview) -> bool:
    """Tell whether a MAC address is group (multicast or broadcast).

    Args:
        mac: the address as bytes (at least one byte).

    Returns:
        True when the I/G bit of the first octet is set.
    """
    return bool(mac[0] & 1)


def payload_offset(frame: bytes | bytearray | memoryview, at: int = 0) -> tuple[int, int] | None:
    """Where the payload of the Ethernet frame at ``frame[at:]`` starts, past any
    802.1Q/802.1ad tags, and its ethertype.

    Returns:
        ``(offset in frame, ethertype)``, or None when the frame ends inside its
        Ethernet header or tags.
    """
    type_at, end = at + ETH_HLEN - 2, len(frame)
    while True:
        if type_at + 2 > end:
            return None
        ethertype = frame[type_at] << 8 | frame[type_at + 1]
        if ethertype != ETH_P_8021Q and ethertype != ETH_P_8021AD:
            return type_at + 2, ethertype
        type_at += VLAN_HLEN

"""Ethernet addresses and header fields.  Pure code, no I/O."""

from __future__ import annotations

from greentap.core.kernel_constants import ETH_ALEN

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

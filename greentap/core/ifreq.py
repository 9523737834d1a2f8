"""Packing and unpacking of ``struct ifreq`` (``linux/if.h``).  Pure code, no I/O.

``struct ifreq`` is ``char ifr_name[IFNAMSIZ]`` followed by a union; only the
union members greentap uses are handled: ``short ifr_flags``, ``int``
(``ifr_mtu``, ``ifr_ifindex``, ``ifr_qlen``) and ``struct sockaddr ifr_hwaddr``.
"""

from __future__ import annotations

import struct

from greentap.core.kernel_constants import ETH_ALEN, IFNAMSIZ, IFREQ_SIZE
from greentap.core.names import decode_ifname

_UNION = IFREQ_SIZE - IFNAMSIZ
_FLAGS = struct.Struct(f"={IFNAMSIZ}sH{_UNION - 2}x")
_INT = struct.Struct(f"={IFNAMSIZ}si{_UNION - 4}x")
# struct sockaddr: sa_family_t (unsigned short) + 14 bytes of data.
_SOCKADDR = struct.Struct(f"={IFNAMSIZ}sH14s{_UNION - 16}x")


def pack_flags(name: bytes, flags: int) -> bytes:
    """Pack an ifreq carrying ``ifr_flags``.

    Args:
        name: the interface name as bytes (already validated).
        flags: the 16-bit flag word.

    Returns:
        ``IFREQ_SIZE`` bytes.
    """
    return _FLAGS.pack(name, flags & 0xFFFF)


def unpack_flags(buf: bytes) -> tuple[str, int]:
    """Return ``(name, flags)`` from an ifreq carrying ``ifr_flags``."""
    name, flags = _FLAGS.unpack_from(buf)
    return decode_ifname(name), flags


def pack_int(name: bytes, value: int = 0) -> bytes:
    """Pack an ifreq carrying an int (``ifr_mtu``, ``ifr_ifindex``, ``ifr_qlen``)."""
    return _INT.pack(name, value)


def unpack_int(buf: bytes) -> int:
    """Return the int member of an ifreq."""
    return _INT.unpack_from(buf)[1]


def pack_hwaddr(name: bytes, family: int, mac: bytes = b"") -> bytes:
    """Pack an ifreq carrying ``ifr_hwaddr``.

    Args:
        name: the interface name as bytes.
        family: the ``ARPHRD_*`` type in ``sa_family``.
        mac: the hardware address (6 bytes for Ethernet).

    Returns:
        ``IFREQ_SIZE`` bytes.
    """
    return _SOCKADDR.pack(name, family, mac)


def unpack_hwaddr(buf: bytes) -> tuple[int, bytes]:
    """Return ``(family, mac)`` from an ifreq carrying ``ifr_hwaddr``."""
    _, family, data = _SOCKADDR.unpack_from(buf)
    return family, data[:ETH_ALEN]

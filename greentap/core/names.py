"""Validation of Linux interface names: reject, never truncate.

Pure code, no I/O.  The rules are the kernel's own (``dev_valid_name`` and
``__dev_alloc_name`` in ``net/core/dev.c``), checked before any syscall so a
bad name never produces a truncated or surprising device.
"""

from __future__ import annotations

import os

from greentap.core.kernel_constants import IFNAMSIZ
from greentap.errors import InvalidInterfaceName, TapNameConversion, TapNameTooLong

__all__ = ["decode_ifname", "encode_ifname"]

# The kernel's isspace(): \t \n \v \f \r, space, and 0xA0 (Latin-1 NBSP),
# which can appear inside a UTF-8 encoded name (e.g. "à" is C3 A0).
_KERNEL_SPACE = frozenset(b"\t\n\x0b\x0c\r \xa0")
_FORBIDDEN = {ord("/"): "'/'", ord(":"): "':'"}


def encode_ifname(name: str | bytes | bytearray, *, allow_template: bool = True) -> bytes:
    """Check an interface name and return it as the bytes the kernel takes.

    Args:
        name: ``str`` (encoded with the filesystem encoding) or ``bytes``.
        allow_template: accept one ``%d``, which the kernel replaces with the
            lowest free number (``tap%d`` -> ``tap0``).

    Returns:
        The name as bytes, at most 15 long, without NUL terminator.

    Raises:
        TypeError: ``name`` is neither str nor bytes.
        TapNameConversion: the name contains a NUL byte, or a character the
            file system encoding cannot encode.
        TapNameTooLong: the name is 16 bytes or more.
        InvalidInterfaceName: empty, ``.``/``..``, contains ``/``, ``:`` or
            whitespace, or a ``%`` that is not a single ``%d``.
    """
    if isinstance(name, str):
        try:
            raw = os.fsencode(name)
        except UnicodeEncodeError:  # a lone surrogate that no byte stands for
            raise TapNameConversion(
                "name cannot be encoded with the file system encoding", endpoint=name
            ) from None
    elif isinstance(name, (bytes, bytearray)):
        raw = name = bytes(name)
    else:
        raise TypeError(f"interface name must be str or bytes, not {type(name).__name__}")
    if b"\0" in raw:
        raise TapNameConversion(endpoint=name)
    if len(raw) >= IFNAMSIZ:
        raise TapNameTooLong(endpoint=name)
    if not raw:
        raise InvalidInterfaceName("name is empty", endpoint=name)
    if raw in (b".", b".."):
        raise InvalidInterfaceName(f"{name!r} is not allowed as an interface name", endpoint=name)
    for byte in raw:
        if byte in _KERNEL_SPACE:
            raise InvalidInterfaceName("name contains whitespace", endpoint=name)
        if byte in _FORBIDDEN:
            raise InvalidInterfaceName(f"name contains {_FORBIDDEN[byte]}", endpoint=name)
    if b"%" in raw:
        first = raw.index(b"%")
        if not allow_template:
            raise InvalidInterfaceName("a template ('%d') is not allowed here", endpoint=name)
        if raw[first + 1 : first + 2] != b"d" or b"%" in raw[first + 2 :]:
            raise InvalidInterfaceName(
                "a template may contain one '%d' and no other '%'", endpoint=name
            )
    return raw


def decode_ifname(raw: bytes | bytearray) -> str:
    """Turn a kernel name field (NUL-padded bytes) back into a str.

    Args:
        raw: bytes as found in ``struct ifreq``'s ``ifr_name``.

    Returns:
        The name up to its first NUL, decoded with the filesystem encoding.
    """
    return os.fsdecode(bytes(raw).split(b"\0", 1)[0])

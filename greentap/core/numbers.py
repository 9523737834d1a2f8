"""Strict parsing of the numbers people type.  Pure.

``str.isdigit()`` and ``int()`` accept far more than an operator means:
superscripts (``'²'.isdigit()`` is true, ``int('²')`` raises), other
scripts' digits (``int('٤٢')`` is 42, and so are fullwidth digits),
underscores (``1_000``), surrounding whitespace, and ``float()`` adds
``inf``, ``nan`` and ``1e999``.  Every number greentap reads from a command
line, an endpoint or a file goes through here: ASCII digits only, finite, in
range — or a :class:`ValueError` that says what was expected.
"""

from __future__ import annotations

import math
import re

__all__ = ["parse_decimal", "parse_int", "parse_size"]

_INT = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SIZE = re.compile(r"([0-9]+)([kKmMgG]?)")
_SIZE_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_int(text: str, low: int, high: int) -> int:
    """Parse a whole number written in ASCII digits, within ``[low, high]``.

    Args:
        text: the text, e.g. ``"4789"``.
        low, high: the accepted range, both included.

    Returns:
        The number.

    Raises:
        ValueError: not ASCII digits, or out of range; the message says what
            is expected (``"a whole number from 1 to 65535"``).
    """
    if not _INT.fullmatch(text) or not low <= int(text) <= high:
        raise ValueError(f"a whole number from {low} to {high}")
    return int(text)


def parse_decimal(
    text: str, low: float, high: float, *, low_open: bool = False, zero: bool = False
) -> float:
    """Parse a finite decimal number (``2.5``, ``1e3``) within a range.

    Args:
        text: the text.
        low, high: the accepted range; ``high`` included.
        low_open: exclude ``low`` itself.
        zero: also accept exactly 0 (an "off" value below ``low``).

    Returns:
        The number as a float.

    Raises:
        ValueError: not a plain decimal number, or out of range; the message
            says what is expected.
    """
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if zero and value == 0:
        return 0.0
    above = value > low if low_open else value >= low
    if not (above and value <= high):
        lower = f"above {low:g}" if low_open else f"from {low:g}"
        off = "0 (off) or " if zero else ""
        raise ValueError(f"{off}a number {lower} to {high:g}")
    return value


def parse_size(text: str) -> int:
    """Parse a size in bytes: ``10M``, ``512k``, ``1G`` or a plain number.

    Returns:
        The size in bytes (at least 1).

    Raises:
        ValueError: not such a size.
    """
    match = _SIZE.fullmatch(text)
    if not match or int(match[1]) < 1:
        raise ValueError("a size such as 100M (k, M, G suffixes)")
    return int(match[1]) * _SIZE_SUFFIXES[match[2].lower()]

"""Classic pcap encoding (LINKTYPE_ETHERNET, microsecond timestamps).  No I/O.

The format ``tcpdump -r`` and ``tshark -r`` read: a 24-byte global header,
then per frame a 16-byte record header (seconds, microseconds, captured
length, original length) and the captured bytes.  Written little-endian;
readers detect the byte order from the magic number.
"""

from __future__ import annotations

import struct

MAGIC = 0xA1B2C3D4  # microsecond timestamps
VERSION = (2, 4)
LINKTYPE_ETHERNET = 1
#: What tcpdump uses as "whole frame"; also the largest frame a TAP gives.
DEFAULT_SNAPLEN = 262144
GLOBAL_HEADER_SIZE = 24
RECORD_HEADER_SIZE = 16
#: The smallest file rotation that holds one frame of 64 bytes.
MIN_ROTATE = GLOBAL_HEADER_SIZE + RECORD_HEADER_SIZE + 64

_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


def global_header(snaplen: int = DEFAULT_SNAPLEN, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    """Return the 24-byte pcap file header.

    Raises:
        ValueError: ``snaplen`` is not positive.
    """
    if snaplen < 1:
        raise ValueError("snaplen must be at least 1")
    return _GLOBAL.pack(MAGIC, *VERSION, 0, 0, snaplen, linktype)


def record(
    frame: bytes | bytearray | memoryview, time_ns: int, snaplen: int = DEFAULT_SNAPLEN
) -> bytes:
    """Return one pcap record: header and the frame cut to ``snaplen`` bytes.

    Args:
        frame: the frame (bytes-like).
        time_ns: capture time, nanoseconds since the epoch (``time.time_ns()``).
        snaplen: the most bytes of the frame to keep.

    Returns:
        bytes: a 16-byte header followed by ``min(len(frame), snaplen)`` bytes.
    """
    size = len(frame)
    caplen = size if size <= snaplen else snaplen
    seconds, rest = divmod(time_ns, 1_000_000_000)
    return _RECORD.pack(seconds, rest // 1000, caplen, size) + bytes(frame[:caplen])


def parse(data: bytes) -> tuple[int, list[tuple[int, int, bytes]]]:
    """Parse a whole pcap file (for tests and tools): ``(snaplen, [(ts_us, orig_len, bytes)])``.

    Raises:
        ValueError: not a little-endian microsecond pcap, or a torn record.
    """
    if len(data) < GLOBAL_HEADER_SIZE:
        raise ValueError("shorter than a pcap header")
    magic, _, _, _, _, snaplen, linktype = _GLOBAL.unpack_from(data)
    if magic != MAGIC or linktype != LINKTYPE_ETHERNET:
        raise ValueError("not a little-endian Ethernet pcap")
    out, pos = [], GLOBAL_HEADER_SIZE
    while pos < len(data):
        if pos + RECORD_HEADER_SIZE > len(data):
            raise ValueError(f"torn record header at offset {pos}")
        sec, usec, caplen, orig = _RECORD.unpack_from(data, pos)
        pos += RECORD_HEADER_SIZE
        if pos + caplen > len(data):
            raise ValueError(f"torn record at offset {pos}")
        out.append((sec * 1_000_000 + usec, orig, data[pos : pos + caplen]))
        pos += caplen
    return snaplen, out

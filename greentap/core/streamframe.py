"""QEMU's stream framing: each Ethernet frame behind its length, 4 bytes big-endian.  Pure.

QEMU's ``-netdev stream`` and ``-netdev socket``, passt and libvirt's
userspace backends carry frames over a stream socket (unix or TCP) this way,
with no other header and no vnet header.  :func:`split_frames` finds the
frames in what one large read returned; :func:`frame_header` builds the
4 bytes written in front of each frame sent.

QEMU refuses a length over its receive buffer (``NET_BUFSIZE``, 4096 +
65536 bytes) by closing the connection; so do we (:data:`MAX_FRAME`): after
such a length nothing that follows can be trusted to be a frame boundary.  A
frame shorter than an Ethernet header (a runt, or an empty frame) keeps the
stream in step: it is skipped and counted.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from greentap.core._accel import offload
from greentap.core.kernel_constants import ETH_HLEN

__all__ = [
    "HEADER_SIZE",
    "MAX_FRAME",
    "Split",
    "frame_header",
    "python_split_frames",
    "split_frames",
]

#: The length in front of every frame: 4 bytes, big-endian (network order).
HEADER_SIZE = 4
#: QEMU's NET_BUFSIZE: the longest frame either side accepts.
MAX_FRAME = 4096 + 65536
_LENGTH = struct.Struct("!I")
_unpack_from = _LENGTH.unpack_from


class Split(NamedTuple):
    """What :func:`split_frames` found.

    Attributes:
        frames: ``[offset, length, offset, length, ...]`` of each whole frame
            (a flat list: one object per read rather than one per frame).
        end: where the first byte not yet used is (a partial header or frame
            starts there; ``end`` of the call when everything was used).
        runts: frames shorter than an Ethernet header, skipped.
        too_long: the length announced in front of a frame over the limit
            (everything from ``end`` on is then garbage), or 0.
    """

    frames: list[int]
    end: int
    runts: int
    too_long: int


def frame_header(length: int) -> bytes:
    """The 4 bytes that go in front of a frame of ``length`` bytes."""
    return _LENGTH.pack(length)


def python_split_frames(buffer: bytes | bytearray | memoryview, start: int, end: int,
                        limit: int = MAX_FRAME) -> Split:  # fmt: skip
    """Find the whole frames in ``buffer[start:end]`` (the reference of the C twin).

    Args:
        buffer: bytes read from the stream, the first at ``start``, which is a
            frame boundary.
        start: where the first length is.
        end: where what was read ends.
        limit: the longest frame accepted.

    Returns:
        A :class:`Split`.

    Raises:
        ValueError: ``start``/``end`` outside the buffer or reversed.
    """
    if not 0 <= start <= end <= len(buffer):
        raise ValueError(f"bad range {start}:{end} of a buffer of {len(buffer)}")
    frames: list[int] = []
    runts = 0
    at = start
    while end - at >= HEADER_SIZE:
        (length,) = _unpack_from(buffer, at)
        if length > limit:
            return Split(frames, at, runts, length)
        if end - at - HEADER_SIZE < length:
            break  # the rest of this frame is still on its way
        if length < ETH_HLEN:
            runts += 1
        else:
            frames += (at + HEADER_SIZE, length)
        at += HEADER_SIZE + length
    return Split(frames, at, runts, 0)


#: :func:`python_split_frames` in C where it was built: the same arguments, and
#: the same four values as a plain tuple.
split_frames: Callable[..., tuple[list[int], int, int, int]] = (
    offload.split_frames if offload is not None else python_split_frames
)

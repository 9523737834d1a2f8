"""The tight relays of a stream port (QEMU's framing: a 4-byte length before each frame).

A wire between a TAP and a stream connection moves its frames here rather
than one by one through the generic loop:

* TAP to stream: :func:`tap_to_stream` reads a batch of frames from the TAP
  into one buffer, each behind its length (``gather_for_stream``), and hands
  the batch to the stream port as one send;
* stream to TAP: ``write_stream_frames`` writes every whole frame of a stream
  read to the TAP, one ``write`` each, classified by the verdict table as
  every relay classifies its writes (the port's ``relay_to`` drives it).

Both run in C where the extension was built (``greentap.green._relay``);
:func:`python_gather_for_stream` and :func:`python_write_stream_frames` are
their pure-Python twins, with the same arguments and results
(tests/unit/test_stream_relay.py runs both).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greentap.core.kernel_constants import ETH_HLEN
from greentap.errors import EndpointClosed
from greentap.green import relay

if TYPE_CHECKING:
    from greentap.green.polled import PolledTap

__all__ = [
    "gather_for_stream",
    "python_gather_for_stream",
    "python_write_stream_frames",
    "WRITE_ERROR",
    "tap_to_stream",
    "write_stream_frames",
]

_HLEN = 4
#: How a batch of write_stream_frames ended when a write failed for good.
WRITE_ERROR = 4
_WRITE_ERROR = WRITE_ERROR
_HANDBACK = 5  # a frame gather_for_stream leaves to the caller: it needs work
_GATHER = 1 << 20  # bytes of frames gathered for one send


def python_gather_for_stream(
    in_fd: int, buffer: Any, budget: int, max_frame: int, room: int, header: int = 0
) -> tuple[int, int, int, int, int, int, int, int, int, bytes]:
    """Read up to ``budget`` frames from ``in_fd`` into ``buffer``, each behind its length.

    The twin of the C ``gather_for_stream``.

    Args:
        in_fd: the non-blocking fd read (a TAP).
        buffer: where the frames go (writable).
        budget: the most frames read.
        max_frame: the largest frame ``in_fd`` gives: a read always has room for one.
        room: the most bytes the stream's queue takes: frames past it are read and dropped.
        header: the size of the vnet header in front of each frame read (0: none):
            it is left out, and a frame whose header asks for work is handed back.

    Returns:
        ``(end, errno, rx, rx_bytes, used, frames, dropped, back_at, back_len,
        back_header)``: ``end`` as the relay's batches end (0 budget spent or
        buffer full, 1 would block, 2 end of file, 3 read error with ``errno``,
        5 a frame handed back: its vnet header ``back_header`` and its bytes at
        ``buffer[back_at:][:back_len]``); ``used`` bytes of ``buffer`` hold
        ``frames`` frames; ``dropped`` frames did not fit ``room``.
    """
    view = memoryview(buffer)
    size = len(view)
    end = err = rx = rx_bytes = used = frames = dropped = back_at = back_len = 0
    vnet = bytearray(header)
    for _ in range(budget):
        if size - used < max_frame + _HLEN:
            break
        try:
            n = os.readv(in_fd, [vnet, view[used + _HLEN :]] if header else [view[used + _HLEN :]])
        except BlockingIOError:
            end = 1
            break
        except OSError as exc:
            end, err = 3, exc.errno or 0
            break
        if n == 0:
            end = 2
            break
        rx += 1
        rx_bytes += n
        length = max(n - header, 0)
        if header and (n < header + ETH_HLEN or vnet[0] or vnet[1]):
            end, back_at, back_len = _HANDBACK, used + _HLEN, length
            break
        if room < used + _HLEN + length:
            dropped += 1
            continue
        view[used : used + _HLEN] = length.to_bytes(_HLEN, "big")
        used += _HLEN + length
        frames += 1
    back = bytes(vnet) if end == _HANDBACK else b""
    return end, err, rx, rx_bytes, used, frames, dropped, back_at, back_len, back


def python_write_stream_frames(
    out_fd: int, buffer: Any, start: int, end: int, limit: int
) -> tuple[int, int, int, int, int, int, int, int, int, int, int, int]:
    """Write every whole frame of ``buffer[start:end]`` (each behind its length) to ``out_fd``.

    The twin of the C ``write_stream_frames``.

    Returns:
        ``(end, errno, next, rx, rx_bytes, tx, tx_bytes, dropped, link_down,
        errors, runts, too_long)``: ``end`` 4 with the errno when a write's
        verdict was FAILED (``next`` is then just after that frame, which is
        the caller's to count), else 0 and ``next`` where the first frame not
        whole yet starts; ``rx`` frames found, ``runts`` skipped (under an
        Ethernet header); ``too_long`` the length over ``limit`` that stopped
        it, or 0.

    Raises:
        ValueError: ``start``/``end`` outside the buffer or reversed.
    """
    view = memoryview(buffer)
    if not 0 <= start <= end <= len(view):
        raise ValueError(f"bad range {start}:{end} of a buffer of {len(view)}")
    frames: list[Any] = []
    ends: list[int] = []
    runts_before: list[int] = []  # runts seen before each frame: C counts as it writes
    at, runts, too_long = start, 0, 0
    while end - at >= _HLEN:
        length = int.from_bytes(view[at : at + _HLEN], "big")
        if length > limit:
            too_long = length
            break
        if end - at - _HLEN < length:
            break
        frame = view[at + _HLEN : at + _HLEN + length]
        at += _HLEN + length
        if length < ETH_HLEN:
            runts += 1
            continue
        frames.append(frame)
        ends.append(at)
        runts_before.append(runts)
    code, err, written, tx, tx_bytes, dropped, link_down, errors = relay.python_write_frames(
        out_fd, frames, 0
    )
    if code == _WRITE_ERROR:  # C stops there: nothing after that frame is looked at
        frames, at = frames[:written], ends[written - 1]
        runts, too_long = runts_before[written - 1], 0
    rx, rx_bytes = len(frames), sum(len(f) for f in frames)
    return (code, err, at, rx, rx_bytes, tx, tx_bytes, dropped, link_down, errors, runts,
            too_long)  # fmt: skip


#: The C batches of greentap.green._relay, or the twins (``GREENTAP_PURE_PYTHON``, no build).
gather_for_stream: Callable[..., Any] = python_gather_for_stream
write_stream_frames: Callable[..., Any] = python_write_stream_frames
if relay.LOOP == "c":  # the extension was built, loaded and its verdicts checked
    from greentap.green import _relay as _c  # type: ignore[attr-defined]

    gather_for_stream, write_stream_frames = _c.gather_for_stream, _c.write_stream_frames


def tap_to_stream(src: PolledTap, dst: Any, on_send_error: Callable[..., Any]) -> None:
    """Send every frame read from ``src`` to the stream port ``dst`` in gathered batches.

    Args:
        src: the TAP read; with a vnet header, frames that need work (a
            super-frame to cut, a checksum to finish) go through ``dst.send``.
        dst: a stream port: ``room()`` (bytes its queue can take),
            ``send_gathered(data, frames, nbytes, dropped)`` and ``send(frame)``.
        on_send_error: unused: a stream port handles its own failures (it
            closes, and its reader sees the end).

    Raises:
        EndpointClosed: ``src`` was closed (the normal end).
        PeerGone, EndpointIOError: ``src`` failed.
    """
    gather, header = gather_for_stream, src.layout.header_size
    size = src.max_frame_size
    buf = bytearray(max(_GATHER, 2 * (size + _HLEN)))
    view = memoryview(buf)
    rx_c, src_io, budget = src.counters, src.io, src.io.budget
    while True:
        fd = src_io.holder.fd  # re-read after every yield: it may close meanwhile
        if fd < 0:
            raise EndpointClosed(endpoint=src.name)
        end, code, rx, rx_bytes, used, frames, dropped, back_at, back_len, back = gather(
            fd, buf, budget, size, dst.room(), header
        )
        rx_c.rx_packets += rx
        rx_c.rx_bytes += rx_bytes
        if frames or dropped:
            dst.send_gathered(view[:used], frames, used - _HLEN * frames, dropped)
        if end == _HANDBACK:
            dst.send(back + view[back_at : back_at + back_len])  # cut or finished there
            end = 0  # a yield to the hub, then on with the next batch
        relay.between_batches(src, end, code)

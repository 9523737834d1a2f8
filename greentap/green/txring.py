"""The relay into a packet socket's transmit ring, and its pure-Python twin.

:func:`relay_to_ring` moves every frame read from a TAP out of an existing
interface through its :class:`~greentap.device.packet.TxRing`: each frame
is copied into the ring's next slot and a batch leaves with one ``send()``.
The batch runs in C (``relay_batch_to_ring`` in ``greentap/green/_relay.c``);
:func:`python_batch_to_ring` is its twin, the same steps and the same
counts, under the same tests (and what runs if this relay is called where
the C extension was not built; the pure-Python wire itself writes one frame
at a time, which is faster in Python).  The rule both keep is
:mod:`greentap.core.txring`'s.
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from greentap.core import kernel_constants as kc
from greentap.core.txring import DATA_OFFSET, hint_linear
from greentap.core.verdicts import WRITE_VERDICTS, Verdict
from greentap.errors import EndpointClosed
from greentap.green import relay

__all__ = ["python_batch_to_ring", "relay_to_ring"]

_STATUS = struct.Struct("=I")
_LEN = struct.Struct("=I")
_LEN_OFFSET = 4  # of tp_len in struct tpacket2_hdr
_END_BUDGET, _END_WAIT, _END_EOF, _END_READ_ERROR, _END_WRITE_ERROR = range(5)
Counts = tuple[int, int, int, int, int, int, int, int, int]


def relay_to_ring(src: Any, dst: Any, on_send_error: Callable[..., Any]) -> None:
    """Forward every frame read from ``src`` (a TAP) out of ``dst`` (a ``packet:``
    port) through its transmit ring, until ``src`` closes.

    As :func:`greentap.green.relay.relay`: writes never block, a frame the
    ring or the driver cannot take is dropped and counted on ``dst``, a
    FAILED verdict is reported to ``on_send_error`` and the relay reads on.

    Raises:
        EndpointClosed: ``src`` was closed (the normal end).
        PeerGone, EndpointIOError: ``src`` failed.
    """
    batch = relay.relay_batch_to_ring or python_batch_to_ring
    ring = dst.sock.tx
    scratch = bytearray(src.max_frame_size)
    rx_c, tx_c = src.counters, dst.counters
    src_io, dst_io, budget = src.io, dst.io, src.io.budget
    while True:
        # Re-read after every yield: either side may close or fail meanwhile.
        fd = src_io.holder.fd
        if fd < 0:
            raise EndpointClosed(endpoint=src.name)
        out = ring.holder.fd if dst_io.holder.fd >= 0 else -1  # failed: every frame an error
        frames, cursor = ring.map, ring.cursor
        if frames is None:  # closed: a slot to read into, nothing to send to
            out, frames, cursor = -1, bytearray(ring.geometry.frame_size), [0]
        end, code, *counts = batch(
            fd, out, dst_io.holder.fd, frames, ring.geometry.frame_size, cursor, scratch, budget,
            dst.header_size,
        )  # fmt: skip
        relay.publish(rx_c, tx_c, *counts)
        if end == _END_WRITE_ERROR:
            relay.write_failed(dst, OSError(code, os.strerror(code)), on_send_error)
        else:
            relay.between_batches(src, end, code)


def python_batch_to_ring(
    in_fd: int, ring_fd: int, big_fd: int, ring: Any, frame_size: int, cursor: list[int],
    scratch: bytearray, budget: int, header: int,
) -> Counts:  # fmt: skip
    """The twin of the C ``relay_batch_to_ring``: up to ``budget`` frames (each behind
    a vnet header of ``header`` bytes, 0 or 10) read from
    ``in_fd`` into ``scratch`` (it holds the largest), copied into the slots of
    ``ring`` from ``cursor[0]`` on and sent with one ``send()`` on ``ring_fd``;
    a frame larger than a slot is sent alone from ``scratch`` on ``big_fd``,
    after the slots filled before it.

    Returns:
        ``(end, errno, rx, rx_bytes, tx, tx_bytes, dropped, link_down, errors)``
        as the C relay batches: ``end`` 0 budget spent, 1 nothing more to
        read, 2 end of file, 3 read error, 4 write error (``errno`` says which).
        ``cursor[0]`` ends at the next slot to fill.

    Raises:
        ValueError: ``ring`` is not whole slots, or the cursor is outside it.
    """
    with memoryview(ring) as view:  # released however the batch ends: the ring can close
        return _batch(view, in_fd, ring_fd, big_fd, frame_size, cursor, scratch, budget, header)


def _batch(
    view: memoryview, in_fd: int, ring_fd: int, big_fd: int, frame_size: int,
    cursor: list[int], scratch: bytearray, budget: int, header: int,
) -> Counts:  # fmt: skip
    count = len(view) // frame_size if frame_size else 0
    head = cursor[0] if len(cursor) == 1 else -1
    if frame_size < DATA_OFFSET + kc.VIRTIO_NET_HDR_SIZE + kc.ETH_HLEN or frame_size % 16 \
            or not count or len(view) % frame_size or not 0 <= head < count \
            or header not in (0, kc.VIRTIO_NET_HDR_SIZE):  # fmt: skip
        raise ValueError("a ring of whole slots, a cursor [slot] within it, a header of 0 or 10")
    room = frame_size - DATA_OFFSET
    c = _Counts()
    end, err, k = _END_BUDGET, 0, 0
    for _ in range(budget):
        if k == count:  # every slot filled: they leave before the next is read
            head, failed = _flush(ring_fd, view, frame_size, count, head, k, c)
            k = 0
            if failed:
                end, err = _END_WRITE_ERROR, failed
                break
        at = (head + k) % count * frame_size
        free = _STATUS.unpack_from(view, at)[0] == kc.TP_STATUS_AVAILABLE
        try:
            n = os.readv(in_fd, [scratch])
        except OSError as exc:
            end, err = _read_end(exc)
            break
        if not n:
            end = _END_EOF
            break
        c.read(n)
        if not free:  # every slot is filled or still held by the driver: a full queue
            c.dropped += 1
            continue
        if ring_fd < 0 or n < header + kc.ETH_HLEN:  # no ring; a runt the kernel would refuse
            c.errors += 1
            continue
        if n <= room:
            slot = view[at + DATA_OFFSET : at + DATA_OFFSET + n]
            slot[:] = memoryview(scratch)[:n]
            if header:  # without a vnet header the kernel copies what it needs
                hint_linear(slot, n)
            _LEN.pack_into(view, at + _LEN_OFFSET, n)
            _STATUS.pack_into(view, at, kc.TP_STATUS_SEND_REQUEST)
            k += 1
            continue
        # Larger than a slot: what is filled leaves first, then this frame whole.
        if k:
            head, failed = _flush(ring_fd, view, frame_size, count, head, k, c)
            k = 0
            if failed:
                c.errors += 1  # the frame in hand
                end, err = _END_WRITE_ERROR, failed
                break
        failed = _send_whole(big_fd, memoryview(scratch)[:n], c)
        if failed:
            end, err = _END_WRITE_ERROR, failed
            break
    if k:
        head, failed = _flush(ring_fd, view, frame_size, count, head, k, c)
        if failed:
            end, err = _END_WRITE_ERROR, failed  # a write error outranks how the reads ended
    cursor[0] = head
    return (end, err, c.rx, c.rx_bytes, c.tx, c.tx_bytes, c.dropped, c.link_down, c.errors)


class _Counts:
    __slots__ = ("rx", "rx_bytes", "tx", "tx_bytes", "dropped", "link_down", "errors")

    def __init__(self) -> None:
        self.rx = self.rx_bytes = self.tx = self.tx_bytes = 0
        self.dropped = self.link_down = self.errors = 0

    def read(self, n: int) -> None:
        self.rx += 1
        self.rx_bytes += n


def _read_end(exc: OSError) -> tuple[int, int]:
    if isinstance(exc, BlockingIOError):
        return _END_WAIT, 0
    return _END_READ_ERROR, exc.errno or 0


def _send(fd: int) -> int:
    """``send()`` of no data (the ring's marked slots) on ``fd`` without blocking,
    retried after EINTR; the errno, or 0."""
    try:
        # The C socket type, never gevent's: a send that would block is an
        # answer here (BACKPRESSURE), as in C, not a wait.
        sock = _socket.socket(fileno=fd)
    except OSError as exc:  # not a socket, or closed
        return exc.errno or errno.EBADF
    except ValueError:  # a negative fd
        return errno.EBADF
    try:
        sock.send(b"", socket.MSG_DONTWAIT)  # EINTR is retried (PEP 475)
        return 0
    except OSError as exc:
        return exc.errno or errno.EIO
    finally:
        sock.detach()


def _send_whole(fd: int, frame: memoryview, c: _Counts) -> int:
    """One frame written to ``fd`` and counted by its verdict, as every write is
    (:func:`greentap.green.relay.python_write_frames`); the errno of a FAILED
    verdict (the frame is the caller's to count), else 0."""
    if fd < 0:  # as C's sendmmsg() on it: EBADF, a FAILED verdict
        return errno.EBADF
    end, code, _, *counts = relay.python_write_frames(fd, [frame], 0)
    tx, tx_bytes, dropped, link_down, errors = counts
    c.tx += tx
    c.tx_bytes += tx_bytes
    c.dropped += dropped
    c.link_down += link_down
    c.errors += errors
    return code if end == _END_WRITE_ERROR else 0


def _flush(
    fd: int, view: memoryview, frame_size: int, count: int, head: int, k: int, c: _Counts
) -> tuple[int, int]:
    """The twin of the C ``flush_ring``: the ``k`` slots filled from ``head`` handed to
    the kernel until each was taken or dropped by its verdict.

    Returns:
        ``(head, errno)``: the next slot to fill (the kernel's head), and the
        errno of a FAILED verdict, else 0.
    """
    p = tries = failed = 0

    def at(i: int) -> int:
        return (head + i) % count * frame_size

    while p < k:
        code = _send(fd)
        while p < k:
            status, n = struct.unpack_from("=II", view, at(p))
            if status in (kc.TP_STATUS_SEND_REQUEST, kc.TP_STATUS_WRONG_FORMAT):
                break
            c.tx += 1
            c.tx_bytes += n
            p += 1
        if p == k:
            break
        if not code:
            stuck = _STATUS.unpack_from(view, at(p))[0]
            code = errno.EINVAL if stuck == kc.TP_STATUS_WRONG_FORMAT else errno.ENOBUFS
        verdict = WRITE_VERDICTS.get(code, Verdict.FAILED)
        if verdict is Verdict.RETRY and tries < k:
            tries += 1
            continue
        if verdict in (Verdict.REFUSED, Verdict.UNREACHABLE):
            c.errors += 1
            for q in range(p + 1, k):  # the frames after it move down a slot and go again
                to, src = at(q - 1), at(q)
                n = min(_LEN.unpack_from(view, src + _LEN_OFFSET)[0], frame_size - DATA_OFFSET)
                _LEN.pack_into(view, to + _LEN_OFFSET, n)
                view[to + DATA_OFFSET : to + DATA_OFFSET + n] = view[
                    src + DATA_OFFSET : src + DATA_OFFSET + n
                ]
                _STATUS.pack_into(view, to, kc.TP_STATUS_SEND_REQUEST)
            _STATUS.pack_into(view, at(k - 1), kc.TP_STATUS_AVAILABLE)
            k -= 1
            continue
        rest = k - p
        for q in range(p, k):
            _STATUS.pack_into(view, at(q), kc.TP_STATUS_AVAILABLE)
        if verdict is Verdict.LINK_DOWN:
            c.link_down += rest
        elif verdict is Verdict.FAILED:
            failed = code
            c.errors += rest - 1
        else:
            c.dropped += rest  # BACKPRESSURE, or a RETRY that never ended
        k = p
    return (head + k) % count, failed

"""The wire's hot path: frames from one fd to another, in batches.

:func:`relay` moves every frame read from one :class:`PolledTap
<greentap.green.polled.PolledTap>` to another: per frame one ``read`` and
one ``write``, nothing else, in batches of at most ``budget`` frames.
Between batches it yields to the hub; it waits on the read watcher only
when the source has nothing more to read.  Counters are published after
every batch.

A batch runs in C (``greentap/green/_relay.c``) when the extension was built
and no mirror needs the frames, otherwise in Python, where ``os.read`` into
a fresh bytes object measured faster than ``readv`` into a reused buffer.
Both classify a failed write through the same table
(:mod:`greentap.core.verdicts`; the C loop is handed it when it loads).
:data:`LOOP` says which loop runs and :data:`LOOP_REASON` why not C.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import gevent

from greentap.core.verdicts import WRITE_VERDICTS, Verdict, table
from greentap.errors import EndpointClosed, FrameRejected, GreentapError, PeerGone, io_error

if TYPE_CHECKING:
    from greentap.green.polled import PolledTap

__all__ = [
    "LOOP",
    "LOOP_REASON",
    "Sink",
    "between_batches",
    "checked_fd",
    "publish",
    "relay",
    "python_write_frames",
    "ring_batch",
    "send_counted",
    "sends_udp",
    "takes",
    "takes_frames",
    "write_all",
    "write_again",
    "write_failed",
]


class Sink(Protocol):
    """What a relay writes to: an fd that takes one frame per ``write``.

    A :class:`~greentap.green.polled.PolledTap`, or a port whose fd takes
    frames the same way (a packet socket bound to an interface).
    """

    name: str
    counters: Any
    io: Any  # a GreenFd: its holder's fd is written to
    # A sink whose fd is a socket may also say ``batch_send = True``: the C
    # relay then sends its frames in batches (sendmmsg).


_relay_batch: Any = None
_relay_batch_to_socket: Any = None
_GATHER = 1 << 20  # bytes of frames gathered for one sendmmsg batch
#: The ring's batch in C (``ring_batch``), or None: packet sockets then take the Python loop.
ring_batch: Any = None
#: A batch of datagrams with one recvmmsg (``recv_datagrams``), or None: one
#: recvmsg_into per datagram.
recv_datagrams: Any = None
#: A list of frames written in C (``write_frames``), or the Python twin.
write_frames: Any = None
_relay_batch_to_udp: Any = None
#: A TAP's frames sent through a packet socket's transmit ring (``relay_batch_to_ring``),
#: or None: the generic loop writes them one at a time (:mod:`greentap.green.txring`
#: holds the ring's Python twin, for the tests and direct callers).
relay_batch_to_ring: Any = None
LOOP_REASON: str | None = None
if os.environ.get("GREENTAP_PURE_PYTHON"):
    LOOP_REASON = "GREENTAP_PURE_PYTHON is set"
else:
    try:
        from greentap.green import _relay as _c  # type: ignore[attr-defined]
    except ImportError as exc:
        LOOP_REASON = (
            f"the C extension greentap.green._relay was not built ({exc}): "
            "reinstall with a C compiler and the Python headers"
        )
    else:
        if _c.VERDICTS == tuple(v.name for v in Verdict):
            _c.set_verdicts(table())
            _relay_batch = _c.relay_batch
            _relay_batch_to_socket = _c.relay_batch_to_socket
            ring_batch = _c.ring_batch
            recv_datagrams = _c.recv_datagrams
            write_frames = _c.write_frames
            _relay_batch_to_udp = _c.relay_batch_to_udp
            relay_batch_to_ring = _c.relay_batch_to_ring
        else:  # pragma: no cover - a stale build
            LOOP_REASON = "the C extension was built from another version: rebuild it"
#: Which relay loop runs: ``"c"`` or ``"python"``.
LOOP = "c" if _relay_batch is not None else "python"

# How a C batch ended (greentap/green/_relay.c).
_BUDGET, _WAIT, _EOF, _READ_ERROR, _WRITE_ERROR, _HANDBACK = range(6)


def sends_udp() -> bool:
    """Whether the C relay can send to a tunnel port (``relay_batch_to_udp`` was built)."""
    return _relay_batch_to_udp is not None


def takes(sink: Any, mirrors: Any) -> bool:
    """Whether :func:`relay` can write to ``sink`` (with these mirrors).

    A tunnel's sink (``udp_relay``: datagrams to one peer) is served only by
    the C loop without mirrors, a sink with a relay of its own (``relay_from``:
    a stream port) only without mirrors; every other sink by both loops.
    """
    if getattr(sink, "relay_from", None) is not None:
        return not mirrors  # a stream port's gathered batches carry no mirrors
    return getattr(sink, "udp_relay", None) is None or (sends_udp() and not mirrors)


def takes_frames(sink: Any) -> bool:
    """Whether ``sink`` takes one frame per ``write`` on its fd (a TAP, a packet
    socket): not a tunnel's (datagrams to an address) nor a stream port's
    (frames behind their lengths, with a relay of its own)."""
    return getattr(sink, "relay_from", None) is None and getattr(sink, "udp_relay", None) is None


Mirror = Callable[[Any], Any]


def relay(
    src: PolledTap,
    dst: Sink,
    on_send_error: Callable[[GreentapError], Any],
    mirrors: tuple[Mirror, ...] = (),
) -> None:
    """Forward every frame read from ``src`` to ``dst`` until ``src`` closes.

    Args:
        src: the device read.
        dst: the device (or packet socket) written.  Writes never block: a frame ``dst`` cannot
            take is dropped and counted on ``dst``.
        on_send_error: called with the error when a write to ``dst`` fails
            for good (:attr:`~greentap.core.verdicts.Verdict.FAILED`); the
            relay keeps reading, counting frames for a closed ``dst`` in its
            ``tx_errors``.
        mirrors: callables given every frame read (e.g. a pcap port's
            ``send``); they must not block or raise.

    Raises:
        EndpointClosed: ``src`` was closed (the normal end).
        EndpointVanished, PeerGone, EndpointIOError: ``src`` failed.
    """
    relay_from = getattr(dst, "relay_from", None)
    relay_batches = getattr(dst, "relay_batches", None)
    if relay_from is not None:
        relay_from(src, on_send_error)  # a sink with a relay of its own (a stream port's)
    elif getattr(dst, "udp_relay", None) is not None:
        _relay_udp(src, dst, on_send_error)  # only where takes() said it can
    elif relay_batches is not None and not mirrors and relay_batch_to_ring is not None:
        # Batches sent its own way (a transmit ring): in C.  In Python one
        # write per frame measured faster than filling the ring's slots.
        relay_batches(src, on_send_error)
    elif _relay_batch is not None and not mirrors:
        _relay_c(src, dst, on_send_error)
    else:
        _relay_python(src, dst, on_send_error, mirrors)


def _relay_c(src: PolledTap, dst: Sink, on_send_error: Callable[..., Any]) -> None:
    if getattr(dst, "batch_send", False) and _relay_batch_to_socket is not None:
        # A socket takes a batch per system call (sendmmsg): the frames read
        # are gathered in one buffer with room for the largest after each.
        to_socket, size = _relay_batch_to_socket, src.max_frame_size
        buf = bytearray(max(_GATHER, 2 * size))

        def batch(fd: int, out: int, buf: bytearray, budget: int) -> Any:
            return to_socket(fd, out, buf, budget, size)
    else:
        batch, buf = _relay_batch, bytearray(src.max_frame_size)
    rx_c, tx_c = src.counters, dst.counters
    src_io, dst_io = src.io, dst.io
    budget = src_io.budget
    while True:
        # Re-read after every yield: either side may close meanwhile.
        fd = src_io.holder.fd
        if fd < 0:
            raise EndpointClosed(endpoint=src.name)
        end, code, *counts = batch(fd, dst_io.holder.fd, buf, budget)
        publish(rx_c, tx_c, *counts)
        if end == _WRITE_ERROR:
            write_failed(dst, OSError(code, os.strerror(code)), on_send_error)
        else:
            between_batches(src, end, code)


def between_batches(src: Any, end: int, code: int) -> None:
    """What a C batch's end asks of the reader: wait, yield, or fail.

    Raises:
        PeerGone: end of file.
        EndpointClosed, EndpointIOError: the read failed (closed meanwhile, or not).
    """
    if end == _WAIT:
        src.io.wait_readable()  # raises EndpointClosed if closed meanwhile
    elif end == _BUDGET:
        gevent.sleep(0)  # the budget is spent: let the hub run
    elif end == _EOF:
        raise PeerGone(endpoint=src.name)
    else:
        if src.io.closed:
            raise EndpointClosed(endpoint=src.name)
        raise io_error(src.name, OSError(code, os.strerror(code)), "read")


def _relay_udp(src: PolledTap, dst: Any, on_send_error: Callable[..., Any]) -> None:
    """The C batch to a tunnel with one peer (``relay_batch_to_udp``): frames read
    from ``src`` leave as datagrams in sendmmsg batches; one that needs cutting or
    finishing first is handed back and sent by the tunnel port's own ``send``."""
    to_udp, size = _relay_batch_to_udp, src.max_frame_size
    buf = bytearray(max(_GATHER, 2 * size))
    view = memoryview(buf)
    header = src.layout.header_size
    rx_c, src_io, budget = src.counters, src.io, src.io.budget
    while True:
        fd = src_io.holder.fd
        if fd < 0:
            raise EndpointClosed(endpoint=src.name)
        prefix, address = dst.udp_relay
        end, code, rx, rx_bytes, tx, tx_bytes, back_at, back_len, failures = to_udp(
            fd, dst.io.holder.fd, buf, budget, size, header, prefix, address
        )
        rx_c.rx_packets += rx
        rx_c.rx_bytes += rx_bytes
        try:
            dst.udp_sent(tx, tx_bytes, failures)
            if end == _HANDBACK:
                dst.send(view[back_at : back_at + back_len])
        except FrameRejected:
            pass  # counted by the port
        except GreentapError as exc:
            on_send_error(exc)
        between_batches(src, _BUDGET if end == _HANDBACK else end, code)


def write_again(fd: int, frame: Any, write: Callable[[int, Any], Any] = os.write) -> OSError | None:
    """Repeat a write whose error's verdict is RETRY, until it is written or fails otherwise.

    Returns:
        None once written, or the error (of another verdict) that ended it.
    """
    while True:
        try:
            write(fd, frame)
            return None
        except OSError as exc:
            if WRITE_VERDICTS.get(exc.errno or 0) is not Verdict.RETRY:
                return exc


def checked_fd(sink: Sink, frame: Any, min_frame: int) -> tuple[int, int]:
    """The fd to write ``frame`` to, and the frame's size, once both are fit for a write.

    Raises:
        EndpointClosed: the sink is closed.
        FrameRejected: a runt, shorter than ``min_frame`` (counted in ``tx_errors``).
    """
    fd = sink.io.holder.fd
    if fd < 0:
        raise EndpointClosed(endpoint=sink.name)
    size = len(frame)
    if size < min_frame:
        sink.counters.tx_errors += 1
        raise FrameRejected(
            f"frame of {size} bytes is shorter than {min_frame} (a runt)", endpoint=sink.name
        )
    return fd, size


def send_counted(
    fd: int, frame: Any, size: int, counters: Any, write: Callable[[int, Any], Any] = os.write
) -> bool:
    """Write one frame without blocking and count it where the verdict table says.

    The send of every port whose fd takes one frame per write (TAPs, packet sockets).

    Args:
        fd: the fd.
        frame: what ``write`` writes (a frame; buffers for ``os.writev``).
        size: the frame's length, for ``tx_bytes``.
        counters: the port's counters.
        write: ``os.write`` or ``os.writev``.

    Returns:
        True if written (``tx_packets``); False if dropped: BACKPRESSURE
        (``tx_dropped``) or LINK_DOWN (``tx_link_down``).

    Raises:
        OSError: any other verdict, not counted: the caller names and counts it.
    """
    try:
        write(fd, frame)
    except OSError as exc:
        failure: OSError | None = exc
        if WRITE_VERDICTS.get(exc.errno or 0) is Verdict.RETRY:
            failure = write_again(fd, frame, write)
        if failure is not None:
            verdict = WRITE_VERDICTS.get(failure.errno or 0, Verdict.FAILED)
            if verdict is Verdict.BACKPRESSURE:
                counters.tx_dropped += 1
                return False
            if verdict is Verdict.LINK_DOWN:
                counters.tx_link_down += 1
                return False
            raise failure from None
    counters.tx_packets += 1
    counters.tx_bytes += size
    return True


def write_failed(dst: Sink, exc: OSError, on_send_error: Callable[..., Any]) -> None:
    """A write to ``dst`` failed for good: count it (unless closed) and report it."""
    error = io_error(dst.name, exc, "write")
    if not isinstance(error, EndpointClosed):
        dst.counters.tx_errors += 1  # EndpointClosed is counted by on_send_error
    on_send_error(error)


def _relay_python(
    src: PolledTap,
    dst: Sink,
    on_send_error: Callable[..., Any],
    mirrors: tuple[Mirror, ...],
) -> None:
    read, write, verdicts = os.read, os.write, WRITE_VERDICTS
    size = src.max_frame_size
    rx_c, tx_c = src.counters, dst.counters
    src_io, dst_io = src.io, dst.io
    budget, sleep = src_io.budget, gevent.sleep
    backpressure, link_down_, failed = Verdict.BACKPRESSURE, Verdict.LINK_DOWN, Verdict.FAILED
    retry = Verdict.RETRY
    while True:
        fd, out = src_io.holder.fd, dst_io.holder.fd  # re-read after every yield
        if fd < 0:
            raise EndpointClosed(endpoint=src.name)
        rx = rx_bytes = tx = tx_bytes = dropped = link_down = errors = 0
        wait = False
        try:
            for _ in range(budget):
                try:
                    frame = read(fd, size)
                except BlockingIOError:
                    wait = True
                    break
                n = len(frame)
                if not n:
                    raise PeerGone(endpoint=src.name)
                rx += 1
                rx_bytes += n
                if mirrors:
                    for mirror in mirrors:
                        mirror(frame)
                if out < 0:
                    errors += 1
                    continue
                try:
                    write(out, frame)  # os.write retries EINTR itself (PEP 475)
                except OSError as exc:
                    verdict = verdicts.get(exc.errno or 0, failed)
                    if verdict is retry:
                        again = write_again(out, frame)
                        if again is None:
                            tx += 1
                            tx_bytes += n
                            continue
                        exc, verdict = again, verdicts.get(again.errno or 0, failed)
                    if verdict is backpressure:
                        dropped += 1
                    elif verdict is link_down_:
                        link_down += 1
                    elif verdict is not failed:
                        errors += 1  # this frame was refused; the next may pass
                    else:
                        out = -1  # the rest of this batch counts as errors
                        write_failed(dst, exc, on_send_error)
                    continue
                tx += 1
                tx_bytes += n
        except OSError as exc:
            if src_io.closed:
                raise EndpointClosed(endpoint=src.name) from exc
            raise io_error(src.name, exc, "read") from exc
        finally:
            publish(rx_c, tx_c, rx, rx_bytes, tx, tx_bytes, dropped, link_down, errors)
        if wait:
            src_io.wait_readable()  # raises EndpointClosed if closed meanwhile
        else:
            sleep(0)  # the budget is spent: let the hub run


def write_all(frames: list[Any], sink: Sink, on_send_error: Callable[..., Any]) -> None:
    """Write a list of frames to ``sink``, one write each (in C where it was built),
    counted on the sink as every relay counts; a FAILED verdict is reported
    (:func:`write_failed`) and the rest is still written."""
    write = write_frames or python_write_frames
    at = 0
    while at < len(frames):
        end, code, at, *counts = write(sink.io.holder.fd, frames, at)
        publish(sink.counters, sink.counters, 0, 0, *counts)
        if end == _WRITE_ERROR:
            write_failed(sink, OSError(code, os.strerror(code)), on_send_error)


def python_write_frames(
    out: int, frames: list[Any], start: int
) -> tuple[int, int, int, int, int, int, int, int]:
    """The Python twin of the C ``write_frames``: ``frames[start:]`` written to ``out``.

    Returns:
        ``(end, errno, next, tx, tx_bytes, dropped, link_down, errors)``: ``end``
        is 4 (a write error) with the errno when a verdict was FAILED, ``next``
        the index after that frame; else 0 and ``len(frames)``.
    """
    tx = tx_bytes = dropped = link_down = errors = 0
    failed, verdicts = Verdict.FAILED, WRITE_VERDICTS
    for i in range(max(start, 0), len(frames)):
        frame = frames[i]
        if out < 0:
            errors += 1
            continue
        failure = write_again(out, frame)
        if failure is None:
            tx += 1
            tx_bytes += len(frame)
            continue
        verdict = verdicts.get(failure.errno or 0, failed)
        if verdict is Verdict.BACKPRESSURE:
            dropped += 1
        elif verdict is Verdict.LINK_DOWN:
            link_down += 1
        elif verdict is not failed:
            errors += 1
        else:
            return _WRITE_ERROR, failure.errno or 0, i + 1, tx, tx_bytes, dropped, link_down, errors
    return _BUDGET, 0, len(frames), tx, tx_bytes, dropped, link_down, errors


def publish(
    rx_c: Any, tx_c: Any, rx: int, rx_bytes: int, tx: int, tx_bytes: int,
    dropped: int, link_down: int, errors: int,
) -> None:  # fmt: skip
    """Add one batch's counts to the source's and destination's counters."""
    rx_c.rx_packets += rx
    rx_c.rx_bytes += rx_bytes
    tx_c.tx_packets += tx
    tx_c.tx_bytes += tx_bytes
    tx_c.tx_dropped += dropped
    tx_c.tx_link_down += link_down
    tx_c.tx_errors += errors

"""PolledTap's cooperative read/write/close logic, over a SOCK_SEQPACKET pair.

A SEQPACKET socket keeps message boundaries as a TAP keeps frame boundaries
and returns EAGAIN when full, so these tests run the real code paths with no
root and no mocks.
"""

import errno
import os
import socket

import gevent
import gevent.event
import pytest

import greentap
from greentap.green.polled import Tap
from tests.conftest import open_fds

FRAME = bytes(range(64))


def test_recv_returns_exactly_one_frame_per_read(seqpacket):
    """Frames queued back to back come out one per recv(), never merged or split."""
    tap, peer = seqpacket
    frames = [bytes([i]) * size for i, size in enumerate((14, 60, 1514, 9000, 60))]
    for f in frames:
        peer.send(f)
    assert [tap.recv() for _ in frames] == frames
    assert tap.counters.rx_packets == len(frames)
    assert tap.counters.rx_bytes == sum(map(len, frames))


def test_recv_result_does_not_alias_the_reused_buffer(seqpacket):
    """recv() reads into a reused buffer but returns an independent copy."""
    tap, peer = seqpacket
    peer.send(b"A" * 60)
    peer.send(b"B" * 60)
    first = tap.recv()
    tap.recv()
    assert first == b"A" * 60


def test_recv_into_fills_callers_buffer(seqpacket):
    """recv_into writes one frame into the caller's buffer and returns its length."""
    tap, peer = seqpacket
    buf = bytearray(tap.max_frame_size)
    peer.send(FRAME)
    n = tap.recv_into(buf)
    assert n == len(FRAME)
    assert buf[:n] == FRAME


def test_recv_into_refuses_a_buffer_that_could_truncate(seqpacket):
    """A buffer shorter than the largest frame is refused, not silently truncated."""
    tap, peer = seqpacket
    peer.send(FRAME)
    with pytest.raises(ValueError, match="at least"):
        tap.recv_into(bytearray(1514))
    assert tap.recv() == FRAME  # the frame is still there: nothing lost


def test_read_buffer_is_sized_for_the_largest_frame_not_the_mtu(seqpacket):
    """Reads are sized for a 64 KiB frame plus headers, never for a 1500 MTU."""
    tap, peer = seqpacket
    assert tap.max_frame_size >= 65536 + 14 + 4
    big = os.urandom(60000)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    peer.send(big)
    assert tap.recv() == big


def test_recv_blocks_only_the_calling_greenlet(seqpacket):
    """While one greenlet waits for a frame, others keep running."""
    tap, peer = seqpacket
    got = gevent.spawn(tap.recv)
    ran = []
    gevent.spawn(ran.append, "other").join(timeout=1)
    assert ran == ["other"]
    assert not got.ready()
    peer.send(FRAME)
    assert got.get(timeout=2) == FRAME


def test_send_writes_one_frame_and_counts_it(seqpacket):
    """send() returns True and the peer receives exactly that frame."""
    tap, peer = seqpacket
    assert tap.send(FRAME) is True
    assert tap.send(memoryview(FRAME)[:20]) is True
    assert peer.recv(65536) == FRAME
    assert peer.recv(65536) == FRAME[:20]
    assert tap.counters.tx_packets == 2
    assert tap.counters.tx_bytes == len(FRAME) + 20


@pytest.mark.timeout(20, method="signal")  # a send that blocked in write() would hang here
def test_send_drops_and_counts_when_the_device_is_full(seqpacket):
    """On EAGAIN a frame is dropped and counted; send() returns False and never blocks
    (a blocking write into the full socket would hang until the signal-based timeout)."""
    tap, peer = seqpacket
    results = [tap.send(FRAME) for _ in range(5000)]
    accepted, dropped = results.count(True), results.count(False)
    assert dropped > 0, "the socket buffer never filled: test proves nothing"
    assert tap.counters.tx_dropped == dropped
    assert tap.counters.tx_packets == accepted
    received = 0
    while True:
        try:
            assert peer.recv(65536) == FRAME
        except BlockingIOError:
            break
        received += 1
    assert received == accepted  # every accepted frame arrived whole, no dropped one did


def test_runt_frame_is_an_error_the_caller_sees(seqpacket):
    """A frame shorter than an Ethernet header raises FrameRejected and sends nothing."""
    tap, peer = seqpacket
    with pytest.raises(greentap.FrameRejected, match="runt"):
        tap.send(b"\x00" * 13)
    assert tap.counters.tx_errors == 1
    assert tap.counters.tx_packets == 0
    with pytest.raises(BlockingIOError):
        peer.recv(100)


def test_close_wakes_a_blocked_reader_promptly(seqpacket):
    """close() from another greenlet makes a blocked recv() raise TapClosed at once."""
    tap, _ = seqpacket
    woke = gevent.event.Event()
    errors = []

    def reader():
        try:
            tap.recv()
        except greentap.TapClosed as exc:
            errors.append(exc)
        woke.set()

    gevent.spawn(reader)
    gevent.sleep(0)  # let the reader block in recv()
    tap.close()
    assert woke.wait(timeout=0.1), "reader still blocked 100 ms after close()"
    assert errors and "closed" in str(errors[0])


def test_iteration_ends_when_closed(seqpacket):
    """Iterating yields frames in order and ends cleanly when the device closes."""
    tap, peer = seqpacket
    for i in range(3):
        peer.send(bytes([i]) * 20)
    seen = []

    def consume():
        for frame in tap:
            seen.append(frame[0])
            if len(seen) == 3:
                gevent.spawn(tap.close)

    gevent.spawn(consume).get(timeout=2)
    assert seen == [0, 1, 2]


def test_close_is_idempotent_and_closes_the_fd_once(seqpacket):
    """A second close() must not close an unrelated fd that reused the number."""
    tap, _ = seqpacket
    fd = tap.fileno()
    tap.close()
    assert tap.closed
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF
    reused = os.open(os.devnull, os.O_RDONLY)
    try:
        tap.close()
        tap.tap.close()
        os.fstat(reused)  # still open
    finally:
        os.close(reused)


def test_closed_device_refuses_io(seqpacket):
    """recv/send on a closed device raise TapClosed instead of touching a stale fd."""
    tap, _ = seqpacket
    tap.close()
    with pytest.raises(greentap.TapClosed):
        tap.recv()
    with pytest.raises(greentap.TapClosed):
        tap.send(FRAME)
    with pytest.raises(greentap.TapClosed):
        tap.fileno()


def test_reader_yields_to_the_hub_after_a_bounded_batch():
    """With frames always ready, the reader still lets other greenlets run every `budget` frames."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    tap = Tap._adopt(ours.detach(), "sp1").polled(budget=10)
    frames = 100
    for _ in range(frames):
        peer.send(FRAME)
    ticks = []
    done = []

    def ticker():
        while not done:
            ticks.append(tap.counters.rx_packets)
            gevent.sleep(0)

    def reader():
        for _ in range(frames):
            tap.recv()
        done.append(True)

    gevent.spawn(ticker)
    gevent.spawn(reader).get(timeout=5)
    during = [t for t in ticks if 0 < t < frames]
    # 100 frames with a budget of 10: the reader yields at least 9 times, and
    # the queue never ran dry, so only the budget can have let the ticker in.
    assert len(during) >= 9
    tap.close()
    peer.close()


def test_counters_are_readable_as_plain_data(seqpacket):
    """Counters are a plain dict snapshot, readable at any time."""
    tap, peer = seqpacket
    peer.send(FRAME)
    tap.recv()
    tap.send(FRAME)
    snap = tap.counters.as_dict()
    assert snap == {
        "rx_packets": 1,
        "rx_bytes": 64,
        "rx_errors": 0,
        "tx_packets": 1,
        "tx_bytes": 64,
        "tx_dropped": 0,
        "tx_link_down": 0,
        "tx_errors": 0,
    }


def test_into_inner_detaches_and_restores_blocking_mode(seqpacket):
    """into_inner() gives the Tap back, blocking, and wakes a waiting reader."""
    tap, peer = seqpacket
    woke = gevent.event.Event()

    def reader():
        with pytest.raises(greentap.TapClosed, match="detached"):
            tap.recv()
        woke.set()

    gevent.spawn(reader)
    gevent.sleep(0)
    inner = tap.into_inner()
    assert woke.wait(timeout=1)
    assert tap.closed and not inner.closed
    assert os.get_blocking(inner.fileno())
    peer.send(FRAME)
    assert inner.read() == FRAME
    inner.close()


def test_peer_gone_is_an_error_not_a_spin(seqpacket):
    """A 0-byte read (the fd's other side is gone) raises instead of looping forever."""
    tap, peer = seqpacket
    peer.close()
    with pytest.raises(greentap.PeerGone, match="other side"):
        tap.recv()


def test_no_fd_is_leaked_by_polled_open_close():
    """Creating and closing PolledTaps leaves the process's fd table as it was."""
    before = open_fds()
    for _ in range(200):
        ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        Tap._adopt(ours.detach(), "sp2").polled().close()
        peer.close()
    assert open_fds() == before


def test_a_wait_with_a_timeout_ends_at_the_timeout_or_when_readable(seqpacket):
    """GreenFd.wait_readable(timeout): False when nothing arrives in time (the hub
    ran meanwhile), True as soon as a frame is there; the frame is still read."""
    tap, peer = seqpacket
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.005)) for _ in range(3)])
    assert tap.io.wait_readable(0.05) is False
    assert len(ticks) == 3  # other greenlets ran while it waited
    ticker.join()
    gevent.spawn_later(0.01, peer.send, FRAME)
    assert tap.io.wait_readable(5) is True
    assert tap.recv() == FRAME


def test_the_budget_yield_comes_before_a_read_never_with_a_frame_in_hand():
    """After ``budget`` reads in a row the next read yields to the hub first and only
    then reads: a greenlet killed in that yield (a forwarder rewiring its pumps)
    leaves the frame in the socket for whoever reads next."""
    from greentap.device.fd import FdHolder
    from greentap.green.fdio import GreenFd

    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    io = GreenFd(FdHolder(ours, name="b2"), budget=2)
    for i in range(3):
        peer.send(bytes([i]))

    def recv(sock, size):
        return sock.recv(size)

    assert [io.read(recv, 10), io.read(recv, 10)] == [b"\x00", b"\x01"]  # the budget spent
    third = gevent.spawn(io.read, recv, 10)
    gevent.sleep(0)  # it starts, and yields: before reading
    assert not third.dead
    # Where it waits now, the frame is still in the socket: a greenlet thrown
    # out of this wait (a rewire) would leave it for whoever reads next.
    assert ours.recv(10, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"\x02"
    assert third.get(timeout=1) == b"\x02"
    io.close()
    peer.close()

"""Writing a batch of frames (a tunnel's merged batch to a TAP): the C loop and its
Python twin write the same frames and count the same verdicts (no root)."""

import errno
import socket

import pytest

from greentap.core.verdicts import WRITE_VERDICTS, Verdict, table
from greentap.green import relay
from tests.conftest import drain

C = relay.write_frames
WRITERS = {"c": C, "python": relay.python_write_frames}
pytestmark = pytest.mark.skipif(C is None, reason="the C extension is not built")


def pair(rcvbuf=None):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    if rcvbuf:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
    return a, b


FRAMES = [bytearray(bytes([i]) * (60 + 37 * i)) for i in range(40)]


@pytest.mark.parametrize("kind", list(WRITERS))
def test_every_frame_is_written_whole_and_counted(kind):
    """40 frames of different sizes: all written, in order, counted once each."""
    a, b = pair()
    with a, b:
        end, code, after, tx, tx_bytes, dropped, link_down, errors = WRITERS[kind](
            a.fileno(), FRAMES, 0
        )
        assert (end, code, after) == (0, 0, 40)
        assert (tx, tx_bytes, dropped, link_down, errors) == (40, sum(map(len, FRAMES)), 0, 0, 0)
        assert drain(b) == [bytes(f) for f in FRAMES]


def test_a_full_destination_drops_the_same_frames_in_both():
    """A destination with room for a few frames: C and Python write the same ones and
    count the rest as dropped (EAGAIN is BACKPRESSURE)."""
    results = []
    for writer in WRITERS.values():
        a, b = pair(rcvbuf=4096)
        with a, b:
            counts = writer(a.fileno(), FRAMES, 5)
            results.append((counts, drain(b)))
    (c_counts, c_frames), (p_counts, p_frames) = results
    assert c_counts == p_counts and c_frames == p_frames
    assert c_counts[5] > 0 and c_counts[3] + c_counts[5] == 35  # written + dropped


@pytest.fixture
def failed_on_eagain(monkeypatch):
    """EAGAIN means FAILED, for both loops; the real table is back after the test."""
    original = table()  # taken now: monkeypatch restores the dict only after this teardown
    monkeypatch.setitem(WRITE_VERDICTS, errno.EAGAIN, Verdict.FAILED)
    relay._c.set_verdicts(bytes(WRITE_VERDICTS.get(e, Verdict.FAILED) for e in range(256)))
    yield
    relay._c.set_verdicts(original)


@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_failed_verdict_ends_the_batch_after_that_frame(kind, failed_on_eagain):
    """EAGAIN re-mapped to FAILED: the batch ends at the first frame refused, with
    its errno and the index after it; that frame is the caller's to count."""
    a, b = pair(rcvbuf=4096)
    with a, b:
        end, code, after, tx, *_ = WRITERS[kind](a.fileno(), FRAMES, 0)
        assert (end, code) == (4, errno.EAGAIN)
        assert after == tx + 1 and 0 < tx < 40


@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_closed_destination_counts_every_frame_as_an_error(kind):
    """fd -1 (the destination already failed): every frame is an error, none written."""
    assert WRITERS[kind](-1, FRAMES, 10)[2:] == (40, 0, 0, 0, 0, 30)


def test_python_twin_writes_bytes_and_views():
    """The twin takes any bytes-like frame, as C does."""
    a, b = pair()
    with a, b:
        frames = [b"x" * 60, memoryview(b"y" * 61), bytearray(b"z" * 62)]
        assert relay.python_write_frames(a.fileno(), frames, 0)[3] == 3
        assert C(a.fileno(), list(frames), 0)[3] == 3
        assert drain(b) == [bytes(f) for f in frames] * 2

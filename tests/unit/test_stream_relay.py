"""The stream relays (green.streams): the C batches and their Python twins agree, and a
wire between a TAP and a stream moves frames both ways through them (no root)."""

import contextlib
import random
import socket
import struct

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greentap.app.forwarder import Forwarder
from greentap.core import streamframe as sf
from greentap.green import relay, streams
from greentap.green.polled import Tap
from greentap.ports.base import FramePort
from greentap.ports.stream import StreamConnection
from tests.conftest import drain, settle

TWINS = [pytest.param((streams.python_gather_for_stream, streams.python_write_stream_frames),
                      id="python")]  # fmt: skip
if relay.LOOP == "c":
    from greentap.green import _relay as _c

    TWINS.append(pytest.param((_c.gather_for_stream, _c.write_stream_frames), id="c"))


def frame(i, size=60):
    return b"\xff" * 6 + bytes([2, 0, 0, 0, i >> 8 & 255, i & 255]) + b"\x08\x00" + bytes(
        [i & 255]) * (size - 14)  # fmt: skip


def stream(*frames):
    return b"".join(sf.frame_header(len(f)) + f for f in frames)


def seqpacket():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


@pytest.mark.parametrize("twins", TWINS)
def test_gather_reads_frames_behind_their_lengths_and_drops_past_the_room(twins):
    """Frames read from the fd land behind their 4-byte lengths; past ``room`` they
    are read and dropped; the batch ends when the fd would block (end 1)."""
    gather, _ = twins
    src, feed = seqpacket()
    sizes = [60, 1514, 100, 60]
    for i, size in enumerate(sizes):
        feed.send(frame(i, size))
    buf = bytearray(1 << 16)
    room = 4 + 60 + 4 + 1514 + 50  # the third frame does not fit, the fourth does
    end, err, rx, rx_bytes, used, frames, dropped, *_ = gather(src.fileno(), buf, 50, 1514, room)
    assert (end, err, rx, rx_bytes) == (1, 0, 4, sum(sizes))
    assert (frames, dropped) == (2, 2)
    assert bytes(buf[:used]) == stream(frame(0, 60), frame(1, 1514))
    feed.close()
    assert gather(src.fileno(), buf, 50, 1514, 1 << 20)[0] == 2  # end of file
    src.close()


@pytest.mark.parametrize("twins", TWINS)
def test_gather_leaves_a_vnet_header_out_and_hands_back_a_frame_that_needs_work(twins):
    """With a 10-byte vnet header in front of each frame read: an all-zero header is
    left out; a frame whose header asks for work (segmentation, a checksum) ends the
    batch (end 5) and is handed back, header and bytes; so is a runt."""
    gather, _ = twins
    src, feed = seqpacket()
    zero, work = bytes(10), bytes([1, 1]) + bytes(8)
    feed.send(zero + frame(0))
    feed.send(work + frame(1, 200))
    feed.send(zero + frame(2))
    buf = bytearray(1 << 16)
    end, _, rx, _, used, frames, dropped, at, length, back = gather(
        src.fileno(), buf, 50, 1524, 1 << 20, 10
    )
    assert (end, rx, frames, dropped) == (5, 2, 1, 0)
    assert bytes(buf[:used]) == stream(frame(0))
    assert back == work and bytes(buf[at : at + length]) == frame(1, 200)
    result = gather(src.fileno(), buf, 50, 1524, 1 << 20, 10)
    assert result[0] == 1 and bytes(buf[: result[4]]) == stream(frame(2))
    feed.send(zero + b"short")
    runt = gather(src.fileno(), buf, 50, 1524, 1 << 20, 10)
    assert runt[0] == 5 and runt[8] == 5 and runt[9] == zero
    src.close()
    feed.close()


@pytest.mark.parametrize("twins", TWINS)
def test_write_stream_frames_writes_whole_frames_and_stops_where_a_frame_is_cut(twins):
    """Each whole frame is written as one message; a runt is skipped and counted; the
    partial frame at the end is left (``next`` points at it); a length over the limit
    stops it and is reported."""
    _, write = twins
    out, peer = seqpacket()
    data = stream(frame(1), b"runt", frame(2, 1000)) + sf.frame_header(300) + bytes(20)
    end, err, at, rx, rx_bytes, tx, tx_bytes, dropped, down, errors, runts, too_long = write(
        out.fileno(), data, 0, len(data), sf.MAX_FRAME
    )
    assert (end, err, rx, tx, runts, too_long) == (0, 0, 2, 2, 1, 0)
    assert (dropped, down, errors) == (0, 0, 0)
    assert at == len(data) - 24 and rx_bytes == tx_bytes == 1060
    assert drain(peer) == [frame(1), frame(2, 1000)]
    bad = stream(frame(3)) + struct.pack("!I", 1 << 30) + bytes(10)
    result = write(out.fileno(), bad, 0, len(bad), sf.MAX_FRAME)
    assert result[2] == 64 and result[11] == 1 << 30 and drain(peer) == [frame(3)]
    assert write(-1, stream(frame(4)), 0, 64, sf.MAX_FRAME)[9] == 1  # closed: an error


@pytest.mark.parametrize("twins", TWINS)
def test_a_failed_write_ends_the_batch_after_that_frame(twins):
    """A write whose verdict is FAILED (the destination's peer is gone: EPIPE or
    ECONNREFUSED) ends the batch with end 4 and ``next`` just after that frame."""
    _, write = twins
    out, peer = seqpacket()
    peer.close()
    data = stream(frame(1), frame(2), b"runt") + struct.pack("!I", 1 << 30)
    end, err, at, *_, runts, too_long = write(out.fileno(), data, 0, len(data), sf.MAX_FRAME)
    assert end == 4 and err != 0 and at == 64
    assert (runts, too_long) == (0, 0)  # nothing after the failed frame was looked at
    out.close()


@pytest.mark.skipif(relay.LOOP != "c", reason="the C extension is not built")
@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=300), max_size=20),
    st.integers(0, 2**32 - 1),
    st.integers(0, 4),
    st.integers(0, 2**32 - 1),
)
def test_the_twins_agree_on_any_stream(frames, seed, flips, cut):
    """Any frames (runts too), damaged anywhere and cut anywhere: the C twin and the
    Python one write the same messages and report the same counts."""
    data = bytearray(stream(*frames))
    rng = random.Random(seed)
    for _ in range(flips if data else 0):
        data[rng.randrange(len(data))] = rng.randrange(256)
    end = cut % (len(data) + 1)
    results, sent = [], []
    for write in (_c.write_stream_frames, streams.python_write_stream_frames):
        out, peer = seqpacket()
        out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        results.append(write(out.fileno(), data, 0, end, 1000))
        sent.append(drain(peer))
        out.close()
        peer.close()
    assert results[0] == results[1]
    assert sent[0] == sent[1]


@pytest.mark.usefixtures("relay_loop")
def test_a_wire_between_a_tap_and_a_stream_carries_both_ways_through_the_relays():
    """A TAP (a SEQPACKET stand-in) wired to a stream connection: 500 frames each way
    arrive whole and in order, the TAP's side gathered into batches, the stream's
    written frame by frame, runts counted; a 1 GiB length ends the connection."""
    tap_end, host = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours, vm = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    host.setblocking(False)
    vm.setblocking(False)
    tap = FramePort(Tap._adopt(tap_end.detach(), "t0").polled())
    conn = StreamConnection(ours, "s0", kind="unix")
    fwd = Forwarder([tap, conn], keep_warm=None)
    fwd.start()
    try:
        got_vm, got_host = bytearray(), []

        def pump():
            for i in range(500):
                while True:
                    try:
                        host.send(frame(i, 60 + i % 1400))
                        break
                    except BlockingIOError:
                        gevent.sleep(0.001)
                vm.sendall(stream(frame(i, 60 + i % 700)) + (stream(b"x") if i == 7 else b""))
                if i % 20 == 0:
                    gevent.sleep(0.001)

        def collect():
            with contextlib.suppress(BlockingIOError):
                got_vm.extend(vm.recv(1 << 20))
            got_host.extend(drain(host))
            return len(got_host) == 500 and len(got_vm) == sum(
                4 + 60 + i % 1400 for i in range(500)
            )

        g = gevent.spawn(pump)
        settle(collect, timeout=10)
        g.get(timeout=1)
        assert bytes(got_vm) == stream(*(frame(i, 60 + i % 1400) for i in range(500)))
        assert got_host == [frame(i, 60 + i % 700) for i in range(500)]
        assert conn.drops["rx_runt"] == 1
        vm.sendall(struct.pack("!I", 1 << 30))
        settle(lambda: conn.closed)
        assert "1073741824 bytes" in conn.closed_because
        settle(lambda: fwd.topology.count == 1)  # it left the forwarder
    finally:
        fwd.stop()
        host.close()
        vm.close()

"""Stream connections beside TAPs with offloads (SuperStream): super-frames leave as
their segments, each behind its length; what arrives is merged again (no root)."""

import contextlib
import socket
import struct

import gevent
import pytest

from greentap.core import segment as seg
from greentap.core import streamframe as sf
from greentap.core.coalesce import PLAIN_HEADER
from greentap.ports.superstream import SuperStream
from tests.conftest import settle
from tests.unit.test_segment import super_frame
from tests.unit.test_stream import accept
from tests.unit.test_tunnel_offload import PAYLOAD, VNET, cut, read_until


@pytest.fixture
def pair():
    """Two SuperStreams joined by a unix stream pair: what one sends the other reads."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ends = SuperStream(a, "a", kind="unix"), SuperStream(b, "b", kind="unix")
    yield ends
    for end in ends:
        end.close()


def test_a_super_frame_leaves_as_segments_behind_their_lengths():
    """A TCP super-frame sent leaves as its segments, each a frame of QEMU's framing
    (the vnet header gone, the checksums finished) exactly as a NIC would cut it."""
    ours, qemu = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    port = SuperStream(ours, "s", kind="unix")
    frame, _ = super_frame(PAYLOAD, 1400, flags=0x10)
    original = [bytes(p) for p in seg.segment(frame)]
    assert port.send(frame) is True
    settle(lambda: port.queued == 0)
    qemu.setblocking(False)
    data = qemu.recv(1 << 20)
    offsets, end, runts, too_long = sf.split_frames(data, 0, len(data))
    got = [data[o : o + n] for o, n in zip(offsets[::2], offsets[1::2], strict=True)]
    assert got == original and (end, runts, too_long) == (len(data), 0, 0)
    assert port.counters.tx_packets == len(original) == 37
    port.close()
    qemu.close()


def test_segments_arriving_are_merged_into_super_frames(pair):
    """The segments of one flow that arrive in one read are merged into super-frames
    whose segments are the originals byte for byte; fewer, larger frames."""
    a, b = pair
    frame, _ = super_frame(PAYLOAD, 1400, flags=0x10)
    original = [bytes(p) for p in seg.segment(frame)]
    assert a.send(frame) is True
    got = read_until(b, len(original))
    assert cut(got) == original
    assert len(got) < len(original)
    assert b.counters.rx_packets == 37


def test_plain_frames_pass_behind_a_zero_header_and_checksums_get_finished(pair):
    """A frame with an all-zero vnet header crosses as it is and arrives behind a
    zero header; a frame that left its checksum to the NIC arrives finished."""
    a, b = pair
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    assert a.send(PLAIN_HEADER + arp) is True
    assert read_until(b, 1) == [PLAIN_HEADER + arp]
    small, _ = super_frame(b"x" * 100, 1400, flags=0x18)
    plain = bytearray(small)
    plain[1] = 0  # no GSO, still NEEDS_CSUM
    assert a.send(plain) is True
    (got,) = read_until(b, 1)
    assert got[10:] == bytes(seg.finished(plain)[0])


def test_bad_super_frames_runts_and_a_full_queue_are_counted_never_sent(pair):
    """A super-frame whose headers do not add up, a checksum offset outside the frame
    and a runt are each dropped and counted by reason; a super-frame that does not fit
    the send buffer is dropped whole, as backpressure."""
    a, _ = pair
    frame, _ = super_frame(PAYLOAD[:3000], 1000)
    broken = bytearray(frame)
    broken[10 + 23] = 17
    assert a.send(broken) is False
    outside = bytearray(VNET.pack(1, 0, 0, 0, 60, 16)) + frame[10:70]
    assert a.send(outside) is False
    assert a.send(PLAIN_HEADER + b"\x01" * 5) is False
    assert a.queued == 0
    a.send_buffer = 1000
    assert a.send(super_frame(PAYLOAD, 1400, flags=0x10)[0]) is False
    assert dict(a.drops) == {"tx_bad_super_frame": 1, "tx_bad_vnet_header": 1, "tx_runt": 1,
                             "tx_backpressure": 1}  # fmt: skip
    assert a.counters.tx_packets == 0


def test_a_1gib_length_still_ends_the_connection(pair):
    """Merging changes nothing for a hostile peer: a 1 GiB length disconnects it."""
    a, b = pair
    raw = a._io.holder.handle
    raw.send(struct.pack("!I", 1 << 30) + bytes(10))
    from greentap.errors import PeerBrokeFraming

    with pytest.raises(PeerBrokeFraming), gevent.Timeout(2):
        read_until(b, 1)
    assert b.closed


def test_a_connecting_endpoint_with_offloads_cuts_what_a_tap_sends(tmp_path):
    """unix:PATH opened with offloads (beside a TAP with them) is a switch port whose
    frames carry a vnet header: a TAP's super-frame reaches the peer as segments
    behind their lengths, never with the vnet header on the wire."""
    from greentap.core.endpoints import parse_endpoint
    from greentap.ports import open_port

    path = str(tmp_path / "c.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.setblocking(False)
    client = open_port(parse_endpoint(f"unix:{path}"), offload=True)
    assert client.header_size == 10 and client.sink is client
    reader = gevent.spawn(client.recv_into, bytearray(client.max_frame_size))
    peer = accept(server)
    settle(lambda: client.connected)
    frame, _ = super_frame(PAYLOAD[:5600], 1400, flags=0x10)
    assert client.send(frame) is True
    original = [bytes(p) for p in seg.segment(frame)]
    want = b"".join(sf.frame_header(len(p)) + p for p in original)
    peer.settimeout(2)
    got = b""
    while len(got) < len(want):
        gevent.sleep(0.01)
        got += peer.recv(1 << 20)
    assert got == want
    reader.kill()
    client.close()
    peer.close()
    server.close()


def test_a_tunnel_with_offloads_wired_to_a_stream_forwards_both_ways(tmp_path):
    """udp:// with offloads wired to unix: with offloads: a tunnel's own batch relay
    does not take a stream's sink (no frame per write there), so frames cross both
    ways through the generic loop and both pumps keep running."""
    from greentap.app.forwarder import Forwarder
    from greentap.core.endpoints import parse_endpoint
    from greentap.ports import open_port

    path = str(tmp_path / "t.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.setblocking(False)
    remote = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    remote.bind(("127.0.0.1", 0))
    remote.setblocking(False)
    udp = open_port(parse_endpoint(f"udp://127.0.0.1:{remote.getsockname()[1]}?local=127.0.0.1:0"),
                    offload=True)  # fmt: skip
    client = open_port(parse_endpoint(f"unix:{path}"), offload=True)
    fwd = Forwarder([udp, client], keep_warm=None)
    fwd.start()
    try:
        peer = accept(server)
        peer.setblocking(False)
        arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
        remote.sendto(arp, udp.local)
        got = bytearray()

        def arrived():
            with contextlib.suppress(BlockingIOError):
                got.extend(peer.recv(4096))
            return bytes(got) == sf.frame_header(len(arp)) + arp

        settle(arrived)
        peer.send(sf.frame_header(len(arp)) + arp)

        def back():
            try:
                return remote.recv(4096) == arp
            except BlockingIOError:
                return False

        settle(back)
        assert all(not g.dead for g in fwd._pumps.values())
    finally:
        fwd.stop()
        server.close()
        remote.close()

"""The ring's C loop and its pure-Python twin agree, frame for frame, on any ring (no root).

A ring is crafted in memory (tests/unit/test_tpacket.py's layout), then read
twice: by ``ring_batch`` of the C extension writing to one end of a
SOCK_SEQPACKET pair, and by the Python twin (``PacketSocket.next_slot`` and
the port's copy, as ``PacketPort.recv_into`` runs them).  Both must give the
same frames, the same counts, give back the same blocks and leave the same
cursor, including on rings full of random bytes (under ASan/UBSan in the
sanitize environment).
"""

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greentap.core import kernel_constants as kc
from greentap.core import tpacket
from greentap.device.packet import PacketSocket
from greentap.green import relay
from tests.unit.test_tpacket import BLOCK, FRAME, block

BLOCKS = 3
pytestmark = pytest.mark.skipif(relay.ring_batch is None, reason="the C extension is not built")


def ring_of(blocks):
    return bytearray(b"".join(bytes(b) for b in blocks))


def python_twin(ring, header):
    """Frames and counts as the port's Python path reads them."""
    sock = object.__new__(PacketSocket)
    sock.view = memoryview(ring)
    sock.geometry = tpacket.RingGeometry(block_size=BLOCK, block_count=BLOCKS)
    sock.vnet_hdr_size, sock.corrupt_blocks, sock.cursor = header, 0, [0, 0, 0, 0]
    frames, counts = [], {"truncated": 0, "runts": 0}
    while (slot := sock.next_slot()) is not None:
        raw = bytes(ring[slot.start : slot.start + slot.length])
        if slot.truncated:
            counts["truncated"] += 1
        elif slot.tag is None:
            frames.append(raw)
        else:
            try:
                frames.append(tpacket.frame_with_tag(raw, header, slot.tag))
            except ValueError:
                counts["runts"] += 1
    counts["corrupt"] = sock.corrupt_blocks
    return frames, counts, sock.cursor


def c_loop(ring, header):
    """Frames and counts as ring_batch writes them to a SOCK_SEQPACKET peer."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    cursor, frames = [0, 0, 0, 0], []
    counts = {"truncated": 0, "runts": 0, "corrupt": 0}
    with ours, peer:
        peer.setblocking(False)
        while True:
            end, _, rx, *_, truncated, runts, corrupt = relay.ring_batch(
                memoryview(ring), BLOCK, BLOCKS, cursor, ours.fileno(), 50, header
            )
            for key, n in (("truncated", truncated), ("runts", runts), ("corrupt", corrupt)):
                counts[key] += n
            for _ in range(rx):
                frames.append(peer.recv(1 << 17))
            if end == 1:  # no block ready
                return frames, counts, cursor
            assert end == 0


def status_of(ring):
    return [struct.unpack_from("=I", ring, i * BLOCK + tpacket.STATUS_OFFSET)[0]
            for i in range(BLOCKS)]  # fmt: skip


def both(blocks, header=0):
    """Run both on copies of one ring; check they agree; return the frames."""
    ring_c, ring_py = ring_of(blocks), ring_of(blocks)
    got_c, got_py = c_loop(ring_c, header), python_twin(ring_py, header)
    assert got_c == got_py
    assert status_of(ring_c) == status_of(ring_py)
    return got_c


def test_both_read_every_frame_of_every_ready_block_in_order():
    """Three blocks, two ready: the frames of the two come out in order; both stop
    at the block the kernel still holds, and give back the ones they read."""
    b0 = block([(FRAME + b"a", {}), (FRAME + b"b", {})])
    b1 = block([(FRAME + b"c", {})])
    b2 = block([(FRAME + b"d", {})], status=kc.TP_STATUS_KERNEL)
    frames, counts, cursor = both([b0, b1, b2])
    assert frames == [FRAME + b"a", FRAME + b"b", FRAME + b"c"]
    assert counts == {"truncated": 0, "runts": 0, "corrupt": 0}
    assert cursor == [2, 0, 0, 0]


def test_both_put_tags_back_and_move_the_checksum_start():
    """Tags from the metadata go back after the MAC addresses, csum_start moved by 4
    when the vnet header asks for a checksum; truncated frames and runts are counted."""
    vlan = kc.TP_STATUS_USER | kc.TP_STATUS_VLAN_VALID
    vnet = struct.pack("=BBHHHH", 1, 0, 0, 0, 34, 16)
    frames = [
        (vnet + FRAME, {"status": vlan, "tci": 42}),
        (vnet + FRAME, {"status": vlan | kc.TP_STATUS_VLAN_TPID_VALID, "tci": 7, "tpid": 0x88A8}),
        (vnet + FRAME, {"len": len(vnet + FRAME) + 1}),
        (FRAME[:11], {"status": vlan, "tci": 1}),
    ]
    out, counts, _ = both([block(frames), block([]), block([], status=0)], header=0)
    assert len(out) == 2 and counts == {"truncated": 1, "runts": 1, "corrupt": 0}
    # As header=0 here, the vnet bytes are frame bytes: the tag goes after byte 12.
    assert out[0] == (vnet + FRAME)[:12] + b"\x81\x00\x00\x2a" + (vnet + FRAME)[12:]


def test_with_a_vnet_header_the_tag_goes_after_it():
    """With a 10-byte vnet header, the tag goes 10 + 12 bytes in and csum_start moves."""
    vlan = kc.TP_STATUS_USER | kc.TP_STATUS_VLAN_VALID
    ring = block([(FRAME, {"status": vlan, "tci": 5})], header=10)
    start = tpacket.BLOCK_HEADER_SIZE + 82
    ring[start : start + 10] = struct.pack("=BBHHHH", 1, 0, 0, 0, 34, 16)
    (out,), _, _ = both([ring, block([], status=0), block([], status=0)], header=10)
    assert struct.unpack_from("=H", out, 6)[0] == 38
    assert out[10:] == FRAME[:12] + b"\x81\x00\x00\x05" + FRAME[12:]


frame_specs = st.lists(
    st.tuples(
        st.binary(min_size=0, max_size=300),
        st.fixed_dictionaries(
            {},
            optional={
                "status": st.sampled_from([1, 1 | 0x10, 1 | 0x10 | 0x40]),
                "tci": st.integers(0, 0xFFFF),
                "tpid": st.sampled_from([0x8100, 0x88A8]),
                "len": st.integers(0, 400),
            },
        ),
    ),
    max_size=20,
)


# Bytes written into the ring, (where, what): mostly over the block descriptors
# and the first frames' headers, where counts and offsets live; anywhere too.
WHERE = st.one_of(
    st.builds(lambda b, at: b * BLOCK + at, st.integers(0, BLOCKS - 1), st.integers(0, 600)),
    st.integers(0, BLOCKS * BLOCK - 4),
)
DAMAGE = st.tuples(WHERE, st.binary(min_size=1, max_size=4))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(frame_specs, min_size=BLOCKS, max_size=BLOCKS),
    st.lists(st.booleans(), min_size=BLOCKS, max_size=BLOCKS),
    st.lists(DAMAGE, max_size=6),
    st.sampled_from([0, 10]),
)
def test_any_ring_gives_the_same_frames_and_counts(specs, ready, damage, header):
    """Fuzz: rings of random frames and tags, some blocks not ready, bytes anywhere
    overwritten (counts, offsets, lengths): C and Python agree on every frame, every
    count, every block given back, and the cursor; nothing reads out of the ring."""
    blocks = [
        block(frames, status=kc.TP_STATUS_USER if r else 0, header=header)
        for frames, r in zip(specs, ready, strict=True)
    ]
    ring = ring_of(blocks)
    for at, data in damage:
        ring[at : at + len(data)] = data
    both([ring[i * BLOCK : (i + 1) * BLOCK] for i in range(BLOCKS)], header)


def test_a_bad_cursor_or_geometry_is_refused():
    """ring_batch checks what Python hands it: a cursor out of range, a ring
    shorter than its geometry."""
    ring = ring_of([block([])] * BLOCKS)
    with pytest.raises(ValueError):
        relay.ring_batch(memoryview(ring), BLOCK, BLOCKS + 1, [0, 0, 0, 0], -1, 1, 0)
    with pytest.raises(ValueError):
        relay.ring_batch(memoryview(ring), BLOCK, BLOCKS, [BLOCKS, 0, 0, 0], -1, 1, 0)
    with pytest.raises(ValueError):
        relay.ring_batch(memoryview(ring), BLOCK, BLOCKS, [0, 0, 0], -1, 1, 0)


def test_both_refuse_a_frame_past_the_block_end():
    """A snaplen reaching past the block's end: neither writes the frame; both give
    the block back and count it corrupt."""
    b0 = block([(FRAME, {}), (FRAME, {})])
    struct.pack_into("=I", b0, tpacket.BLOCK_HEADER_SIZE + 12, BLOCK)  # tp_snaplen
    frames, counts, cursor = both([b0, block([(FRAME + b"z", {})]), block([], status=0)])
    assert frames == [FRAME + b"z"]
    assert counts["corrupt"] == 1
    assert cursor == [2, 0, 0, 0]

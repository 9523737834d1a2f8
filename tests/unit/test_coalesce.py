"""Software receive offload: TCP segments merged, and only when a NIC would (no root)."""

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from greentap.core import segment as seg
from greentap.core.checksum import ones_complement_sum
from greentap.core.coalesce import PLAIN_HEADER, coalesce
from tests.unit.test_segment import super_frame

VNET = struct.Struct("=BBHHHH")


def segments(payload, gso_size, **kw):
    """The finished segments of a TCP stream: what a sender without TSO puts on the wire."""
    frame, csum_start = super_frame(payload, gso_size, **kw)
    return seg.segment(frame), csum_start


def verify(frame, csum_start, v6):
    """A merged super-frame is well formed: cut again, each segment's checksums verify."""
    out = seg.segment(frame)
    ip_at = csum_start - (40 if v6 else 20)
    for piece in out:
        if not v6:
            assert ones_complement_sum(piece[ip_at:csum_start]) == 0xFFFF
    return out


@settings(max_examples=150, deadline=None)
@given(
    length=st.integers(1, 30000),
    gso_size=st.integers(1, 1460),
    v6=st.booleans(),
    tags=st.lists(st.sampled_from([0x8100, 0x88A8]), max_size=2),
    flags=st.sampled_from([0x10, 0x18]),
    seq=st.integers(0, 0xFFFFFFFF),
    seed=st.integers(0, 1 << 32),
)
def test_segment_then_coalesce_gives_the_stream_back(length, gso_size, v6, tags, flags, seq, seed):
    """Segments of one flow, merged: super-frames whose segments are the original
    ones byte for byte (sequence numbers, IP IDs, flags, checksums), in order."""
    payload = random.Random(seed).randbytes(length)
    pieces, csum_start = segments(payload, gso_size, v6=v6, tags=tags, flags=flags, seq=seq)
    merged = coalesce(pieces)
    back = []
    for frame in merged:
        _, gso_type, _, size, _, _ = VNET.unpack_from(frame)
        if gso_type == 0:
            assert frame[:10] == PLAIN_HEADER
            back.append(bytes(frame[10:]))
        else:
            assert gso_type == (seg.GSO_TCPV6 if v6 else seg.GSO_TCPV4)
            assert size == gso_size
            back.extend(bytes(p) for p in verify(frame, csum_start, v6))
    # Cut again, the super-frames give the segments back byte for byte: the IPv4 ID
    # of re-cut segments counts up from the first, as the originals did.
    assert back == [bytes(p) for p in pieces]
    # 64 KiB of IP at most per super-frame: as few super-frames as that allows.
    per = (0xFFFF - (csum_start + 20 - (csum_start - (40 if v6 else 20)))) // gso_size
    assert len(merged) <= -(-len(pieces) // max(per, 1)) + 1


def test_a_damaged_segment_is_passed_on_as_it_came():
    """A segment whose TCP checksum fails is not merged (a fresh checksum would hide
    the damage): it and what follows of its flow come out separately, unchanged."""
    pieces, _ = segments(bytes(range(256)) * 20, 1000)
    bad = bytearray(pieces[1])
    bad[-1] ^= 0xFF
    out = coalesce([pieces[0], bad, pieces[2], pieces[3], pieces[4], pieces[5]])
    assert bytes(out[1]) == PLAIN_HEADER + bytes(bad)
    assert bytes(out[0]) == PLAIN_HEADER + bytes(pieces[0])  # alone: it stays as it came
    assert VNET.unpack_from(out[2])[1] == seg.GSO_TCPV4  # the rest merged after it
    assert [bytes(p) for p in seg.segment(out[2])] == [bytes(p) for p in pieces[2:]]


def test_other_flows_and_protocols_keep_their_place():
    """Two interleaved flows are merged each on its own; an ARP frame between them
    stays where it was; a FIN ends its flow's super-frame and comes after it."""
    a, _ = segments(b"a" * 4000, 1000, seq=1)
    b, _ = segments(b"b" * 3000, 1000, seq=9)
    b = [bytearray(p) for p in b]
    for p in b:  # another source port: another flow
        struct.pack_into("!H", p, 34, 4001)
        struct.pack_into("!H", p, 50, 0)
        pseudo = bytes(p[26:34]) + struct.pack("!HH", 6, len(p) - 34)
        struct.pack_into("!H", p, 50, ~ones_complement_sum(pseudo + bytes(p[34:])) & 0xFFFF)
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    fin, _ = segments(b"z" * 10, 1000, seq=4001, flags=0x11)
    out = coalesce([a[0], b[0], a[1], arp, b[1], a[2], fin[0], a[3], b[2]])
    kinds = [VNET.unpack_from(f)[1] for f in out]
    assert kinds == [seg.GSO_TCPV4, seg.GSO_TCPV4, 0, 0, 0]
    assert [bytes(p) for p in seg.segment(out[0])] == [bytes(p) for p in a[:3]]
    assert [bytes(p) for p in seg.segment(out[1])] == [bytes(p) for p in b]
    assert bytes(out[2]) == PLAIN_HEADER + arp
    assert bytes(out[3]) == PLAIN_HEADER + bytes(fin[0])
    assert bytes(out[4]) == PLAIN_HEADER + bytes(a[3])  # after the FIN: a flow of its own now


def test_what_a_nic_would_not_merge_is_not_merged():
    """A gap in the sequence, a different ACK, a short segment then a full one, a PSH
    then more, a pure ACK, a padded runt: each ends the super-frame before it."""
    full, _ = segments(b"x" * 3000, 1000, seq=100)
    gap, _ = segments(b"x" * 1000, 1000, seq=5000)
    out = coalesce([full[0], full[1], gap[0]])
    assert [VNET.unpack_from(f)[1] for f in out] == [seg.GSO_TCPV4, 0]
    other_ack = bytearray(full[1])
    struct.pack_into("!I", other_ack, 42, 12345)
    out = coalesce([full[0], other_ack])
    assert [VNET.unpack_from(f)[1] for f in out] == [0, 0]
    short, _ = segments(b"y" * 500, 1000, seq=1100)
    after, _ = segments(b"y" * 1000, 1000, seq=1600)
    out = coalesce([full[0], short[0], after[0]])
    assert [VNET.unpack_from(f)[1] for f in out] == [seg.GSO_TCPV4, 0]
    push, _ = segments(b"p" * 1000, 1000, seq=1100, flags=0x18)
    out = coalesce([full[0], push[0], full[2]])
    assert [VNET.unpack_from(f)[1] for f in out] == [seg.GSO_TCPV4, 0]
    assert out[0][10 + 34 + 13] & 0x08  # the PSH of the last segment kept
    ack_only, _ = segments(b"", 1000, seq=1100)
    out = coalesce([full[0], ack_only[0]])
    assert [bytes(f[10:]) for f in out] == [bytes(full[0]), bytes(ack_only[0])]
    padded = bytearray(segments(b"q", 1000, seq=100)[0][0]) + bytes(5)
    out = coalesce([padded, padded])
    assert [bytes(f[10:]) for f in out] == [bytes(padded)] * 2


def test_a_merged_frame_carries_the_pseudo_header_sum_for_the_tap():
    """The vnet header of a merged frame: NEEDS_CSUM, csum_start at TCP, offset 16,
    hdr_len the headers; the checksum field holds the pseudo-header's sum, so
    finishing it over the frame gives a valid checksum."""
    pieces, csum_start = segments(b"k" * 2500, 1000)
    (out,) = coalesce(pieces)
    flags, gso_type, hdr_len, gso_size, start, offset = VNET.unpack_from(out)
    assert (flags, gso_type, hdr_len, gso_size, start, offset) == (
        1,
        seg.GSO_TCPV4,
        csum_start + 20,
        1000,
        csum_start,
        16,
    )
    frame = bytearray(out[10:])
    from greentap.core.checksum import finish_checksum

    finish_checksum(frame, start, offset)
    pseudo = bytes(frame[26:34]) + struct.pack("!HH", 6, len(frame) - csum_start)
    assert ones_complement_sum(pseudo + bytes(frame[csum_start:])) == 0xFFFF


def test_garbage_never_raises():
    """Random bytes, truncated headers and lying lengths come out as they went in."""
    rng = random.Random(7)
    pieces, _ = segments(b"g" * 3000, 1000)
    junk = [rng.randbytes(rng.randrange(0, 80)) for _ in range(300)]
    junk += [bytes(p[:n]) for p in pieces for n in range(0, 80, 3)]
    for frame in junk:
        (out,) = coalesce([frame])
        assert bytes(out) == PLAIN_HEADER + frame


def test_a_super_frame_stops_at_64_kib_of_ip():
    """100 full segments of 1000 bytes: the first super-frame takes as many as fit in
    an IP length of 65535 (65), the next one the rest; cut again, all 100 come back."""
    first, _ = segments(b"m" * 50000, 1000, seq=0, flags=0x10)
    second, _ = segments(b"n" * 50000, 1000, seq=50000, ident=7 + 50, flags=0x10)
    out = coalesce(first + second)
    assert [VNET.unpack_from(f)[1] for f in out] == [seg.GSO_TCPV4] * 2
    assert struct.unpack_from("!H", out[0], 10 + 14 + 2)[0] == 20 + 20 + 65 * 1000
    again = [bytes(p) for f in out for p in seg.segment(f)]
    assert again == [bytes(p) for p in first + second]

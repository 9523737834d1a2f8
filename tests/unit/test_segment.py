"""Software segmentation of super-frames: every segment correct, the payload whole (no root)."""

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greentap.core import segment as seg
from greentap.core.checksum import ones_complement_sum

MACS = bytes.fromhex("020000000002020000000001")
V4 = (bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
V6 = (bytes.fromhex("fe80" + "00" * 12 + "0001"), bytes.fromhex("fe80" + "00" * 12 + "0002"))


def super_frame(payload, gso_size, *, v6=False, udp=False, tags=(), flags=0x18, seq=1000,
                ident=7, ecn=False):  # fmt: skip
    """A super-frame as the kernel hands it over: vnet header, Ethernet (+tags), IP,
    TCP or UDP with only the pseudo-header sum in its checksum field."""
    src, dst = V6 if v6 else V4
    proto = 17 if udp else 6
    l4 = (struct.pack("!HHHH", 4000, 5001, 8 + len(payload), 0) if udp else
          struct.pack("!HHIIBBHHH", 4000, 5001, seq, 99, 5 << 4, flags, 512, 0, 0))  # fmt: skip
    if v6:
        ip = struct.pack("!IHBB", 6 << 28, len(l4) + len(payload), proto, 64) + src + dst
    else:
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4) + len(payload), ident, 0x4000,
                         64, proto, 0) + src + dst  # fmt: skip
    eth = MACS + b"".join(struct.pack("!HH", t, 100) for t in tags)
    eth += b"\x86\xdd" if v6 else b"\x08\x00"
    csum_start = len(eth) + len(ip)
    kind = seg.GSO_UDP_L4 if udp else (seg.GSO_TCPV6 if v6 else seg.GSO_TCPV4)
    vnet = struct.pack("=BBHHHH", 1, kind | (seg.GSO_ECN if ecn else 0), csum_start + len(l4),
                       gso_size, csum_start, 6 if udp else 16)  # fmt: skip
    return vnet + eth + ip + l4 + payload, csum_start


def check_segments(out, payload, gso_size, csum_start, *, v6, udp, flags, seq, ident):
    """Every segment's lengths, numbers, flags and checksums; the payload back whole."""
    ip_at = csum_start - (40 if v6 else 20)
    l4_len = 8 if udp else 20
    got = b""
    for i, frame in enumerate(out):
        body = bytes(frame[csum_start + l4_len :])
        assert 0 < len(body) <= gso_size or (not payload and not body)
        got += body
        l4 = bytes(frame[csum_start:])
        if v6:
            src, dst = frame[ip_at + 8 : ip_at + 24], frame[ip_at + 24 : ip_at + 40]
            assert struct.unpack_from("!H", frame, ip_at + 4)[0] == len(l4)
            pseudo = bytes(src + dst) + struct.pack("!II", len(l4), 17 if udp else 6)
        else:
            assert ones_complement_sum(frame[ip_at:csum_start]) == 0xFFFF, "IPv4 checksum"
            assert struct.unpack_from("!H", frame, ip_at + 2)[0] == 20 + len(l4)
            assert struct.unpack_from("!H", frame, ip_at + 4)[0] == (ident + i) & 0xFFFF
            pseudo = bytes(frame[ip_at + 12 : ip_at + 20]) + struct.pack("!HH", 17 if udp else 6,
                                                                          len(l4))  # fmt: skip
        assert ones_complement_sum(pseudo + l4) == 0xFFFF, f"segment {i}: L4 checksum"
        if udp:
            assert struct.unpack_from("!H", frame, csum_start + 4)[0] == len(l4)
        else:
            want_seq = (seq + i * gso_size) & 0xFFFFFFFF
            assert struct.unpack_from("!I", frame, csum_start + 4)[0] == want_seq
            last, first = i == len(out) - 1, i == 0
            want = flags & ~(0 if last else 0x09) & ~(0 if first else 0x80)
            assert frame[csum_start + 13] == want
    assert got == payload


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(1, 12000),
    seed=st.integers(0, 1 << 32),
    gso_size=st.integers(1, 1500),
    v6=st.booleans(),
    udp=st.booleans(),
    tags=st.lists(st.sampled_from([0x8100, 0x88A8]), max_size=2),
    flags=st.sampled_from([0x10, 0x18, 0x19, 0x98, 0x99]),
)
def test_segments_carry_the_payload_with_every_header_right(length, seed, gso_size, v6, udp,
                                                            tags, flags):  # fmt: skip
    """Cut, then checked: the payloads concatenate to the original; each segment has
    its IP length (and IPv4 identifier and header checksum), TCP sequence number and
    flags (FIN/PSH last, CWR first), UDP length, and a checksum that verifies."""
    payload = random.Random(seed).randbytes(length)  # sizes drawn, not bytes: many segments
    frame, csum_start = super_frame(payload, gso_size, v6=v6, udp=udp, tags=tags, flags=flags)
    out = seg.segment(frame)
    assert len(out) == -(-len(payload) // gso_size)
    check_segments(out, payload, gso_size, csum_start, v6=v6, udp=udp, flags=flags, seq=1000,
                   ident=7)  # fmt: skip


def test_fin_and_psh_stay_on_the_last_segment_and_cwr_on_the_first():
    """FIN|PSH|CWR|ACK over three segments: CWR|ACK, ACK, FIN|PSH|ACK."""
    frame, csum_start = super_frame(b"z" * 2500, 1000, flags=0x99)
    out = seg.segment(frame)
    assert [f[csum_start + 13] for f in out] == [0x90, 0x10, 0x19]


def test_a_last_segment_of_one_byte_and_wrapping_numbers():
    """1 + a multiple of gso_size: the last segment carries 1 byte; the sequence
    number and IPv4 identifier wrap around."""
    payload = bytes(range(256)) * 11 + b"!"
    frame, csum_start = super_frame(payload, 1408, seq=0xFFFFFF00, ident=0xFFFF)
    out = seg.segment(frame)
    assert len(out) == 3 and len(out[-1]) == csum_start + 20 + 1
    check_segments(out, payload, 1408, csum_start, v6=False, udp=False, flags=0x18,
                   seq=0xFFFFFF00, ident=0xFFFF)  # fmt: skip


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda f: f[:1] + b"\x03" + f[2:], "gso type 3"),  # UFO
        (lambda f: f[:4] + b"\x00\x00" + f[6:], "gso_size 0"),
        (lambda f: f[: 10 + 12] + b"\x08\x06" + f[10 + 14 :], "not IP"),
        (lambda f: f[:6] + b"\xff\x00" + f[8:], "csum_start"),
        (lambda f: f[: 10 + 14] + b"\x46" + f[10 + 15 :], "IPv4 header's length"),
        (lambda f: f[: 10 + 14 + 9] + b"\x11" + f[10 + 14 + 10 :], "not a whole TCP header"),
        (lambda f: f[: 10 + 34 + 12], "not a whole TCP header"),  # ends inside it
        (
            lambda f: f[: 10 + 34 + 12] + b"\xf0" + f[10 + 34 + 13 : 10 + 34 + 40],
            "not a whole TCP header",
        ),
        (lambda f: f[:20], "outside|runt|ends inside|csum_start"),
    ],
)
def test_headers_that_do_not_add_up_are_refused(damage, match):
    """Super-frames that cannot be cut raise SegmentError saying why; none is truncated."""
    frame, _ = super_frame(b"x" * 3000, 1000)
    with pytest.raises(seg.SegmentError, match=match):
        seg.segment(damage(frame))


@settings(max_examples=300, deadline=None)
@given(
    st.booleans(),
    st.booleans(),
    st.integers(0, 400),
    st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=4),
)
def test_damaged_super_frames_are_cut_or_refused(v6, udp, cut, flips):
    """Fuzz: a real super-frame cut short anywhere in its headers and with bytes
    changed anywhere in them gives segments or SegmentError, never another error."""
    frame, _ = super_frame(b"y" * 300, 100, v6=v6, udp=udp)
    damaged = bytearray(frame[:cut])
    for at, value in flips:
        if at < len(damaged):
            damaged[at] = value
    try:
        out = seg.segment(damaged)
    except seg.SegmentError:
        return
    assert all(isinstance(s, bytearray) for s in out)

"""VXLAN encoding and decoding (RFC 7348), including arbitrary input."""

import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from greentap.core import vxlan

FRAME = bytes.fromhex("ffffffffffff020000000001") + b"\x08\x06" + bytes(28)


def test_header_layout_matches_the_rfc():
    """Flags byte with only I set, 24 reserved bits, 24-bit VNI, 8 reserved bits."""
    h = vxlan.header(0x123456)
    assert h == bytes([0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0])
    assert vxlan.encode(42, FRAME) == vxlan.header(42) + FRAME


def test_round_trip():
    """A frame encoded for a VNI decodes back to the same frame for that VNI."""
    dgram = vxlan.encode(7, FRAME)
    offset, reason = vxlan.decode(dgram, 7)
    assert reason is None
    assert dgram[offset:] == FRAME


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", vxlan.SHORT),
        (vxlan.header(7) + FRAME[:13], vxlan.SHORT),
        (bytes([0, 0, 0, 0]) + struct.pack("!I", 7 << 8) + FRAME, vxlan.NO_I_FLAG),
        (vxlan.encode(8, FRAME), vxlan.WRONG_VNI),
    ],
)
def test_bad_datagrams_give_a_reason(datagram, reason):
    """Short, flagless and foreign-VNI datagrams are refused with a named reason."""
    assert vxlan.decode(datagram, 7) == (None, reason)


def test_reserved_bits_are_ignored_on_receipt():
    """RFC 7348: reserved fields are ignored by the receiver."""
    dgram = bytes([0xFF, 0xAA, 0xBB, 0xCC]) + struct.pack("!I", (7 << 8) | 0xEE) + FRAME
    assert vxlan.decode(dgram, 7) == (8, None)


def test_vni_range_is_checked():
    """VNIs are 24 bits."""
    with pytest.raises(ValueError):
        vxlan.header(1 << 24)
    with pytest.raises(ValueError):
        vxlan.header(-1)


def test_overhead_figures():
    """VXLAN over IPv4 adds 50 bytes to what a TAP's MTU counts; over IPv6 70."""
    assert vxlan.OVERHEAD_IPV4 == 50
    assert vxlan.OVERHEAD_IPV6 == 70


def datagrams_for(vni):
    """Anything, and datagrams that pass each check in turn: a header (of any flags and
    VNI, or exactly ours) in front of an inner frame of any length."""
    return st.one_of(
        st.binary(max_size=200),
        st.builds(lambda hdr, body: hdr + body, st.binary(min_size=8, max_size=8),
                  st.binary(max_size=60)),
        st.builds(lambda body: vxlan.header(vni) + body, st.binary(max_size=60)),
        st.builds(lambda body: vxlan.header(vni ^ 1) + body, st.binary(max_size=60)),
    )  # fmt: skip


@given(st.integers(0, vxlan.MAX_VNI).flatmap(lambda v: st.tuples(datagrams_for(v), st.just(v))))
@example((vxlan.header(7) + bytes(14), 7))  # the valid branch runs whatever hypothesis draws
@example((vxlan.header(7) + bytes(13), 7))  # one byte short of an inner header
def test_decoder_never_raises_on_arbitrary_datagrams(case):
    """Any bytes: the decoder returns a valid offset or a reason, never an exception."""
    datagram, vni = case
    offset, reason = vxlan.decode(datagram, vni)
    if reason is None:
        assert offset == vxlan.HEADER_SIZE
        assert len(datagram) - offset >= 14
        assert datagram[0] & vxlan.FLAG_I
        assert int.from_bytes(datagram[4:7], "big") == vni
    else:
        assert offset is None
        assert reason in (vxlan.SHORT, vxlan.NO_I_FLAG, vxlan.WRONG_VNI)


@given(st.binary(min_size=14, max_size=300), st.integers(0, vxlan.MAX_VNI))
def test_encode_decode_round_trip_for_any_frame(frame, vni):
    """Every frame of at least an Ethernet header survives encapsulation."""
    dgram = vxlan.encode(vni, frame)
    offset, reason = vxlan.decode(dgram, vni)
    assert reason is None and dgram[offset:] == frame

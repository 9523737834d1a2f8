"""Transmit-ring geometry and the send hint, on crafted bytes (no root).

The relay over a real ring, in C and in Python, is in
tests/privileged/test_txring.py (it needs a packet socket).
"""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from greentap.core import kernel_constants as kc
from greentap.core import txring

VNET = struct.Struct("=BBHHHH")


def test_the_default_ring_lies_back_to_back_and_holds_an_mtu_frame():
    """The default geometry: 512 slots of 2 KiB in 16 blocks of 64 KiB (whole
    pages), 1 MiB mapped; a slot holds a 1500-byte-MTU frame with a VLAN tag and
    its vnet header; the request is struct tpacket_req in that order."""
    g = txring.TxGeometry()
    assert (g.frame_count, g.block_size, g.size) == (512, 65536, 1 << 20)
    assert g.room >= kc.VIRTIO_NET_HDR_SIZE + kc.ETH_HLEN + kc.VLAN_HLEN + 1500
    assert struct.unpack("=4I", g.request()) == (65536, 16, 2048, 512)


@pytest.mark.parametrize(
    "kw",
    [
        {"frame_size": 40},  # too small for a header and an Ethernet header
        {"frame_size": 48, "frames_per_block": 256},  # the kernel wants 52 for its header
        {"frames_per_block": 0},  # a block of nothing
        {"frame_size": 2056},  # not a multiple of 16 ... (2056 % 16 == 8)
        {"frame_size": 2064, "frames_per_block": 1},  # a block of part of a page
        {"block_count": 0},
        {"block_count": 5000},
    ],
    ids=["small", "under-52", "no-slot", "unaligned", "partial-page", "no-block", "too-many"],
)
def test_a_geometry_the_kernel_would_refuse_is_refused_here(kw):
    """Sizes the kernel's PACKET_TX_RING would refuse, or that would not lie back to
    back, are a ValueError before any socket is opened."""
    with pytest.raises(ValueError):
        txring.TxGeometry(**kw)


def slot(frame_len, gso_type=0, hdr_len=0):
    return bytearray(VNET.pack(0, gso_type, hdr_len, 0, 0, 0) + bytes(frame_len))


@pytest.mark.parametrize(
    ("frame_len", "gso_type", "hdr_len", "expected"),
    [
        (60, 0, 0, 60),  # a small frame: copied whole
        (1514, 0, 0, 128),  # a larger one: its first 128 bytes
        (1514, 0, 200, 200),  # a larger hint already there stays
        (60, 0, 60, 60),
        (20000, kc.VIRTIO_NET_HDR_GSO_NONE + 1, 66, 66),  # a super-frame's headers stay
        (0, 0, 0, 0),  # nothing but a vnet header: untouched
    ],
)
def test_the_hint_asks_for_small_frames_whole_and_leaves_super_frames_alone(
    frame_len, gso_type, hdr_len, expected
):
    """hint_linear raises hdr_len of a frame that is not a super-frame to its length,
    at most 128, and never lowers it; a super-frame's (its headers) is kept."""
    s = slot(frame_len, gso_type, hdr_len)
    txring.hint_linear(memoryview(s), len(s))
    assert VNET.unpack_from(s)[2] == expected


@given(st.binary(min_size=0, max_size=300))
def test_the_hint_changes_nothing_but_hdr_len_and_never_beyond_the_frame(data):
    """Whatever the bytes, only hdr_len may change, and only up to the frame's length."""
    s = bytearray(data)
    before = bytes(s)
    txring.hint_linear(memoryview(s), len(s))
    assert s[:2] == before[:2] and s[4:] == before[4:]
    if s != bytearray(before):
        assert VNET.unpack_from(s)[2] <= len(s) - kc.VIRTIO_NET_HDR_SIZE

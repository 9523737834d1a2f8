"""TPACKET_V3 blocks, VLAN tags put back and frames finished, on crafted bytes (no root)."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from greentap.core import kernel_constants as kc
from greentap.core import tpacket
from greentap.core.checksum import finish_checksum, ones_complement_sum

BLOCK = 1 << 17
MAC_AT = 82  # where the kernel puts the Ethernet header after a packet header (measured)


def block(frames, *, status=kc.TP_STATUS_USER, header=0, base_pad=0):
    """A ring block laid out as the kernel does: ``frames`` are ``(bytes, fields)``,
    fields overriding ``status``, ``tci``, ``tpid``, ``snaplen``, ``len``."""
    buf = bytearray(base_pad + BLOCK)
    offset = tpacket.BLOCK_HEADER_SIZE
    struct.pack_into("=IIIIIIQ", buf, base_pad, 3, 0, status, len(frames), offset, 0, 1)
    for i, (data, fields) in enumerate(frames):
        mac = MAC_AT + header
        size = (mac + len(data) + 15) & ~15
        nxt = size if i + 1 < len(frames) else 0
        tpacket.PACKET_HEADER.pack_into(
            buf, base_pad + offset, nxt, 0, 0, fields.get("snaplen", len(data)),
            fields.get("len", len(data)), fields.get("status", kc.TP_STATUS_USER), mac, mac + 14,
            0, fields.get("tci", 0), fields.get("tpid", 0),
        )  # fmt: skip
        buf[base_pad + offset + mac : base_pad + offset + mac + len(data)] = data
        offset += size
    return buf


FRAME = bytes(range(6)) + bytes(range(6, 12)) + b"\x08\x00" + b"payload" * 8


def test_a_block_lists_its_frames_in_order():
    """Each frame of a block is found where the kernel put it, with its length."""
    frames = [(FRAME + bytes([i]) * i, {}) for i in range(5)]
    buf = block(frames, base_pad=BLOCK)
    assert tpacket.block_ready(buf, BLOCK)
    slots = tpacket.read_block(buf, BLOCK, BLOCK)
    assert [bytes(buf[s.start : s.start + s.length]) for s in slots] == [f for f, _ in frames]
    assert not any(s.truncated or s.tag for s in slots)


def test_a_block_the_kernel_still_fills_is_not_ready():
    """block_status without TP_STATUS_USER: the block is the kernel's."""
    assert not tpacket.block_ready(block([(FRAME, {})], status=kc.TP_STATUS_KERNEL), 0)


def test_tags_and_truncation_are_reported():
    """A tag in the metadata (802.1Q by default, 802.1ad when its TPID is valid) and a
    frame cut short (snaplen below len) are each reported on the slot."""
    vlan = kc.TP_STATUS_USER | kc.TP_STATUS_VLAN_VALID
    frames = [
        (FRAME, {"status": vlan, "tci": 100}),
        (FRAME, {"status": vlan | kc.TP_STATUS_VLAN_TPID_VALID, "tci": 7, "tpid": 0x88A8}),
        (FRAME, {"status": vlan, "tci": 0}),  # a priority tag: VID 0, still a tag
        (FRAME, {"len": len(FRAME) + 1}),
    ]
    slots = tpacket.read_block(block(frames), 0, BLOCK)
    assert [s.tag for s in slots] == [(0x8100, 100), (0x88A8, 7), (0x8100, 0), None]
    assert [s.truncated for s in slots] == [False, False, False, True]


def test_a_vnet_header_is_part_of_the_slot():
    """With a vnet header the slot starts at the header, before the Ethernet header."""
    frame = bytes(10) + FRAME
    buf = block([(FRAME, {})], header=10)
    start = tpacket.BLOCK_HEADER_SIZE + MAC_AT
    buf[start : start + 10] = bytes(10)
    (slot,) = tpacket.read_block(buf, 0, BLOCK, header=10)
    assert bytes(buf[slot.start : slot.start + slot.length]) == frame


@pytest.mark.parametrize(
    ("at", "value", "why"),
    [
        (12, 10_000, "points back"),  # more frames than there are
        (16, 0, "outside"),  # the first frame inside the block descriptor
        (16, BLOCK - 8, "outside"),  # the first frame's header past the end
    ],
)
def test_a_block_that_does_not_add_up_is_refused(at, value, why):
    """Counts and offsets that point outside the block raise RingCorrupt, never read out of it."""
    buf = block([(FRAME, {}), (FRAME, {})])
    struct.pack_into("=I", buf, at, value)
    with pytest.raises(tpacket.RingCorrupt, match=why):
        tpacket.read_block(buf, 0, BLOCK)


def test_a_frame_longer_than_the_block_is_refused():
    """A snaplen reaching past the block's end is refused."""
    buf = block([(FRAME, {})])
    struct.pack_into("=I", buf, tpacket.BLOCK_HEADER_SIZE + 12, BLOCK)  # tp_snaplen
    with pytest.raises(tpacket.RingCorrupt):
        tpacket.read_block(buf, 0, BLOCK)


@given(st.binary(min_size=tpacket.BLOCK_HEADER_SIZE, max_size=4096), st.integers(0, 12))
def test_any_bytes_give_slots_inside_the_block_or_ring_corrupt(data, header):
    """Fuzz: whatever a block holds, read_block returns slots inside it or raises
    RingCorrupt; nothing else, never an out-of-bounds slot."""
    buf = bytearray(BLOCK)
    buf[: len(data)] = data
    try:
        slots = tpacket.read_block(buf, 0, 4096, header)
    except tpacket.RingCorrupt:
        return
    for slot in slots:
        assert 0 <= slot.start and slot.start + slot.length <= 4096


def test_a_tag_is_put_back_after_the_mac_addresses():
    """frame_with_tag inserts TPID and TCI after the two MAC addresses."""
    tagged = tpacket.frame_with_tag(FRAME, 0, (0x8100, 0x2064))
    assert tagged == FRAME[:12] + b"\x81\x00\x20\x64" + FRAME[12:]
    with pytest.raises(ValueError):
        tpacket.frame_with_tag(FRAME[:11], 0, (0x8100, 1))


def vnet(flags=0, gso_type=0, csum_start=0, csum_offset=0):
    return struct.pack("=BBHHHH", flags, gso_type, 0, 0, csum_start, csum_offset)


def test_a_tag_put_back_moves_the_checksum_start():
    """With NEEDS_CSUM, csum_start moves past the tag (as a TAP expects); without, it stays."""
    needs = tpacket.frame_with_tag(vnet(1, 0, 34, 16) + FRAME, 10, (0x8100, 5))
    assert struct.unpack_from("=H", needs, 6)[0] == 38
    plain = tpacket.frame_with_tag(vnet(0, 0, 34, 16) + FRAME, 10, (0x8100, 5))
    assert struct.unpack_from("=H", plain, 6)[0] == 34


def udp_frame(payload, *, partial):
    """An Ethernet/IPv4/UDP frame; with ``partial`` its checksum field holds only the
    pseudo-header's sum, as a sender leaving it to the NIC does."""
    src, dst = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
    length = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, length)
    udp = struct.pack("!HHHH", 4000, 5000, length, 0) + payload
    if partial:
        field = ones_complement_sum(pseudo)
    else:
        field = (~ones_complement_sum(pseudo + udp) & 0xFFFF) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", field) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0, 64, 17, 0, src, dst)
    return FRAME[:12] + b"\x08\x00" + ip + udp


@given(st.binary(max_size=1400))
def test_a_checksum_left_to_the_nic_is_finished(payload):
    """plain_frames finishes a NEEDS_CSUM frame: the result equals the frame with its
    checksum computed whole, and the UDP checksum verifies."""
    partial = udp_frame(payload, partial=True)
    (out,) = tpacket.plain_frames(vnet(1, 0, 34, 6) + partial, None)
    assert bytes(out) == udp_frame(payload, partial=False)


def test_a_tagged_frame_is_finished_past_its_tag():
    """A tag put back and a checksum finished: the checksum covers the right bytes."""
    partial = udp_frame(b"x" * 33, partial=True)
    (out,) = tpacket.plain_frames(vnet(1, 0, 34, 6) + partial, (0x8100, 9))
    whole = udp_frame(b"x" * 33, partial=False)
    assert bytes(out) == whole[:12] + b"\x81\x00\x00\x09" + whole[12:]


def test_bad_super_frames_runts_and_bad_offsets_are_refused():
    """A super-frame whose headers do not add up (here: no IP header at all), a runt
    and checksum offsets outside the frame raise ValueError: nothing is passed on
    half-finished."""
    with pytest.raises(ValueError, match="not IP"):
        gso = struct.pack("=BBHHHH", 1, 1, 0, 1400, 34, 16)  # TCPv4, gso_size 1400
        tpacket.plain_frames(gso + FRAME[:12] + b"\x88\xb5" + FRAME[14:], None)
    with pytest.raises(ValueError, match="runt"):
        tpacket.plain_frames(vnet() + FRAME[:13], None)
    with pytest.raises(ValueError, match="outside"):
        tpacket.plain_frames(vnet(1, 0, 60, 16) + FRAME, None)


def rfc1071(data):
    """The textbook loop, as the reference."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


@given(st.binary(max_size=3000))
def test_the_ones_complement_sum_matches_the_textbook_loop(data):
    """ones_complement_sum equals RFC 1071's loop for any bytes (0xFFFF for a
    non-zero multiple of 0xFFFF, 0 only for all zeros)."""
    assert ones_complement_sum(data) == rfc1071(data)


def test_a_zero_checksum_is_sent_as_all_ones():
    """A sum that makes the checksum 0 is written as 0xFFFF, as the kernel does."""
    frame = bytearray(b"\xff\xff" + bytes(2))  # the sum of the rest is 0xFFFF
    finish_checksum(frame, 0, 2)
    assert frame[2:] == b"\xff\xff"
    with pytest.raises(ValueError):
        finish_checksum(bytearray(4), 2, 1)


def test_ring_geometry_is_checked():
    """Block sizes that are not a power of two or too small, and absurd counts, are refused."""
    for kw in ({"block_size": 1 << 16}, {"block_size": 3 << 17}, {"block_count": 0},
               {"retire_ms": 0}):  # fmt: skip
        with pytest.raises(ValueError):
            tpacket.RingGeometry(**kw)
    geometry = tpacket.RingGeometry()
    assert geometry.size == geometry.block_size * geometry.block_count
    assert struct.unpack("=7I", geometry.request())[:2] == (geometry.block_size, 32)


@pytest.mark.parametrize(
    ("kinds", "mode", "expected"),
    [
        (["tap", "packet"], "auto", True),
        (["packet", "packet", "pcap"], "auto", True),
        (["tap", "packet", "vxlan"], "auto", True),
        (["tap", "udp"], "auto", True),
        (["vxlan", "udp"], "auto", False),  # nothing takes super-frames natively: no gain
        (["tap", "fd"], "auto", False),
        (["vxlan", "udp"], "on", True),
        (["tap", "packet"], "off", False),
        (["tap", "packet"], "on", True),
    ],
)
def test_offloads_are_on_when_every_carrier_takes_super_frames(kinds, mode, expected):
    """A packet: interface carries super-frames as a TAP does, tunnels by cutting and
    merging them: auto turns offloads on with a TAP or packet: interface among them,
    off with an fd: endpoint (plain frames) or tunnels alone."""
    from greentap.app.startup import offload_policy
    from greentap.core.endpoints import EndpointSpec

    specs = [EndpointSpec(kind, "x", {}, kind) for kind in kinds]
    assert offload_policy(specs, mode) is expected

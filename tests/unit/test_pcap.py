"""pcap encoding: the bytes tcpdump and tshark read."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from greentap.core import pcap


def test_global_header_layout():
    """Magic a1b2c3d4, version 2.4, zone 0, sigfigs 0, snaplen, LINKTYPE_ETHERNET."""
    h = pcap.global_header(1500)
    assert len(h) == 24
    assert struct.unpack("<IHHiIII", h) == (0xA1B2C3D4, 2, 4, 0, 0, 1500, 1)


def test_record_carries_time_and_lengths():
    """A record stores seconds, microseconds, captured and original length."""
    frame = bytes(range(60))
    rec = pcap.record(frame, 1_700_000_000_123_456_789)
    assert struct.unpack_from("<IIII", rec) == (1_700_000_000, 123_456, 60, 60)
    assert rec[16:] == frame


def test_snaplen_cuts_but_keeps_the_original_length():
    """With a snap length, only that much is kept; orig_len still tells the truth."""
    rec = pcap.record(bytes(1000), 0, snaplen=96)
    assert struct.unpack_from("<IIII", rec)[2:] == (96, 1000)
    assert len(rec) == 16 + 96


def test_bad_snaplen_refused():
    """A snap length below 1 is refused."""
    with pytest.raises(ValueError):
        pcap.global_header(0)


@given(st.lists(st.binary(min_size=1, max_size=200), max_size=20), st.integers(1, 300))
def test_round_trip(frames, snaplen):
    """Whatever frames go in, parse() reads them back in order, cut to snaplen."""
    data = pcap.global_header(snaplen) + b"".join(
        pcap.record(f, i * 1_000_000_000 + 5_000, snaplen) for i, f in enumerate(frames)
    )
    got_snaplen, records = pcap.parse(data)
    assert got_snaplen == snaplen
    assert [(ts, orig, body) for ts, orig, body in records] == [
        (i * 1_000_000 + 5, len(f), f[:snaplen]) for i, f in enumerate(frames)
    ]


def test_torn_record_is_detected():
    """A file cut inside a record is reported, not half-read."""
    data = pcap.global_header() + pcap.record(bytes(60), 0)
    with pytest.raises(ValueError, match="torn"):
        pcap.parse(data[:-1])

"""QEMU's stream framing: frames behind a 4-byte length, split out of reads (no root).

The Python reference and its C twin (``greentap.core._offload.split_frames``)
are run on the same input, cut anywhere and damaged anywhere (under
ASan/UBSan in the sanitize environment).
"""

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greentap.core import _accel
from greentap.core import streamframe as sf

C = _accel.offload
TWIN = settings(max_examples=300, deadline=None)
SPLITTERS = [pytest.param(sf.python_split_frames, id="python")] + (
    [pytest.param(C.split_frames, id="c")] if C is not None else []
)


def stream(*frames):
    return b"".join(sf.frame_header(len(f)) + f for f in frames)


@pytest.mark.parametrize("split", SPLITTERS)
def test_whole_frames_are_found_and_a_partial_one_waits(split):
    """Each whole frame is found where it is; a frame whose bytes have not all
    come yet (or a header cut short) is left for the next read."""
    a, b = bytes(range(60)), bytes(1500)
    data = stream(a, b) + sf.frame_header(100) + bytes(40)
    frames, end, runts, too_long = split(data, 0, len(data), sf.MAX_FRAME)
    assert frames == [4, 60, 68, 1500]
    assert (end, runts, too_long) == (1568, 0, 0)
    assert split(data, 0, 2, sf.MAX_FRAME)[:2] == ([], 0)  # half a header
    assert split(data, 64, len(data), sf.MAX_FRAME)[0] == [68, 1500]  # from a later boundary


@pytest.mark.parametrize("split", SPLITTERS)
def test_runts_are_skipped_and_counted_without_losing_step(split):
    """A frame shorter than an Ethernet header (an empty one too) is skipped and
    counted; the frames after it are still found."""
    data = stream(b"", b"short", bytes(60))
    frames, end, runts, too_long = split(data, 0, len(data), sf.MAX_FRAME)
    assert (frames, end, runts, too_long) == ([17, 60], len(data), 2, 0)


@pytest.mark.parametrize("split", SPLITTERS)
def test_a_length_over_the_limit_stops_the_split_and_is_reported(split):
    """A length over the limit (a 1 GiB frame, or garbage read as a length) is
    reported with where it starts; the frames before it are still found."""
    data = stream(bytes(60)) + struct.pack("!I", 1 << 30) + bytes(100)
    frames, end, runts, too_long = split(data, 0, len(data), sf.MAX_FRAME)
    assert (frames, end, runts, too_long) == ([4, 60], 64, 0, 1 << 30)
    assert split(stream(bytes(61)), 0, 65, 60)[3] == 61  # the limit is the caller's


@pytest.mark.parametrize("split", SPLITTERS)
def test_a_range_outside_the_buffer_is_refused(split):
    """Offsets outside the buffer or reversed are a ValueError, never a read past it."""
    for start, end in ((0, 11), (-1, 4), (5, 4)):
        with pytest.raises(ValueError):
            split(bytes(10), start, end, sf.MAX_FRAME)


@pytest.mark.skipif(C is None, reason="the C extension is not built")
@TWIN
@given(
    st.lists(st.binary(max_size=200), max_size=20),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 5),
    st.integers(14, 300),
)
def test_the_c_twin_agrees_on_any_stream(frames, seed, cut, flips, limit):
    """Any frames (runts included), cut at any byte and damaged anywhere: the C
    twin finds the same frames, stops at the same byte and counts the same."""
    data = bytearray(stream(*frames))
    rng = random.Random(seed)
    for _ in range(flips if data else 0):
        data[rng.randrange(len(data))] = rng.randrange(256)
    end = cut % (len(data) + 1)
    start = 0
    while True:
        ref = sf.python_split_frames(data, start, end, limit)
        assert C.split_frames(data, start, end, limit) == tuple(ref)
        assert C.split_frames(memoryview(data), start, end, limit) == tuple(ref)
        if ref.too_long or ref.end == start:
            break
        start = ref.end


@given(st.lists(st.binary(min_size=14, max_size=300), max_size=30), st.data())
@settings(max_examples=200, deadline=None)
def test_frames_survive_any_cutting_into_reads(frames, data):
    """However the stream is cut into reads, carrying the partial rest over,
    exactly the frames sent come out, in order."""
    whole = stream(*frames)
    buf, got, at = bytearray(), [], 0
    while at < len(whole):
        step = data.draw(st.integers(1, len(whole) - at))
        buf += whole[at : at + step]
        at += step
        offsets, end, runts, too_long = sf.split_frames(buf, 0, len(buf))
        assert (runts, too_long) == (0, 0)
        got += [bytes(buf[o : o + n]) for o, n in zip(offsets[::2], offsets[1::2], strict=True)]
        del buf[:end]
    assert got == frames and not buf

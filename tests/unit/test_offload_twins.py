"""The offloads' C twins and their Python references agree on any input (no root).

``greentap.core._offload`` computes checksums, cuts super-frames and merges
segments; :mod:`greentap.core.checksum`, :mod:`~greentap.core.segment` and
:mod:`~greentap.core.coalesce` are the references.  Hypothesis feeds both
well-formed frames and the same frames damaged anywhere (under ASan/UBSan in
the sanitize environment): both must refuse the same super-frames and give
the same bytes for the rest.
"""

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greentap.core import _accel
from greentap.core import coalesce as co
from greentap.core import segment as seg
from greentap.core.checksum import python_ones_complement_sum
from tests.unit.test_segment import super_frame

C = _accel.offload
pytestmark = pytest.mark.skipif(C is None, reason="the C extension is not built")
TWIN = settings(max_examples=300, deadline=None)


@TWIN
@given(st.binary(max_size=3000))
def test_checksums_agree(data):
    """The ones' complement sum of any bytes, odd lengths and all zeros included."""
    assert C.checksum(data) == python_ones_complement_sum(data)
    assert C.checksum(bytearray(data)) == C.checksum(memoryview(data))


def damaged(frame, seed, flips):
    """``frame`` with ``flips`` random bytes replaced, mostly in the headers."""
    rng = random.Random(seed)
    out = bytearray(frame)
    for _ in range(flips if out else 0):
        at = rng.randrange(min(len(out), 120)) if rng.random() < 0.8 else rng.randrange(len(out))
        out[at] = rng.randrange(256)
    if out and rng.random() < 0.2:
        del out[rng.randrange(len(out)) :]  # cut short anywhere
    return bytes(out)


frames = st.builds(
    lambda length, gso, v6, udp, tags, flags, seed: super_frame(
        random.Random(seed).randbytes(length), gso, v6=v6, udp=udp, tags=tags, flags=flags
    )[0],
    length=st.integers(0, 9000),
    gso=st.integers(1, 1500),
    v6=st.booleans(),
    udp=st.booleans(),
    tags=st.lists(st.sampled_from([0x8100, 0x88A8]), max_size=2),
    flags=st.sampled_from([0x10, 0x18, 0x19, 0x98, 0xD2]),
    seed=st.integers(0, 1 << 32),
)


def python_result(fn, *args):
    try:
        return fn(*args)
    except seg.SegmentError:
        return "refused"


def c_result(fn, *args):
    try:
        return fn(*args)
    except seg.SegmentError:
        return "refused"


@TWIN
@given(frame=frames, prefix=st.sampled_from([b"", bytes(8), b"\x08" + bytes(7)]),
       seed=st.integers(0, 1 << 32), flips=st.integers(0, 6))  # fmt: skip
def test_cutting_agrees(frame, prefix, seed, flips):
    """A super-frame, whole or damaged: the C cut and the Python one both refuse it,
    or give the same datagrams (bytes and size)."""
    frame = damaged(frame, seed, flips) if flips else frame
    assert c_result(C.segment, frame, prefix) == python_result(seg.python_cut, frame, prefix)


@TWIN
@given(frame=frames, seed=st.integers(0, 1 << 32), flips=st.integers(0, 6))
def test_cutting_behind_lengths_agrees(frame, seed, flips):
    """The stream framing's cut (each segment behind its 4-byte length): both twins
    refuse the same super-frames or give the same bytes, and each length is the
    segment's own."""
    frame = damaged(frame, seed, flips) if flips else frame
    c = c_result(C.segment, frame, bytes(4), True)
    assert c == python_result(seg.python_cut, frame, bytes(4), True)
    if c != "refused":
        joined, each = c
        for at in range(0, len(joined), each):
            assert int.from_bytes(joined[at : at + 4], "big") == min(each, len(joined) - at) - 4


@TWIN
@given(
    flows=st.lists(
        st.tuples(st.integers(0, 6000), st.integers(200, 1460), st.booleans(),
                  st.sampled_from([0x10, 0x18, 0x11])),
        min_size=1, max_size=4,
    ),
    seed=st.integers(0, 1 << 32),
    flips=st.integers(0, 4),
)  # fmt: skip
def test_merging_agrees(flows, seed, flips):
    """Segments of several flows interleaved, some damaged, some cut short, plus
    random bytes: C and Python merge them into the same frames, in the same order."""
    rng = random.Random(seed)
    streams = []
    for n, (length, gso, v6, flags) in enumerate(flows):
        frame, _ = super_frame(rng.randbytes(length), gso, v6=v6, flags=flags, seq=n * 1000)
        pieces = seg.segment(frame)
        for piece in pieces:
            struct.pack_into("!H", piece, 14 + (40 if v6 else 20), 4000 + n % 2)  # 2 flows per kind
        streams.append([bytes(p) for p in pieces])
    batch = []
    while any(streams):
        stream = rng.choice([s for s in streams if s])
        batch.append(stream.pop(0))
    for _ in range(flips):
        at = rng.randrange(len(batch))
        batch[at] = damaged(batch[at], rng.randrange(1 << 30), rng.randrange(1, 4))
    batch.insert(rng.randrange(len(batch) + 1), rng.randbytes(rng.randrange(0, 90)))
    assert [bytes(f) for f in C.coalesce(batch)] == [bytes(f) for f in co.coalesce(batch)]


def test_merging_agrees_on_a_long_stream():
    """100 full segments of one flow: the same two super-frames from both."""
    first, _ = super_frame(b"m" * 50000, 1000, seq=0, flags=0x10)
    second, _ = super_frame(b"n" * 50000, 1000, seq=50000, ident=57, flags=0x10)
    pieces = [bytes(p) for f in (first, second) for p in seg.segment(f)]
    assert [bytes(f) for f in C.coalesce(pieces)] == [bytes(f) for f in co.coalesce(pieces)]
    assert len(C.coalesce(pieces)) == 2


@TWIN
@given(
    lengths=st.lists(st.integers(0, 3000), min_size=1, max_size=3),
    gso=st.integers(100, 1400),
    vni=st.sampled_from([-1, 0, 42, (1 << 24) - 1]),
    seed=st.integers(0, 1 << 32),
    flips=st.integers(0, 5),
    grouped=st.integers(1, 8),
)
def test_opening_datagrams_agrees(lengths, gso, vni, seed, flips, grouped):
    """Reads of datagrams (VXLAN or raw UDP; several per read as UDP GRO joins them;
    some with another VNI, no I flag, short, empty or damaged): the C twin and the
    Python reference open and merge them into the same frames and counts."""
    rng = random.Random(seed)
    header = b"\x08\0\0\0" + struct.pack("!I", max(vni, 0) << 8) if vni >= 0 else b""
    datagrams = []
    for n, length in enumerate(lengths):
        frame, _ = super_frame(rng.randbytes(length), gso, flags=0x10, seq=n << 20)
        datagrams += [header + bytes(p) for p in seg.segment(frame)]
    for _ in range(flips):
        at = rng.randrange(len(datagrams))
        datagrams[at] = damaged(datagrams[at], rng.randrange(1 << 30), rng.randrange(1, 3))
    datagrams.insert(rng.randrange(len(datagrams) + 1), b"")
    if vni >= 0:
        datagrams.insert(0, b"\0" * 30)  # no I flag
        datagrams.append(b"\x08\0\0\0" + struct.pack("!I", (vni ^ 1) << 8) + bytes(20))
    buffer, spans = bytearray(rng.randbytes(rng.randrange(0, 9))), []  # spans need not start at 0
    while datagrams:
        take, datagrams = datagrams[:grouped], datagrams[grouped:]
        size = max(len(d) for d in take) or 1
        # GRO joins datagrams of one size, the last may be shorter; pad the others.
        joined = b"".join(d.ljust(size, b"\0") for d in take[:-1]) + take[-1]
        spans.append((len(buffer), len(joined), size))
        buffer += joined
    c = C.merge_datagrams(buffer, spans, vni)
    python = co.python_merge_datagrams(buffer, spans, vni)
    assert [bytes(f) for f in c[0]] == [bytes(f) for f in python[0]]
    assert c[1:] == python[1:]


def test_a_span_outside_the_buffer_is_refused_by_both():
    """A span that reaches past the buffer: ValueError from each, nothing read."""
    for bad in ([(0, 11, 5)], [(-1, 2, 1)], [(11, 0, 1)]):
        with pytest.raises(ValueError):
            C.merge_datagrams(bytes(10), bad, 5)
        with pytest.raises(ValueError):
            co.python_merge_datagrams(bytes(10), bad, 5)

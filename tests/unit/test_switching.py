"""The pure learning-switch core: decisions from bytes, no I/O."""

import os

import pytest

from greentap.core.switching import LearningSwitch, MacTable

A, B, C = (bytes.fromhex(f"02000000000{i}") for i in (1, 2, 3))
BCAST = b"\xff" * 6
MCAST = bytes.fromhex("01005e000001")


def frame(dst, src, payload=b"\x08\x00" + bytes(46)):
    return dst + src + payload


def test_broadcast_floods_to_every_other_port():
    """A broadcast from port 0 of three goes to ports 1 and 2, never back to 0."""
    sw = LearningSwitch(3)
    assert sw.decide(0, frame(BCAST, A), 0.0) == (1, 2)
    assert sw.decide(2, frame(MCAST, C), 0.0) == (0, 1)


def test_unknown_unicast_floods_then_known_unicast_goes_to_one_port():
    """Before B is learned, a frame to B floods; after B speaks, it goes to B's port only."""
    sw = LearningSwitch(3)
    assert sw.decide(0, frame(B, A), 0.0) == (1, 2)
    assert sw.decide(1, frame(A, B), 0.1) == (0,)  # A was learned on port 0
    assert sw.decide(0, frame(B, A), 0.2) == (1,)  # and B on port 1


def test_frame_to_a_host_on_the_ingress_port_is_filtered():
    """Never reflect a frame out of the port it came in on."""
    sw = LearningSwitch(3)
    sw.decide(0, frame(BCAST, A), 0.0)
    assert sw.decide(0, frame(A, B), 0.1) == ()
    assert sw.filtered == 1


def test_station_move_is_followed():
    """When A appears on another port, unicast to A follows it."""
    sw = LearningSwitch(3)
    sw.decide(0, frame(BCAST, A), 0.0)
    sw.decide(2, frame(BCAST, A), 0.5)
    assert sw.decide(1, frame(A, B), 0.6) == (2,)
    assert sw.table.moved == 1


def test_entries_age_out():
    """An address not seen for `aging` seconds is forgotten and unicast to it floods again."""
    sw = LearningSwitch(3, aging=10)
    sw.decide(1, frame(BCAST, B), 0.0)
    assert sw.decide(0, frame(B, A), 9.0) == (1,)
    assert sw.decide(0, frame(B, A), 10.5) == (1, 2)
    assert sw.table.expired == 1


@pytest.mark.parametrize("aging", [10.0, 0.5, 0.05])
def test_refresh_keeps_an_active_station_alive(aging):
    """A station that keeps talking (every fifth of the aging time) is never aged out,
    also when the aging time is shorter than the refresh granularity (one second)."""
    table = MacTable(aging=aging)
    step = aging / 5
    for i in range(16):
        table.learn(A, 1, i * step)
    assert table.lookup(A, 16 * step) == 1 and table.expired == 0


def test_table_is_bounded_under_a_flood_of_random_sources():
    """100k random source MACs leave the table at its bound; the rest are refused and counted."""
    sw = LearningSwitch(3, max_entries=1000)
    for i in range(100_000):
        src = bytes([0x02]) + os.urandom(5)
        assert sw.decide(0, frame(BCAST, src), i * 1e-6) == (1, 2)  # still forwarded
    assert len(sw.table) == 1000
    assert sw.table.refused == 99_000
    assert sw.table.learned == 1000


def test_full_table_makes_room_once_entries_expire():
    """When full, expired entries are swept so new stations can be learned."""
    table = MacTable(aging=5, max_entries=2)
    table.learn(A, 0, 0.0)
    table.learn(B, 1, 0.0)
    table.learn(C, 2, 1.0)
    assert table.refused == 1
    table.learn(C, 2, 6.0)
    assert table.lookup(C, 6.0) == 2
    assert len(table) == 1


def test_group_source_is_not_learned():
    """A multicast source address is bogus: forwarded but not learned."""
    sw = LearningSwitch(2)
    sw.decide(0, frame(BCAST, MCAST), 0.0)
    assert len(sw.table) == 0


def test_runt_is_dropped_and_counted():
    """A frame shorter than an Ethernet header goes nowhere."""
    sw = LearningSwitch(3)
    assert sw.decide(0, b"\xff" * 13, 0.0) == ()
    assert sw.runts == 1


def test_removed_port_gets_no_more_frames():
    """After a port fails it is left out of floods and its addresses are forgotten."""
    sw = LearningSwitch(3)
    sw.decide(2, frame(BCAST, C), 0.0)
    sw.remove_port(2)
    assert sw.decide(0, frame(BCAST, A), 0.1) == (1,)
    assert sw.decide(0, frame(C, A), 0.2) == (1,)  # C is unknown again: flood to the living


def test_a_port_added_back_is_flooded_to_again():
    """A port that came back (a re-attached TAP) rejoins the floods."""
    sw = LearningSwitch(3)
    sw.remove_port(2)
    assert sw.decide(0, frame(BCAST, A), 0.0) == (1,)
    sw.add_port(2)
    assert sw.decide(0, frame(BCAST, A), 0.1) == (1, 2)
    with pytest.raises(ValueError):
        sw.add_port(-1)


def test_a_switch_grows_as_ports_join_and_forgets_one_that_leaves():
    """A switch may start with one port or none: a frame then goes nowhere.
    A port joining past the last number grows it and is flooded to; one that
    leaves is flooded to no more and its addresses are forgotten at once."""
    sw = LearningSwitch(1)
    assert sw.decide(0, frame(BCAST, A), 0.0) == ()
    sw.add_port(3)  # numbers 1 and 2 are free (ports that left)
    assert sw.decide(0, frame(BCAST, A), 0.1) == (3,)
    assert sw.decide(3, frame(A, C), 0.2) == (0,)  # A was learned on 0 while alone
    sw.remove_port(3)
    assert sw.table.lookup(C, 0.3) is None
    assert sw.decide(0, frame(C, A), 0.4) == ()


def test_decide_accepts_memoryviews():
    """The forwarder passes memoryview slices of its read buffer."""
    sw = LearningSwitch(3)
    buf = bytearray(frame(BCAST, A)) + bytearray(100)
    assert sw.decide(0, memoryview(buf)[:60], 0.0) == (1, 2)
    assert sw.table.lookup(A, 0.0) == 0


def test_entries_snapshot_and_stats():
    """The table can be listed and summarised while in use."""
    table = MacTable()
    table.learn(A, 0, 0.0)
    table.learn(B, 1, 5.0)
    assert [(m, p) for m, p, _ in table.entries(6.0)] == [(B, 1), (A, 0)]
    assert table.stats()["size"] == 2


def test_bad_parameters_are_refused():
    """A switch cannot have a negative number of ports; aging must be positive
    and the table must have room for one entry."""
    with pytest.raises(ValueError):
        LearningSwitch(-1)
    with pytest.raises(ValueError):
        MacTable(aging=0)
    with pytest.raises(ValueError):
        MacTable(max_entries=0)

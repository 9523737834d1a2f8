"""802.1Q: access ports and trunks, in the pure core and through a forwarder of
SEQPACKET socket pairs (no root)."""

import struct

import gevent
import pytest
from hypothesis import given
from hypothesis import strategies as st

from greentap.app.forwarder import Forwarder
from greentap.core.endpoints import parse_endpoint
from greentap.core.switching import LearningSwitch
from greentap.core.vlan import (
    VlanPolicy,
    format_vlan_list,
    frame_vid,
    parse_vlan_list,
    pop_tag,
    push_tag,
)
from greentap.errors import EndpointSyntaxError
from greentap.green.polled import Tap
from greentap.ports.base import FramePort
from greentap.ports.registry import vlan_policy
from tests.conftest import drain, settle

A, B, C = (bytes.fromhex(f"02000000000{i}") for i in (1, 2, 3))
BCAST = b"\xff" * 6


def frame(dst, src, tag=0, vid=None, size=60):
    """A ``size``-byte Ethernet frame whose payload carries ``tag``; with ``vid``, the same
    frame with an 802.1Q tag inserted (4 bytes longer)."""
    body = b"\x08\x00" + struct.pack("!I", tag) + bytes(size - 18)
    return dst + src + (struct.pack("!HH", 0x8100, vid) if vid is not None else b"") + body


def test_vlan_lists_parse_and_format_back():
    """N,M,A-B: ids 1 to 4094, ranges low to high; formatted back in ranges."""
    assert parse_vlan_list("10,20-22,4094") == {10, 20, 21, 22, 4094}
    assert format_vlan_list(parse_vlan_list("5,1-3,7,8")) == "1-3,5,7-8"
    for bad in ("0", "4095", "5-3", "x", "", "1,,2", "-3", "١٢"):
        with pytest.raises(ValueError):
            parse_vlan_list(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tap0?vlan=0", "vlan '0': expected a whole number from 1 to 4094"),
        ("tap0?vlan=5&trunk=6", "vlan= makes an access port"),
        ("tap0?native=5", "native= needs trunk="),
        ("tap0?trunk=5-1", "a range from low to high"),
        ("pcap:/x?vlan=5", "unknown option 'vlan'"),
    ],
)
def test_bad_vlan_options_are_usage_errors(text, message):
    """VLAN options are checked with the endpoint, before anything opens."""
    with pytest.raises(EndpointSyntaxError, match=message):
        parse_endpoint(text)


def test_endpoints_make_access_ports_and_trunks():
    """?vlan=N an access port, ?trunk=LIST&native=N a trunk, neither: transparent (None)."""
    assert vlan_policy(parse_endpoint("tap0?vlan=10")) == VlanPolicy(access=10)
    trunk = vlan_policy(parse_endpoint("udp://127.0.0.1:9?trunk=10,20-21&native=5"))
    assert trunk == VlanPolicy(allowed=frozenset({10, 20, 21}), native=5)
    assert vlan_policy(parse_endpoint("tap0")) is None


def test_policies_classify_arriving_frames_and_say_how_they_leave():
    """Access: untagged in, tagged dropped; trunk: allowed tags in (the native VLAN also
    tagged), others dropped, untagged only with a native VLAN; transparent: as it is."""
    access, trunk = VlanPolicy(access=10), VlanPolicy(allowed=frozenset({10, 20}), native=5)
    assert access.ingress(None) == (10, None)
    assert access.ingress(10) == (None, "rx_vlan_tagged_on_access")
    assert trunk.ingress(20) == (20, None) and trunk.ingress(5) == (5, None)
    assert trunk.ingress(30) == (None, "rx_vlan_not_allowed")
    assert trunk.ingress(None) == (5, None)
    assert VlanPolicy(allowed=frozenset({10})).ingress(None) == (None, "rx_vlan_untagged_on_trunk")
    assert VlanPolicy().ingress(None) == (0, None) and VlanPolicy().ingress(7) == (7, None)
    assert [access.egress(v) for v in (10, 20)] == [False, None]
    assert [trunk.egress(v) for v in (10, 5, 30)] == [True, False, None]
    assert [VlanPolicy().egress(v) for v in (0, 7)] == [False, True]


VNET = struct.Struct("=BBHHHH")


@given(
    payload=st.binary(min_size=46, max_size=200),
    vid=st.integers(1, 4094),
    needs_csum=st.booleans(),
    gso=st.sampled_from([0, 1, 4]),
    start=st.integers(14, 100),
)
def test_a_tag_pushed_then_popped_gives_the_frame_back_and_moves_the_vnet_header(
    payload, vid, needs_csum, gso, start
):
    """push_tag then pop_tag is the identity; behind a vnet header, csum_start moves by
    4 when NEEDS_CSUM is set and hdr_len by 4 when the frame is a GSO super-frame."""
    header = VNET.pack(int(needs_csum), gso, start + 20, 1448 if gso else 0, start, 16)
    original = header + A + B + payload
    tagged = push_tag(original, 10, vid)
    assert frame_vid(tagged, 10) == vid and len(tagged) == len(original) + 4
    _, _, hdr_len, _, csum_start, _ = VNET.unpack_from(tagged)
    assert csum_start == start + 4 * needs_csum
    assert hdr_len == start + 20 + 4 * bool(gso)
    assert bytes(pop_tag(tagged, 10)) == original
    plain = A + B + payload
    assert bytes(pop_tag(push_tag(plain, 0, vid), 0)) == plain


def test_a_priority_tag_is_untagged():
    """VLAN id 0 (a priority tag) counts as untagged (802.1Q)."""
    assert frame_vid(frame(BCAST, A, vid=0), 0) is None
    assert frame_vid(frame(BCAST, A, vid=4094), 0) == 4094


def test_learning_is_per_vlan_and_floods_stay_in_their_vlan():
    """One MAC in two VLANs behind two ports: two entries; a flood of VLAN 10 reaches
    only VLAN 10's members."""
    sw = LearningSwitch(4)
    sw.set_policy(0, VlanPolicy(access=10))
    sw.set_policy(1, VlanPolicy(access=20))
    sw.set_policy(2, VlanPolicy(allowed=frozenset({10, 20})))
    sw.set_policy(3, VlanPolicy(access=10))
    assert sw.vlans
    assert sw.decide_vlan(0, frame(BCAST, A), 10, 0) == (2, 3)
    assert sw.decide_vlan(1, frame(BCAST, A), 20, 0) == (2,)
    assert sw.decide_vlan(2, frame(A, B), 10, 0) == (0,)
    assert sw.decide_vlan(2, frame(A, B), 20, 0) == (1,)
    assert sw.table.stats()["size"] == 4  # A and B, each in VLAN 10 and in VLAN 20
    assert sw.vlan_frames == {10: 2, 20: 2}


class Rig:
    """A forwarder of four FramePorts over SEQPACKET pairs: access 10, access 20, a trunk
    of 10 and 20 with native 5, and a transparent port."""

    def __init__(self):
        import socket

        self.peers, ports = [], []
        policies = [VlanPolicy(access=10), VlanPolicy(access=20),
                    VlanPolicy(allowed=frozenset({10, 20}), native=5), None]  # fmt: skip
        for i, policy in enumerate(policies):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            b.setblocking(False)
            port = FramePort(Tap._adopt(a.detach(), f"v{i}").polled())
            port.vlan = policy
            ports.append(port)
            self.peers.append(b)
        self.ports = ports
        self.fwd = Forwarder(ports, keep_warm=None, monitor_interval=0)
        self.fwd.start()

    def send(self, i, f):
        self.peers[i].send(f)

    def seen(self, settle_on=None):
        gevent.sleep(0.05)
        return [drain(p) for p in self.peers]

    def close(self):
        self.fwd.stop()
        for p in self.peers:
            p.close()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def test_access_ports_and_a_trunk_keep_vlans_apart(rig):
    """A broadcast from access 10 reaches the trunk tagged 10 and the transparent port
    tagged 10, never access 20; one tagged 20 from the trunk reaches access 20 untagged;
    an untagged one from the trunk is its native VLAN 5: only the transparent port gets
    it (tagged 5); a tagged frame into an access port and a VLAN the trunk does not
    carry are dropped and counted; known unicast goes to its port in its VLAN only."""
    assert rig.fwd.mode == "switch" and "with VLANs" in rig.fwd.relay_loop()[1]
    rig.send(0, frame(BCAST, A, 1))
    seen = rig.seen()
    assert seen[1] == [] and seen[0] == []
    assert seen[2] == [frame(BCAST, A, 1, vid=10)] and seen[3] == [frame(BCAST, A, 1, vid=10)]
    rig.send(2, frame(BCAST, B, 2, vid=20))
    seen = rig.seen()
    assert (
        seen[1] == [frame(BCAST, B, 2)]
        and seen[0] == []
        and seen[3] == [frame(BCAST, B, 2, vid=20)]
    )
    rig.send(2, frame(BCAST, C, 3))
    seen = rig.seen()
    assert seen[0] == seen[1] == [] and seen[3] == [frame(BCAST, C, 3, vid=5)]
    rig.send(0, frame(BCAST, A, 4, vid=10))  # tagged into an access port
    rig.send(2, frame(BCAST, A, 5, vid=30))  # a VLAN the trunk does not carry
    assert rig.seen() == [[], [], [], []]
    assert rig.ports[0].drops["rx_vlan_tagged_on_access"] == 1
    assert rig.ports[2].drops["rx_vlan_not_allowed"] == 1
    rig.send(2, frame(A, B, 6, vid=10))  # A is known in VLAN 10 behind port 0
    assert rig.seen() == [[frame(A, B, 6)], [], [], []]
    stats = rig.fwd.stats()
    assert stats["switch"]["vlans"]["10"] >= 2
    assert stats["ports"][2]["trunk"] == "10,20" and stats["ports"][2]["native"] == 5
    assert any(m.endswith("@vlan10") for m, _, _ in rig.fwd.mac_table())


def test_two_ports_with_vlans_are_a_switch_not_a_wire():
    """Two ports, one an access port: switched per VLAN (tags pushed), not a plain wire."""
    import socket

    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
    ports = [FramePort(Tap._adopt(a.detach(), f"w{i}").polled()) for i, (a, _) in enumerate(pairs)]
    ports[0].vlan = VlanPolicy(access=42)
    fwd = Forwarder(ports, keep_warm=None, monitor_interval=0)
    fwd.start()
    got = []
    pairs[1][1].setblocking(False)
    try:
        assert fwd.mode == "switch"
        pairs[0][1].send(frame(BCAST, A, 9))
        settle(lambda: got.extend(drain(pairs[1][1])) or got)
        assert got == [frame(BCAST, A, 9, vid=42)]
    finally:
        fwd.stop()
        for _, b in pairs:
            b.close()


def test_an_access_port_joining_a_running_switch_is_kept_to_its_vlan():
    """Three transparent ports switch as before; when an access port of VLAN 10 joins,
    every pump takes the VLAN path at once: an untagged broadcast (VLAN 0) from a
    transparent port no longer reaches it, one tagged 10 reaches it untagged."""
    import socket

    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(4)]
    for _, b in pairs:
        b.setblocking(False)
    ports = [FramePort(Tap._adopt(a.detach(), f"j{i}").polled()) for i, (a, _) in enumerate(pairs)]
    fwd = Forwarder(ports[:3], keep_warm=None, monitor_interval=0)
    fwd.start()
    try:
        gevent.sleep(0.01)
        ports[3].vlan = VlanPolicy(access=10)
        fwd.add_port(ports[3])
        assert fwd.topology.shape == ("switch", True)
        pairs[0][1].send(frame(BCAST, A, 1))
        pairs[0][1].send(frame(BCAST, A, 2, vid=10))
        got = [[], [], [], []]
        settle(lambda: [got[i].extend(drain(b)) for i, (_, b) in enumerate(pairs)] and
               len(got[1]) == 2 and got[3])  # fmt: skip
        gevent.sleep(0.05)
        got[3].extend(drain(pairs[3][1]))
        assert got[3] == [frame(BCAST, A, 2)]
        assert got[1] == [frame(BCAST, A, 1), frame(BCAST, A, 2, vid=10)]
    finally:
        fwd.stop()
        for _, b in pairs:
            b.close()


def test_priority_tags_get_a_vlan_id_and_cut_tags_are_runts(rig):
    """A priority-tagged frame (VLAN id 0, priority 5) into access port 10 leaves the
    trunk with one tag, VLAN 10, priority kept; a 17-byte frame whose tag is cut short is
    a runt (rx_errors, the switch's runts), forwarded nowhere."""
    prio = BCAST + A + struct.pack("!HH", 0x8100, 5 << 13) + frame(BCAST, A, 7)[12:]
    rig.send(0, prio)
    seen = rig.seen()
    expected = BCAST + A + struct.pack("!HH", 0x8100, 5 << 13 | 10) + frame(BCAST, A, 7)[12:]
    assert seen[2] == [expected] and seen[1] == []
    rig.send(0, BCAST + A + b"\x81\x00\x00")
    assert rig.seen() == [[], [], [], []]
    assert rig.ports[0].counters.rx_errors == 1 and rig.fwd.switch.runts == 1
    assert rig.ports[0].drops["rx_vlan_tagged_on_access"] == 0


def test_a_vnet_header_with_senseless_offsets_is_carried_not_fatal():
    """Popping a tag from a frame whose vnet header says hdr_len 0 (GSO) and csum_start 0
    (NEEDS_CSUM) clamps the offsets at 0 instead of raising; pushing one onto offsets of
    65534 clamps them at 65535."""
    high = VNET.pack(1, 1, 65534, 1448, 65534, 16) + A + B + bytes(50)
    _, _, hdr_len, _, csum_start, _ = VNET.unpack_from(push_tag(high, 10, 5))
    assert (hdr_len, csum_start) == (65535, 65535)
    bad = VNET.pack(1, 1, 0, 1448, 0, 16) + A + B + struct.pack("!HH", 0x8100, 5) + bytes(50)
    _, _, hdr_len, _, csum_start, _ = VNET.unpack_from(pop_tag(bad, 10))
    assert (hdr_len, csum_start) == (0, 0)


def test_vlan_drops_are_not_counted_as_invalid_frames_in_metrics():
    """greentap_rx_dropped by reason: VLAN drops beside real runts do not hide the runts
    (rx_errors counts only the runts)."""
    from greentap.app.metrics import drop_reasons

    rx, _ = drop_reasons({"rx_errors": 3, "tx_dropped": 0, "tx_link_down": 0, "tx_errors": 0,
                          "drops": {"rx_vlan_tagged_on_access": 4}})  # fmt: skip
    assert rx == {"vlan_tagged_on_access": 4, "invalid": 3}


def test_metrics_carry_frames_per_vlan_and_vlan_drops(rig):
    """--metrics: greentap_vlan_frames_total per VLAN, and a tagged frame into an access
    port under greentap_rx_dropped_total{reason="vlan_tagged_on_access"}."""
    import prometheus_client

    from greentap.app.metrics import make_registry

    rig.send(0, frame(BCAST, A, 1))
    rig.send(1, frame(BCAST, B, 2))
    rig.send(1, frame(BCAST, B, 3))
    rig.send(0, frame(BCAST, A, 4, vid=20))
    rig.seen()
    text = prometheus_client.generate_latest(make_registry(rig.fwd)).decode()
    assert 'greentap_vlan_frames_total{vlan="10"} 1.0' in text
    assert 'greentap_vlan_frames_total{vlan="20"} 2.0' in text
    assert 'reason="vlan_tagged_on_access"} 1.0' in text


def test_a_mac_flood_in_one_vlan_never_evicts_another_vlans_stations():
    """100,000 new source addresses in VLAN 10 through a table of 4,096: the table stays at
    4,096 (the rest refused, their frames flooded within VLAN 10), and the stations of
    VLAN 20 learned before are all still there and still get unicast."""
    sw = LearningSwitch(3, max_entries=4096)
    sw.set_policy(0, VlanPolicy(allowed=frozenset({10, 20})))
    sw.set_policy(1, VlanPolicy(access=10))
    sw.set_policy(2, VlanPolicy(access=20))
    stations = [bytes.fromhex(f"0200000200{i:02x}") for i in range(16)]
    for mac in stations:
        sw.decide_vlan(2, frame(BCAST, mac), 20, 0.0)
    for i in range(100_000):
        src = b"\x02\x01" + i.to_bytes(4, "big")
        assert sw.decide_vlan(1, frame(BCAST, src), 10, 1.0) == (0,)
    stats = sw.table.stats()
    assert stats["size"] == 4096 and stats["refused"] == 100_000 - (4096 - 16)
    for mac in stations:
        assert sw.decide_vlan(0, frame(mac, A), 20, 2.0) == (2,)

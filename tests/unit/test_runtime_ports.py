"""Ports joining and leaving a running forwarder: a listening endpoint's connections
(no root: unix stream sockets and SEQPACKET pairs standing in for TAPs)."""

import os
import socket
import struct

import gevent
import pytest
import structlog
import structlog.testing

from greentap.app.forwarder import Forwarder
from greentap.core import streamframe as sf
from greentap.core.endpoints import parse_endpoint
from greentap.green.polled import Tap
from greentap.ports import open_port
from greentap.ports.base import FramePort
from tests.conftest import drain, open_fds, settle

A, B, V, W = (bytes.fromhex(f"02000000000{i}") for i in (1, 2, 5, 6))
BCAST = b"\xff" * 6

pytestmark = pytest.mark.usefixtures("relay_loop")


def frame(dst, src, tag=0, size=60):
    return dst + src + b"\x08\x00" + struct.pack("!I", tag) + bytes(size - 18)


class Vm:
    """A peer of the listening endpoint, as QEMU's -netdev stream would be."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.setblocking(False)
        self.buf = bytearray()

    def send(self, *frames):
        self.sock.sendall(b"".join(sf.frame_header(len(f)) + f for f in frames))

    def frames(self):
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                self.buf += data
        except BlockingIOError:
            pass
        offsets, end, _, _ = sf.split_frames(self.buf, 0, len(self.buf))
        out = [bytes(self.buf[o : o + n]) for o, n in zip(offsets[::2], offsets[1::2], strict=True)]
        del self.buf[:end]
        return out

    def close(self):
        self.sock.close()


class Rig:
    """Two SEQPACKET ports (peers[i] plays the host behind port i) and a unix listener."""

    def __init__(self, path, taps=2, query="", budget=50):
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(taps)]
        self.taps = [
            FramePort(Tap._adopt(a.detach(), f"p{i}").polled(budget=budget))
            for i, (a, _) in enumerate(pairs)
        ]
        self.peers = [b for _, b in pairs]
        for p in self.peers:
            p.setblocking(False)
        self.path = path
        self.listener = open_port(parse_endpoint(f"unix:{path}?listen{query}"))
        capture = structlog.testing.LogCapture()
        self.logs = capture.entries
        self.fwd = Forwarder(
            [*self.taps, self.listener],
            logger=structlog.wrap_logger(None, processors=[capture]),
            keep_warm=None,
        )
        self.fwd.start()
        self.vms = []

    def vm(self):
        vm = Vm(self.path)
        self.vms.append(vm)
        return vm

    def events(self, name):
        return [e for e in self.logs if e["event"] == name]

    def close(self):
        self.fwd.stop()
        for p in self.peers:
            p.close()
        for vm in self.vms:
            vm.close()


@pytest.fixture
def rig(tmp_path):
    rigs = []

    def make(**kw):
        r = Rig(str(tmp_path / f"sw{len(rigs)}.sock"), **kw)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        r.close()


def test_a_wire_becomes_a_switch_when_a_vm_joins_and_back_when_it_leaves(rig):
    """Two TAPs and a listener: a wire.  A VM connecting makes a switch of three
    (logged once: joined, mode changed); its broadcast reaches both TAPs and
    theirs reach it; when it disconnects the forwarder is a wire again, the VM's
    port is gone from the stats and its counters are in the listener's line."""
    r = rig()
    assert r.fwd.mode == "wire"
    vm = r.vm()
    settle(lambda: r.fwd.mode == "switch")
    assert [e["mode"] for e in r.events("mode_changed")] == ["switch"]
    vm.send(frame(BCAST, V, 1))
    settle(lambda: all(r.peers[i] and drain_one(r, i) for i in (0, 1)))
    r.peers[0].send(frame(BCAST, A, 2))
    settle(lambda: any(f[:6] == BCAST and f[6:12] == A for f in vm.frames_seen()))
    joined = r.events("endpoint_joined")
    assert len(joined) == 1 and joined[0]["endpoint"] == f"unix:{r.path}#1"
    vm.close()
    settle(lambda: r.fwd.mode == "wire")
    # Its addresses are forgotten at once, not when they age out.
    assert r.fwd.topology.switch.table.lookup(V, gevent.get_hub().loop.now()) is None
    left = r.events("endpoint_left")
    assert len(left) == 1 and left[0]["rx_packets"] == 1
    names = [p["endpoint"] for p in r.fwd.stats()["ports"]]
    assert f"unix:{r.path}#1" not in names
    line = next(p for p in r.fwd.stats()["ports"] if p["kind"] == "unix-listener")
    assert line["rx_packets"] == 1 and line["tx_packets"] >= 1 and line["active"] == 0
    # The wire carries again.
    r.peers[0].send(frame(B, A, 3))
    settle(lambda: any(f == frame(B, A, 3) for f in drain(r.peers[1])))


def drain_one(rig, i):
    """True once port i's peer got a frame from the VM (V)."""
    rig._seen = getattr(rig, "_seen", {})
    rig._seen.setdefault(i, []).extend(drain(rig.peers[i]))
    return any(f[6:12] == V for f in rig._seen[i])


def _frames_seen(self):
    self.seen = getattr(self, "seen", [])
    self.seen += self.frames()
    return self.seen


Vm.frames_seen = _frames_seen


def test_two_vms_on_one_listener_talk_and_learn(rig):
    """Two VMs on one listening socket (and two TAPs): unicast between the VMs,
    once learned, reaches only the other VM."""
    r = rig()
    v, w = r.vm(), r.vm()
    settle(lambda: r.fwd.topology.count == 4)
    v.send(frame(BCAST, V, 1))
    w.send(frame(BCAST, W, 2))
    settle(lambda: any(f[6:12] == W for f in v.frames_seen()))
    v.send(frame(W, V, 3))
    settle(lambda: frame(W, V, 3) in w.frames_seen())
    got = [f for i in (0, 1) for f in drain(r.peers[i])]
    assert frame(W, V, 3) not in got
    table = {mac: port for mac, port, _ in r.fwd.mac_table()}
    assert table["02:00:00:00:00:05"] == f"unix:{r.path}#1"


def test_no_frame_is_lost_on_the_wire_while_vms_join_and_leave(rig):
    """3000 frames from one TAP to the other while ten VMs connect and disconnect
    (the pumps are rewired each time): every frame arrives, in order.  A budget of
    2 makes the TAPs' pumps yield every other frame, so rewiring often finds them
    there: only before a read, never holding a frame."""
    r = rig(budget=2)
    total = 3000
    got = []

    def sender():
        sent = 0
        while sent < total:
            # At most 64 frames in flight: the receiving socket's buffer never
            # fills, so a frame missing could only have been lost by a rewire.
            if sent - len(got) >= 64:
                gevent.sleep(0.0005)
                continue
            r.peers[0].send(frame(B, A, sent))
            sent += 1

    def receiver():
        while len(got) < total:
            got.extend(f for f in drain(r.peers[1]) if f[6:12] == A)
            gevent.sleep(0.0005)

    g1, g2 = gevent.spawn(sender), gevent.spawn(receiver)
    for _ in range(10):
        vm = r.vm()
        settle(lambda: r.fwd.mode == "switch")
        seen = len(got)
        settle(lambda seen=seen: len(got) > seen + 100 or len(got) == total)  # switched too
        vm.close()
        settle(lambda: r.fwd.mode == "wire")
    with gevent.Timeout(10):
        gevent.joinall([g1, g2], raise_error=True)
    tags = [struct.unpack("!I", f[14:18])[0] for f in got]
    assert tags == list(range(total))
    assert len(r.events("mode_changed")) == 20
    assert r.fwd.stats()["ports"][1]["tx_dropped"] == 0


def test_hostile_peers_are_disconnected_while_the_others_lose_nothing(rig):
    """A peer announcing a 1 GiB frame and one sending random bytes are disconnected
    (one log line each, counted); one that never reads only costs drops on its
    own port; the TAPs' frames all arrive meanwhile."""
    r = rig()
    huge, garbage, _deaf = r.vm(), r.vm(), r.vm()
    settle(lambda: r.fwd.topology.count == 5)
    huge.sock.send(struct.pack("!I", 1 << 30) + bytes(100))
    garbage.sock.send(os.urandom(8192))
    settle(lambda: r.fwd.topology.count == 3)
    reasons = [e["reason"] for e in r.events("endpoint_left")]
    assert any("1073741824 bytes" in why for why in reasons), reasons
    assert r.listener.departures["broken_framing"] >= 1  # counted by how they left
    for n in range(3000):  # floods: the deaf peer's buffers fill up
        r.peers[0].send(frame(BCAST, A, n, size=1400))
        if n % 20 == 0:
            gevent.sleep(0.001)
            drain(r.peers[1])
    settle(lambda: r.fwd.stats()["ports"][0]["rx_packets"] == 3000, timeout=5)
    deaf_line = next(p for p in r.fwd.stats()["ports"] if p["endpoint"].endswith("#3"))
    assert deaf_line["drops"].get("tx_backpressure", 0) > 0
    assert r.fwd.stats()["ports"][1]["tx_packets"] == 3000


def test_max_connections_over_the_limit_are_refused_and_counted(rig):
    """max=1: a second VM is closed at once, logged and counted; the first stays."""
    r = rig(query="&max=1")
    r.vm()
    settle(lambda: r.fwd.topology.count == 3)
    second = r.vm()
    settle(lambda: r.listener.refused == 1)
    second.sock.setblocking(True)
    second.sock.settimeout(2)
    assert second.sock.recv(10) == b""
    assert r.fwd.topology.count == 3
    assert [e["event"] for e in r.logs].count("connection_refused") == 1


def test_a_listener_alone_is_a_switch_of_the_vms_that_join(tmp_path):
    """A forwarder of only a listening endpoint starts with no ports; two VMs that
    join can talk; one alone forwards nowhere."""
    path = str(tmp_path / "only.sock")
    listener = open_port(parse_endpoint(f"unix:{path}?listen"))
    fwd = Forwarder([listener], keep_warm=None)
    fwd.start()
    try:
        assert fwd.mode == "switch" and fwd.topology.count == 0
        v = Vm(path)
        settle(lambda: fwd.topology.count == 1)
        v.send(frame(BCAST, V, 1))
        w = Vm(path)
        settle(lambda: fwd.mode == "wire")
        w.send(frame(V, W, 2))
        settle(lambda: frame(V, W, 2) in v.frames_seen())
        assert v.frames_seen().count(frame(BCAST, V, 1)) == 0
        v.close()
        w.close()
        settle(lambda: fwd.topology.count == 0)
    finally:
        fwd.stop()
    assert not os.path.exists(path)


def test_connect_and_disconnect_cycles_leak_no_fds(rig):
    """300 VMs connecting and leaving one after another leave no fd behind."""
    r = rig()
    vm = r.vm()  # warm up: the first join builds what stays
    settle(lambda: r.fwd.topology.count == 3)
    vm.close()
    settle(lambda: r.fwd.topology.count == 2)
    before = len(open_fds())
    for _ in range(300):
        vm = Vm(r.path)
        settle(lambda: r.fwd.topology.count == 3)
        vm.close()
        settle(lambda: r.fwd.topology.count == 2)
    assert len(open_fds()) == before
    assert r.listener.accepted == 301


def test_ports_added_before_the_start_make_the_mode_it_starts_in(tmp_path):
    """A forwarder of a listener given two ports before it starts runs as a wire; a
    third that joins later makes it a switch, and the newcomer gets the others'
    broadcasts; a listener given to add_port() a second time is refused."""
    from greentap.errors import UsageError

    path = str(tmp_path / "pre.sock")
    listener = open_port(parse_endpoint(f"unix:{path}?listen"))
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
    peers = [b for _, b in pairs]
    for p in peers:
        p.setblocking(False)
    fwd = Forwarder([listener], keep_warm=None)
    for i, (a, _) in enumerate(pairs):
        fwd.add_port(FramePort(Tap._adopt(a.detach(), f"q{i}").polled()))
    with pytest.raises(UsageError, match="already"):
        fwd.add_port(listener)
    fwd.start()
    try:
        assert fwd.mode == "wire"
        vm = Vm(path)
        settle(lambda: fwd.mode == "switch")
        peers[0].send(frame(BCAST, A, 9))
        settle(lambda: frame(BCAST, A, 9) in vm.frames_seen())
        vm.close()
    finally:
        fwd.stop()
        for p in peers:
            p.close()

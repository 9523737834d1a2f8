"""The wire from a TAP to a tunnel over loopback: the C relay (``relay_batch_to_udp``)
and the generic Python loop send the same datagrams and count the same (no root)."""

import socket
import struct

import gevent
import pytest
import structlog
import structlog.testing

from greentap.app.forwarder import Forwarder
from greentap.core import segment as seg
from greentap.core import vxlan
from greentap.core.kernel_constants import IFF_VNET_HDR
from greentap.core.layout import FrameLayout
from greentap.green.polled import Tap
from greentap.ports.base import FramePort
from greentap.ports.tunnel import UdpPort, VxlanPort
from tests.conftest import settle
from tests.unit.test_segment import super_frame

# Every test here runs with the C relay loop (when built) and the Python one.
pytestmark = pytest.mark.usefixtures("relay_loop")


class Wire:
    """A frame port over a SEQPACKET pair (``host`` plays the TAP's host) wired to a
    tunnel port whose peer is a plain UDP socket (``peer``)."""

    def __init__(self, kind, header=0, closed_peer=False):
        a, self.host = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.host.setblocking(False)
        tap = Tap._adopt(a.detach(), "t")
        if header:
            tap.layout = FrameLayout.from_flags(tap.flags | IFF_VNET_HDR, vnet_hdr_size=header)
        self.frame_port = FramePort(tap.polled())
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        self.peer.setblocking(False)
        remote = self.peer_address = self.peer.getsockname()
        if closed_peer:
            self.peer.close()
        offload = bool(header)
        if kind == "vxlan":
            self.tunnel = VxlanPort("v", [remote], 7, ("127.0.0.1", 0), offload=offload)
        else:
            self.tunnel = UdpPort("u", remote, ("127.0.0.1", 0), offload=offload)
        capture = structlog.testing.LogCapture()
        self.logs = capture.entries
        self.fwd = Forwarder([self.frame_port, self.tunnel],
                             logger=structlog.wrap_logger(None, processors=[capture]))  # fmt: skip
        self.fwd.start()
        self.prefix = vxlan.header(7) if kind == "vxlan" else b""

    def send(self, frames):
        """Offer frames on the TAP side, letting the forwarder run when the socket is full."""
        for f in frames:
            while True:
                try:
                    self.host.send(f)
                    break
                except BlockingIOError:
                    gevent.sleep(0.001)

    def receive(self, n, timeout=5):
        """The next ``n`` datagrams at the peer (the forwarder runs meanwhile)."""
        out = []
        try:
            with gevent.Timeout(timeout):
                while len(out) < n:
                    try:
                        out.append(self.peer.recv(70000))
                    except BlockingIOError:
                        gevent.sleep(0.001)
        except gevent.Timeout:
            raise AssertionError(f"{len(out)} of {n} datagrams") from None
        return out

    def close(self):
        self.fwd.stop()
        self.host.close()
        self.peer.close()


@pytest.fixture
def wire():
    made = []

    def make(*args, **kw):
        w = Wire(*args, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def frames(n):
    return [b"\xff" * 6 + b"\x02" * 6 + b"\x88\xb5" + struct.pack("!I", i) + bytes(i % 50)
            + bytes(42) for i in range(n)]  # fmt: skip


@pytest.mark.parametrize("kind", ["vxlan", "udp"])
def test_frames_from_the_tap_leave_as_one_datagram_each(wire, kind, relay_loop):
    """150 frames read from the TAP side (what a default socket buffer holds): 150
    datagrams at the peer, in order, each the prefix and the frame; counters agree
    on both ports."""
    w = wire(kind)
    sent = frames(150)
    gevent.spawn(w.send, sent)
    assert w.receive(150) == [w.prefix + f for f in sent]
    settle(lambda: w.tunnel.counters.tx_packets == 150, timeout=3)
    assert w.frame_port.counters.rx_packets == 150
    assert w.tunnel.counters.tx_bytes == sum(len(w.prefix) + len(f) for f in sent)
    assert w.fwd.relay_loop()[0] == relay_loop


def test_a_super_frame_is_handed_back_and_cut(wire):
    """With vnet headers, plain frames go straight out; a super-frame among them
    (GSO) and a frame whose checksum is left to the NIC are sent by the tunnel's own
    path: cut into segments, finished; order within each kind is kept."""
    w = wire("vxlan", header=10)
    plain = [bytes(10) + f for f in frames(20)]
    big, _ = super_frame(bytes(range(256)) * 20, 1000, flags=0x10)
    w.send([*plain[:10], big, *plain[10:]])
    want = [w.prefix + f[10:] for f in plain[:10]]
    want += [w.prefix + bytes(p) for p in seg.segment(big)]
    want += [w.prefix + f[10:] for f in plain[10:]]
    assert w.receive(len(want)) == want


def test_a_peer_that_does_not_listen_is_counted_and_reported(wire):
    """The peer's port is closed: the ICMP errors come back as ECONNREFUSED on later
    sends (C: refused datagrams of a batch; Python: one send at a time); each is
    counted as tx_unreachable and peer_unreachable is logged once."""
    w = wire("udp", closed_peer=True)
    w.send(frames(200))
    settle(lambda: w.frame_port.counters.rx_packets == 200, timeout=3)
    settle(lambda: w.tunnel.drops.get("tx_unreachable", 0) > 0, timeout=3)
    events = [e for e in w.logs if e.get("event") == "peer_unreachable"]
    assert len(events) == 1 and events[0]["remote"] == "{}:{}".format(*w.peer_address)
    c = w.tunnel.counters
    settle(lambda: c.tx_packets + c.tx_errors == 200, timeout=3)  # each frame sent or refused
    assert c.tx_errors > 0 and c.tx_dropped == 0

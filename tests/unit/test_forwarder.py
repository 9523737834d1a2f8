"""The forwarding engine over SOCK_SEQPACKET pairs: wire, switch, backpressure, failures."""

import errno
import itertools
import socket
import subprocess
import sys

import gevent
import pytest
import structlog
import structlog.testing

from greentap.app.forwarder import Forwarder
from greentap.core.ratelimit import TokenBucket
from greentap.core.verdicts import WRITE_VERDICTS, Verdict, table
from greentap.green import relay
from greentap.green.fdio import DEFAULT_BUDGET
from greentap.green.polled import Tap
from greentap.ports.base import FramePort
from tests.conftest import drain, settle

A, B, C = (bytes.fromhex(f"02000000000{i}") for i in (1, 2, 3))
BCAST = b"\xff" * 6


def frame(dst, src, tag=0, size=60):
    body = bytes([tag]) * (size - 14)
    return dst + src + b"\x08\x00" + body


class Rig:
    """N ports over socketpairs; `peers[i]` plays the host behind port i."""

    def __init__(self, n, batch_send=False, **kw):
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(n)]
        self.ports = [
            FramePort(Tap._adopt(a.detach(), f"p{i}").polled()) for i, (a, _) in enumerate(pairs)
        ]
        for port in self.ports:
            # The sockets take sendmmsg: the C relay's batch to a socket sink runs.
            port.polled.batch_send = batch_send
        self.peers = [b for _, b in pairs]
        for p in self.peers:
            p.setblocking(False)
        capture = structlog.testing.LogCapture()
        self.logs = capture.entries
        self.fwd = Forwarder(
            self.ports, logger=structlog.wrap_logger(None, processors=[capture]), **kw
        )

    def drain(self, i):
        return drain(self.peers[i])

    def settle(self, predicate, timeout=2):
        settle(predicate, timeout)

    def close(self):
        self.fwd.stop()
        for p in self.peers:
            p.close()


# Every test here runs with the C relay loop (when built) and the Python one.
pytestmark = pytest.mark.usefixtures("relay_loop")


@pytest.fixture
def rig(request):
    rigs = []

    def make(n, **kw):
        r = Rig(n, **kw)
        rigs.append(r)
        r.fwd.start()
        return r

    yield make
    for r in rigs:
        r.close()


@pytest.mark.parametrize("batch_send", [False, True], ids=["write", "sendmmsg"])
def test_two_ports_make_a_wire(rig, batch_send):
    """With two ports every frame goes to the other port, in order, byte for byte
    (written one by one, or in sendmmsg batches to a socket)."""
    r = rig(2, batch_send=batch_send)
    assert r.fwd.mode == "wire"
    sent = [frame(B, A, tag=i, size=60 + i) for i in range(50)]
    for f in sent:
        r.peers[0].send(f)
    r.peers[1].send(frame(A, B, tag=99))
    r.settle(lambda: r.ports[1].counters.tx_packets == 50 and r.ports[0].counters.tx_packets == 1)
    assert r.drain(1) == sent
    assert r.drain(0) == [frame(A, B, tag=99)]


def test_switch_floods_then_learns(rig):
    """Three ports: broadcast reaches both others; once learned, unicast goes to one port."""
    r = rig(3)
    assert r.fwd.mode == "switch"
    r.peers[0].send(frame(BCAST, A))
    r.settle(lambda: r.ports[2].counters.tx_packets == 1)
    assert r.drain(1) == r.drain(2) == [frame(BCAST, A)]
    r.peers[1].send(frame(A, B))  # A known on port 0
    r.settle(lambda: r.ports[0].counters.tx_packets == 1)
    r.peers[0].send(frame(B, A, tag=7))  # B now known on port 1
    r.settle(lambda: r.ports[1].counters.tx_packets == 2)
    assert r.drain(0) == [frame(A, B)]
    assert r.drain(1) == [frame(B, A, tag=7)]
    assert r.drain(2) == []  # C's port saw only the broadcast
    table = dict((mac, port) for mac, port, _ in r.fwd.mac_table())
    assert table == {"02:00:00:00:00:01": "p0", "02:00:00:00:00:02": "p1"}


def test_switch_never_reflects_to_ingress(rig):
    """A frame to a host learned on the ingress port is dropped, not sent back."""
    r = rig(3)
    r.peers[0].send(frame(BCAST, A))
    r.peers[0].send(frame(A, B))  # B says nothing; A lives on port 0 too
    r.settle(lambda: r.fwd.switch.filtered == 1)
    assert r.drain(0) == []


def test_full_destination_drops_and_counts_without_blocking(rig):
    """A destination that cannot take more frames drops them, counted on that port."""
    r = rig(2)
    total = 3000
    ticks = []

    def ticker():
        while True:
            ticks.append(r.ports[0].counters.rx_packets)
            gevent.sleep(0)

    t = gevent.spawn(ticker)
    fill_destination(r, total)
    c_out = r.ports[1].counters
    t.kill()
    assert c_out.tx_dropped > 0, "destination never filled: test proves nothing"
    assert c_out.tx_packets + c_out.tx_dropped == total
    assert len(r.drain(1)) == c_out.tx_packets
    # The hub was never blocked: between two runs of the ticker the forwarder read
    # at most one batch (50 frames), drops and all.
    assert ticks[0] <= DEFAULT_BUDGET
    assert max(b - a for a, b in itertools.pairwise(ticks)) <= DEFAULT_BUDGET


def test_failed_port_is_logged_and_others_keep_forwarding(rig):
    """When one port's fd dies, the failure is logged once and the switch carries on."""
    r = rig(3)
    r.peers[2].close()  # port 2's device "vanishes": its reads hit EOF
    r.settle(lambda: 2 in r.fwd.failed)
    failures = [e for e in r.logs if e.get("event") == "endpoint_failed"]
    assert len(failures) == 1 and failures[0]["endpoint"] == "p2"
    r.peers[0].send(frame(BCAST, A))
    r.settle(lambda: r.ports[1].counters.tx_packets == 1)
    assert r.drain(1) == [frame(BCAST, A)]
    assert r.fwd.stats()["ports"][2]["failed"]


def test_stop_ends_every_greenlet_promptly(rig):
    """stop() closes the ports, waking blocked readers; it is idempotent."""
    r = rig(3)
    gevent.sleep(0.01)
    with gevent.Timeout(1, AssertionError("stop() took more than a second")):
        r.fwd.stop()
    assert all(g.dead for g in [*r.fwd._pumps.values(), *r.fwd._helpers])
    assert all(p.polled.closed for p in r.ports)
    r.fwd.stop()


def test_serve_forever_returns_after_request_stop():
    """serve_forever() blocks until request_stop(), then stops everything."""
    r = Rig(2)
    gevent.spawn_later(0.05, r.fwd.request_stop)
    with gevent.Timeout(2):
        r.fwd.serve_forever()
    assert all(p.polled.closed for p in r.ports)
    r.close()


def test_context_manager_and_periodic_callback():
    """`with Forwarder(...)` starts and stops; every() calls back until stopped."""
    r = Rig(2)
    calls = []
    with r.fwd as fwd:
        fwd.every(0.01, lambda f: calls.append(f.stats()["ports"][0]["rx_packets"]))
        r.peers[0].send(frame(B, A))
        r.settle(lambda: len(calls) >= 3 and calls[-1] == 1)
    count = len(calls)
    gevent.sleep(0.05)  # five periods: a callback still running after stop would show
    assert len(calls) == count
    assert all(p.polled.closed for p in r.ports)
    r.close()


def test_other_greenlets_run_under_full_load(rig):
    """While a port always has frames queued, a ticker greenlet still runs regularly."""
    r = rig(2)
    r.peers[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    ticks = []
    stop = []

    def ticker():
        while not stop:
            ticks.append(r.ports[0].counters.rx_packets)
            gevent.sleep(0)

    def reader():  # keeps the far side drained so nothing drops
        while not stop:
            r.drain(1)
            gevent.sleep(0)

    gevent.spawn(ticker)
    gevent.spawn(reader)
    sent = 0
    for _ in range(2000):
        try:
            r.peers[0].send(frame(B, A))
            sent += 1
        except BlockingIOError:
            break
    r.settle(lambda: r.ports[0].counters.rx_packets == sent, timeout=5)
    stop.append(True)
    # Between two runs of the ticker the forwarder read at most one batch of 50
    # frames: a port that always has frames queued never starves the hub.
    during = [t for t in ticks if t <= sent]
    assert during[0] <= DEFAULT_BUDGET and during[-1] == sent
    assert max(b - a for a, b in itertools.pairwise(during)) <= DEFAULT_BUDGET


def test_needs_two_ports():
    """A forwarder with one port is refused."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    port = FramePort(Tap._adopt(a.detach(), "p").polled())
    with pytest.raises(ValueError, match="two ports"):
        Forwarder([port])
    port.close()
    b.close()


def test_a_failed_send_is_counted_once(rig):
    """A write error is counted once, on the destination; the switch then leaves the
    failed port out, so later frames are neither sent to it nor counted against it."""
    r = rig(3)
    r.peers[0].send(frame(BCAST, A))
    r.settle(lambda: r.ports[2].counters.tx_packets == 1)
    r.peers[2].shutdown(socket.SHUT_RD)  # its writes now fail with EPIPE
    for i in range(5):
        r.peers[0].send(frame(BCAST, A, tag=i))
    r.settle(lambda: r.ports[1].counters.tx_packets == 6)
    r.settle(lambda: 2 in r.fwd.failed)
    c = r.ports[2].counters
    assert (c.tx_packets, c.tx_errors) == (1, 1)


def test_wire_counts_every_frame_for_a_failed_side_once(rig):
    """In a wire, after one side fails, each frame for it counts once in its tx_errors."""
    r = rig(2)
    r.peers[0].send(frame(B, A))
    r.settle(lambda: r.ports[1].counters.tx_packets == 1)
    r.peers[1].shutdown(socket.SHUT_RD)  # its writes now fail with EPIPE
    for i in range(10):
        r.peers[0].send(frame(B, A, tag=i))
    r.settle(lambda: r.ports[0].counters.rx_packets == 11)
    r.settle(lambda: 1 in r.fwd.failed)
    c = r.ports[1].counters
    r.settle(lambda: c.tx_packets + c.tx_errors == 11)
    assert (c.tx_packets, c.tx_errors) == (1, 10)


@pytest.mark.parametrize("nports", [2, 3])
def test_a_rate_limited_port_passes_its_burst_and_counts_the_rest(rig, nports):
    """?rate= polices what a port reads: beyond the burst, frames are dropped and
    counted as rx_rate_limited (wire and switch alike); read = passed + policed."""
    r = rig(nports)
    # Set before the pumps first run (they have not: nothing has yielded yet).
    r.ports[0].policer = TokenBucket(0.001, burst=10)
    for i in range(50):
        r.peers[0].send(frame(BCAST, A, tag=i))
    r.settle(lambda: r.ports[0].counters.rx_packets == 50)
    r.settle(lambda: len(r.drain(1)) == 0 and r.ports[1].counters.tx_packets == 10)
    assert r.ports[0].drops["rx_rate_limited"] == 40
    stats = r.fwd.stats()["ports"][0]
    assert stats["drops"] == {"rx_rate_limited": 40} and stats["rx_errors"] == 0


def test_port_state_changes_are_logged_with_the_port_named(rig):
    """What a port reports through notify is logged once, naming the endpoint."""
    r = rig(2)
    r.ports[1].notify("link_down", previous="up")
    r.ports[1].notify("link_up", level="info", previous="down")
    events = [(e["event"], e["log_level"], e["endpoint"]) for e in r.logs if "previous" in e]
    assert events == [("link_down", "warning", "p1"), ("link_up", "info", "p1")]


@pytest.mark.parametrize(
    ("verdict", "counter"),
    [
        (Verdict.BACKPRESSURE, "tx_dropped"),
        (Verdict.LINK_DOWN, "tx_link_down"),
        (Verdict.REFUSED, "tx_errors"),
        (Verdict.UNREACHABLE, "tx_errors"),
    ],
    ids=["backpressure", "link_down", "refused", "unreachable"],
)
@pytest.mark.parametrize("batch_send", [False, True], ids=["write", "sendmmsg"])
def test_each_write_verdict_is_counted_where_the_table_says(
    rig, remap, verdict, counter, batch_send
):
    """Both loops count a failed write where the one verdict table says.  A full
    socket gives a real EAGAIN; the table is re-mapped so that EAGAIN means each
    verdict in turn (ENOBUFS shares BACKPRESSURE with EAGAIN, EIO is LINK_DOWN,
    EINVAL and EMSGSIZE are REFUSED): every frame is sent or counted there, exactly,
    and the destination stays in the switch."""
    remap(errno.EAGAIN, verdict)
    r = rig(2, batch_send=batch_send)
    total = fill_destination(r)
    c_out = r.ports[1].counters
    assert getattr(c_out, counter) > 0, "the destination never filled: proves nothing"
    assert c_out.tx_packets + getattr(c_out, counter) == total
    others = {"tx_dropped", "tx_link_down", "tx_errors"} - {counter}
    assert all(getattr(c_out, name) == 0 for name in others)
    assert not r.fwd.failed


@pytest.mark.parametrize("batch_send", [False, True], ids=["write", "sendmmsg"])
def test_a_failed_verdict_fails_the_destination(rig, remap, batch_send):
    """EAGAIN re-mapped to FAILED: the destination fails once (logged, out of the
    wire), and every later frame for it is counted in its tx_errors."""
    remap(errno.EAGAIN, Verdict.FAILED)
    r = rig(2, batch_send=batch_send)
    total = fill_destination(r)
    c_out = r.ports[1].counters
    assert 1 in r.fwd.failed
    assert [e["endpoint"] for e in r.logs if e.get("event") == "endpoint_failed"] == ["p1"]
    assert c_out.tx_packets + c_out.tx_errors == total and c_out.tx_errors > 0


@pytest.fixture
def remap(monkeypatch):
    """``remap(code, verdict)``: make errno ``code`` mean ``verdict`` for the Python
    loop and, where built, the C loop; the real table is back after the test."""
    c = getattr(relay, "_c", None)
    original = table()  # taken now: monkeypatch restores the dict only after this teardown

    def set_(code, verdict):
        monkeypatch.setitem(WRITE_VERDICTS, code, verdict)
        if c is not None:
            c.set_verdicts(bytes(WRITE_VERDICTS.get(e, Verdict.FAILED) for e in range(256)))

    yield set_
    if c is not None:
        c.set_verdicts(original)


def fill_destination(r, total=3000):
    """Offer `total` 1000-byte frames to port 0 while nobody reads port 1's peer."""
    r.peers[1].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for _ in range(total):
        while True:
            try:
                r.peers[0].send(frame(B, A, size=1000))
                break
            except BlockingIOError:
                gevent.sleep(0.001)  # our own send side is full: let the forwarder run
    r.settle(lambda: r.ports[0].counters.rx_packets == total)
    return total


DRAIN = """
import socket, sys, time
sock = socket.socket(fileno=int(sys.argv[1]))
# The fd is non-blocking (its file description is shared with the test): a
# timeout makes recv wait (in poll) when this drainer is ahead of the relay.
sock.settimeout(30)
want, got = int(sys.argv[2]), 0
while got < want:
    sock.recv(70000)
    got += 1
    time.sleep(0.0005)  # slower than the forwarder: its writes meet a full socket
print(got)
"""


@pytest.mark.parametrize("ports", [2, 3], ids=["wire", "switch"])
@pytest.mark.parametrize("batch_send", [False, True], ids=["write", "sendmmsg"])
def test_a_retry_verdict_writes_again_until_the_frame_is_taken(rig, remap, ports, batch_send):
    """EAGAIN re-mapped to RETRY (what EINTR means): the relay (both loops) and a
    switch's send write the same frame again until the destination takes it, so a
    destination drained by another process, slowly, gets every frame, none dropped
    or counted as an error."""
    remap(errno.EAGAIN, Verdict.RETRY)
    r = rig(ports, batch_send=batch_send)
    if ports == 3:  # teach the switch that B lives on port 1: frames to B go there only
        r.peers[1].send(frame(BCAST, B))
        r.settle(lambda: r.ports[0].counters.tx_packets == 1)
        r.drain(0), r.drain(2)
    total = 300
    r.peers[1].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    fd = r.peers[1].fileno()
    drain = subprocess.Popen(
        [sys.executable, "-c", DRAIN, str(fd), str(total)], pass_fds=(fd,),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        fill_destination(r, total)
        r.settle(lambda: r.ports[1].counters.tx_packets == total, timeout=10)
        out, _ = drain.communicate(timeout=30)
    finally:
        if drain.poll() is None:
            drain.kill()
            drain.wait()
    c_out = r.ports[1].counters
    assert (c_out.tx_dropped, c_out.tx_link_down, c_out.tx_errors) == (0, 0, 0)
    assert out.strip() == str(total)
    assert c_out.tx_packets == total

"""The transmit-ring relay, in C and as its Python twin, against real packet sockets.

Each test drives one batch function directly: frames written into one end
of a ``SOCK_SEQPACKET`` pair (a TAP's reads, vnet header first) leave
through a :class:`~greentap.device.packet.TxRing` on one end of a veth
pair and are captured on the other.  Every test runs over the C batch and
over its pure-Python twin with the same expectations, so the two agree on
counts, the cursor and what reaches the wire; the kernel's own refusals (a
link down, a full queue, a malformed frame, a deleted interface) are real.
The sanitize environment runs this file too (the C path under ASan/UBSan).
"""

import errno
import socket
import struct
import time

import pytest

from greentap.core import kernel_constants as kc
from greentap.core.txring import TxGeometry
from greentap.device.netns import entered
from greentap.device.packet import PacketSocket
from greentap.green import relay, txring
from tests.conftest import must_run
from tests.privileged.conftest import unique

WAIT, WRITE_ERROR = 1, 4
VNET = bytes(kc.VIRTIO_NET_HDR_SIZE)
SMALL = TxGeometry(frame_size=2048, frames_per_block=2, block_count=4)  # 8 slots


@pytest.fixture(params=["c", "python"])
def batch(request):
    """The C ``relay_batch_to_ring`` and its Python twin (:func:`txring.python_batch_to_ring`)."""
    if request.param == "python":
        return txring.python_batch_to_ring
    if relay.relay_batch_to_ring is None:
        if must_run():
            pytest.fail(f"the C relay loop must run here but is missing: {relay.LOOP_REASON}")
        pytest.skip(f"the C relay loop is missing: {relay.LOOP_REASON}")
    return relay.relay_batch_to_ring


class Wire:
    """A veth pair in a namespace: a TxRing on ``a``, a capture on ``b``, a source pair."""

    def __init__(self, ns, geometry=None, qdisc_bypass=True, mtu=1500, vnet_hdr=True):
        self.ns = ns
        self.a, self.b = unique("ta"), unique("tb")
        ns.ip("link", "add", self.a, "type", "veth", "peer", "name", self.b)
        for dev in (self.a, self.b):
            ns.ip("link", "set", dev, "mtu", str(mtu), "up")
        self.sock = PacketSocket(
            self.a, netns=ns.name, vnet_hdr=vnet_hdr, qdisc_bypass=qdisc_bypass,
            tx_geometry=geometry,
        )  # fmt: skip
        self.header = self.sock.vnet_hdr_size
        self.ring = self.sock.tx
        with entered(ns.name, self.b):
            self.capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        self.capture.bind((self.b, kc.ETH_P_ALL))
        self.capture.settimeout(2)
        self.src, self.feed = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.src.setblocking(False)
        self.feed.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.scratch = bytearray(kc.MAX_L2_FRAME + kc.VIRTIO_NET_HDR_SIZE)

    def offer(self, frames, header=VNET):
        for frame in frames:
            self.feed.send(header + frame)

    def run(self, batch, budget=50, ring_fd=None):
        ring = self.ring
        return batch(
            self.src.fileno(), ring.holder.fd if ring_fd is None else ring_fd,
            self.sock.holder.fd, ring.map, ring.geometry.frame_size, ring.cursor, self.scratch,
            budget, self.header,
        )  # fmt: skip

    def received(self, n, timeout=3.0):
        """The next ``n`` frames captured on ``b``, waiting up to ``timeout`` for them."""
        got, deadline = [], time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            try:
                got.append(self.capture.recv(70000))
            except TimeoutError:
                break
        return got

    def nothing_more(self):
        """True if nothing else arrives on ``b`` within 0.3 s."""
        self.capture.settimeout(0.3)
        try:
            self.capture.recv(70000)
        except TimeoutError:
            return True
        finally:
            self.capture.settimeout(2)
        return False

    def settle(self, held=0, timeout=3.0):
        """Wait until exactly ``held`` slots are still held by the kernel (the rest
        given back); the statuses then.  The veth's receiving side frees a sent
        packet in the send itself, or soon after on a loaded machine."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = self.statuses()
            if sum(s != kc.TP_STATUS_AVAILABLE for s in statuses) == held:
                return statuses
            if time.monotonic() > deadline:
                raise AssertionError(f"slots still held: {statuses}")
            time.sleep(0.01)

    def statuses(self):
        view, size = self.ring.map, self.ring.geometry.frame_size
        return [struct.unpack_from("=I", view, i * size)[0] for i in range(len(view) // size)]

    def close(self):
        self.sock.close()
        self.capture.close()
        self.src.close()
        self.feed.close()


@pytest.fixture
def wire(netns):
    made = []

    def make(**kw):
        w = Wire(netns, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def frames(n, size=60, tag=0):
    """``n`` distinct frames of ``size`` bytes to a MAC nobody has (no reply, no echo)."""
    head = bytes.fromhex("02005e009999" + "02005e000001" + "88b5")  # to, from, IEEE local
    return [head + bytes([tag, i % 256]) + bytes(size - 16) for i in range(n)]


def counts(result):
    """``{name: n}`` of a batch's result."""
    names = ("end", "errno", "rx", "rx_bytes", "tx", "tx_bytes", "dropped", "link_down", "errors")
    return dict(zip(names, result, strict=True))


def test_a_batch_leaves_in_order_byte_exact(wire, batch):
    """40 frames read in one batch all leave, in order, exactly as read; tx_bytes
    counts them with their vnet headers, as every relay counts what it read;
    the cursor moves on 40 slots and every slot is given back."""
    w = wire()
    sent = frames(40)
    w.offer(sent)
    c = counts(w.run(batch))
    assert c == {"end": WAIT, "errno": 0, "rx": 40, "rx_bytes": 40 * 70, "tx": 40,
                 "tx_bytes": 40 * 70, "dropped": 0, "link_down": 0, "errors": 0}  # fmt: skip
    assert w.received(40) == sent
    assert w.ring.cursor == [40]
    w.settle()


def test_the_ring_wraps_and_the_budget_is_kept(wire, batch):
    """With 8 slots, batches of 5 wrap around the ring: 25 frames in 5 batches
    leave in order, each batch ending on its budget but the last."""
    w = wire(geometry=SMALL)
    sent = frames(25)
    w.offer(sent)
    ends = []
    for _ in range(6):
        ends.append(counts(w.run(batch, budget=5))["end"])
        w.settle()  # the next batch finds its slots given back
    assert ends == [0, 0, 0, 0, 0, WAIT]
    assert w.received(25) == sent
    assert w.ring.cursor == [25 % 8]


def test_a_frame_larger_than_a_slot_leaves_between_its_neighbours(wire, batch):
    """A 4000-byte frame (a slot holds 2016) is sent alone on the receive socket,
    after the frames filled before it and before those after it."""
    w = wire(mtu=9000)
    sent = frames(3, tag=1) + frames(1, size=4000, tag=2) + frames(3, tag=3)
    w.offer(sent)
    c = counts(w.run(batch))
    assert (c["rx"], c["tx"], c["errors"]) == (7, 7, 0)
    assert c["tx_bytes"] == sum(len(f) + 10 for f in sent)
    assert w.received(7) == sent


def test_a_link_down_drops_the_batch_and_none_of_it_leaves_later(wire, batch, netns):
    """Frames sent while the link is down count as tx_link_down and are given
    back: once the link is up again only the frames sent then leave."""
    w = wire()
    netns.ip("link", "set", w.a, "down")
    w.offer(frames(10, tag=1))
    c = counts(w.run(batch))
    assert (c["tx"], c["link_down"], c["errors"], c["end"]) == (0, 10, 0, WAIT)
    assert w.ring.cursor == [0]
    assert set(w.statuses()) == {kc.TP_STATUS_AVAILABLE}  # given back, none was ever sent
    netns.ip("link", "set", w.a, "up")
    later = frames(5, tag=2)
    w.offer(later)
    assert counts(w.run(batch))["tx"] == 5
    assert w.received(5) == later
    assert w.nothing_more()


def test_a_refused_frame_is_counted_and_the_rest_still_leave(wire, batch):
    """A frame the kernel refuses as malformed (its vnet header asks for a
    checksum beyond its end: TP_STATUS_WRONG_FORMAT) counts as an error; the
    frames after it move down a slot and leave, in order."""
    w = wire()
    good = frames(4)
    bad = struct.pack("=BBHHHH", kc.VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 200, 6)
    w.offer(good[:1])
    w.offer(frames(1, tag=9), header=bad)
    w.offer(good[1:])
    c = counts(w.run(batch))
    assert (c["rx"], c["tx"], c["errors"], c["dropped"]) == (5, 4, 1, 0)
    assert w.received(4) == good
    assert w.nothing_more()
    assert w.ring.cursor == [4]
    w.settle()  # the refused slot given back, the others freed once sent


def test_frames_without_a_vnet_header_leave_untouched(wire, batch):
    """A ring without vnet headers (header 0) sends frames exactly as read: the
    send hint, which would write into a vnet header, leaves them alone (these
    frames' bytes 1-3 are zero, where a vnet header's gso_type and hdr_len lie)."""
    w = wire(vnet_hdr=False)
    sent = [bytes.fromhex("020000009999" + "02005e000001" + "88b5") + bytes([i]) * 46
            for i in range(5)]  # fmt: skip
    w.offer(sent, header=b"")
    c = counts(w.run(batch))
    assert (c["rx"], c["tx"], c["errors"]) == (5, 5, 0)
    assert w.received(5) == sent


def test_a_bad_header_size_is_refused(wire, batch):
    """A vnet header of any size but 0 or 10 is a ValueError, before anything is read."""
    w = wire()
    w.header = 12
    with pytest.raises(ValueError):
        w.run(batch)


def test_a_runt_is_an_error_and_never_sent(wire, batch):
    """A read shorter than a vnet header and an Ethernet header is counted as
    an error and not handed to the kernel."""
    w = wire()
    w.offer([bytes(10)])
    w.offer(frames(1))
    c = counts(w.run(batch))
    assert (c["rx"], c["tx"], c["errors"]) == (2, 1, 1)
    assert len(w.received(1)) == 1
    assert w.nothing_more()


def test_a_full_queue_drops_and_counts_and_the_ring_goes_on(wire, batch, netns):
    """Behind a qdisc that holds a few frames (tbf, qdisc=use) the rest of a
    batch is refused (ENOBUFS): counted as tx_dropped, given back; every
    frame read is either sent or dropped, and once the qdisc is gone the
    next batch leaves whole."""
    w = wire(qdisc_bypass=False)
    netns.exec("tc", "qdisc", "add", "dev", w.a, "root", "tbf", "rate", "8kbit",
               "burst", "1600", "limit", "300")  # fmt: skip
    w.offer(frames(50))
    c = counts(w.run(batch))
    assert c["rx"] == 50 and c["tx"] + c["dropped"] == 50
    assert c["dropped"] > 0 and c["errors"] == 0
    netns.exec("tc", "qdisc", "del", "dev", w.a, "root")
    w.received(c["tx"], timeout=0.5)  # what the qdisc let through, if anything yet
    later = frames(6, tag=7)
    w.offer(later)
    assert counts(w.run(batch))["tx"] == 6
    arrived = w.received(64, timeout=1.0)
    assert arrived[-6:] == later


def test_a_ring_whose_slots_are_all_held_drops_what_it_reads(wire, batch, netns):
    """While the driver holds every slot (a qdisc that lets one frame through and
    then one every few seconds keeps the rest in flight) frames read find no
    room: each is read, counted and dropped, none blocks; a full ring leaves
    before the next frame is read into it."""
    w = wire(geometry=SMALL, qdisc_bypass=False)
    netns.exec("tc", "qdisc", "add", "dev", w.a, "root", "tbf", "rate", "100bit",
               "burst", "100", "limit", "100000")  # fmt: skip
    w.offer(frames(40))
    c = counts(w.run(batch))
    assert c["rx"] == 40 and c["tx"] + c["dropped"] == 40
    assert c["tx"] in (8, 9)  # a ringful, and the slot of the one let through if freed in time
    w.settle(held=8)  # the qdisc holds 8 frames: every slot
    w.offer(frames(5))
    c = counts(w.run(batch))
    assert (c["rx"], c["tx"], c["dropped"]) == (5, 0, 5)


def test_a_deleted_interface_fails_the_batch_and_gives_the_slots_back(wire, batch, netns):
    """Sending after the interface was deleted is a FAILED verdict (ENXIO):
    the batch ends with a write error, the frame it hit is the caller's to
    count and the rest are errors; the slots are given back."""
    w = wire()
    netns.ip("link", "del", w.a)
    w.offer(frames(6))
    c = counts(w.run(batch))
    assert (c["end"], c["errno"], c["tx"], c["errors"]) == (WRITE_ERROR, errno.ENXIO, 0, 5)
    assert w.ring.cursor == [0]
    assert set(w.statuses()) == {kc.TP_STATUS_AVAILABLE}


def test_no_ring_to_send_to_counts_every_frame_as_an_error(wire, batch):
    """A destination that failed (ring fd -1) still reads its source: every frame
    is an error, nothing is sent."""
    w = wire()
    w.offer(frames(3))
    c = counts(w.run(batch, ring_fd=-1))
    assert (c["rx"], c["tx"], c["errors"]) == (3, 0, 3)
    assert w.nothing_more()


def test_a_cursor_outside_the_ring_is_refused(wire, batch):
    """A cursor beyond the ring's slots is a ValueError, before anything is read."""
    w = wire(geometry=SMALL)
    w.ring.cursor[0] = 8
    with pytest.raises(ValueError):
        w.run(batch)

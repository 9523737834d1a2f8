"""``packet:IFNAME``: an existing interface (a veth here) forwarded to a TAP, with real kernels."""

import json
import sys
import textwrap

import pytest

from greentap.app import exits
from tests.privileged.conftest import capless_python, unique
from tests.privileged.test_observe import get, metric
from tests.privileged.test_offload import transfer_between as transfer
from tests.privileged.topology import Host, TapForward, hosts, wait_until

# Every test here runs over each relay loop, C and pure Python (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("relay_loop")


class VethHost(Host):
    """A namespace with one end of a veth (``dev``, with an address); the other end
    (``attach``) sits in a namespace of its own and is what ``packet:`` opens."""

    def __init__(self, make_netns, index):
        super().__init__(make_netns(), index)
        self.side = make_netns()
        self.attach, self.tap = unique("gp"), unique("gv")  # `tap`: Host's name for the device
        self.make_veth()
        self.endpoint = f"packet:{self.attach}?netns={self.side.name}"

    def make_veth(self):
        self.side.ip("link", "add", self.attach, "type", "veth", "peer", "name", self.tap,
                     "netns", self.ns.name)  # fmt: skip
        self.side.ip("link", "set", self.attach, "up")
        self.ns.ip("link", "set", self.tap, "up")

    def promiscuity(self):
        return self.side.link(self.attach)["promiscuity"]


def neighbours(a, v):
    """Permanent neighbour entries both ways: no ARP, so frame counts are exact."""
    a.knows(v)
    v.knows(a)


def back(v, a, tf):
    """Create v's veth again, address it, and wait until tap-forward attached it again."""
    v.make_veth()
    v.configure()
    neighbours(a, v)  # a new device, a new MAC address
    tf.wait_for("endpoint_recovered", endpoint=v.attach)


def ok(proc):
    return proc.returncode == 0 and " 0% packet loss" in proc.stdout


def joined(make_netns, tmp_path, *args, query="", in_side=False):
    """A TAP host and a veth host joined by a started tap-forward (run in the veth's
    side namespace with ``in_side``), both addressed."""
    (a,) = hosts(make_netns, 1)
    v = VethHost(make_netns, 1)
    tf = TapForward("--stats", "0", *args, a.endpoint, v.endpoint + query, tmp_path=tmp_path,
                    netns=v.side.name if in_side else None)  # fmt: skip
    try:
        tf.wait_for("forwarding")
        a.configure()
        v.configure()
    except BaseException:
        tf.stop()
        raise
    return a, v, tf


@pytest.mark.parametrize("offload", ["auto", "off"])
def test_ping_and_tcp_are_byte_exact_both_ways(make_netns, tmp_path, offload, relay_loop):
    """A TAP namespace and a veth namespace joined through packet:: ping loses nothing
    and 64 MiB of TCP arrive byte for byte (SHA-256) each way; with offloads the
    interface's super-frames pass whole (through the C ring loop or its Python
    twin); without them the super-frames that reach the interface (its peer sends
    with TSO) are cut into segments and the checksums a sender left to the NIC are
    finished; after exit the interface is not promiscuous."""
    (a,) = hosts(make_netns, 1)
    v = VethHost(make_netns, 1)
    tf = TapForward("--stats", "0", "--offload", offload, a.endpoint, v.endpoint,
                    tmp_path=tmp_path)  # fmt: skip
    try:
        opened = tf.wait_for("endpoint_opened", endpoint=v.attach)
        forwarding = tf.wait_for("forwarding")
        assert opened["offload"] is (offload == "auto")
        # With offloads both directions take the tight relay: C (ring_batch) or Python.
        assert forwarding["loop"] == (relay_loop if offload == "auto" else "python")
        assert v.promiscuity() == 1
        a.configure()
        v.configure()
        assert ok(a.ping(v, count=5))
        for src, dst, to in ((a, v, v.ip), (v, a, a.ip)):
            sent, received = transfer(src.ns, dst.ns, to)
            assert sent == received
        stats = tf.final_stats(timeout=8)
    finally:
        tf.stop()
    average = stats[v.attach]["rx_bytes"] / stats[v.attach]["rx_packets"]
    if offload == "auto":
        assert average > 4000, "no super-frames: GRO'd frames did not pass whole"
    else:
        assert average < 1515
    assert v.promiscuity() == 0


def test_ipv6_tcp_is_byte_exact(make_netns, tmp_path):
    """IPv6 (link-local addresses, on the test's links only): ping6 and 64 MiB of TCP
    byte for byte from the TAP namespace to the veth namespace."""
    (a,) = hosts(make_netns, 1)
    v = VethHost(make_netns, 1)
    tf = TapForward("--stats", "0", a.endpoint, v.endpoint, tmp_path=tmp_path)
    try:
        tf.wait_for("forwarding")
        for host, address in ((a, "fe80::198:18:0:1"), (v, "fe80::198:18:0:2")):
            host.ns.exec("sysctl", "-qw", f"net.ipv6.conf.{host.tap}.disable_ipv6=0")
            host.ns.ip("addr", "add", f"{address}/64", "dev", host.tap, "nodad")
        ping = a.ns.exec("ping", "-6", "-c", "3", "-i", "0.2", "-W", "2",
                         f"fe80::198:18:0:2%{a.tap}", check=False, timeout=30)  # fmt: skip
        assert ok(ping), ping.stdout
        sent, received = transfer(a.ns, v.ns, f"fe80::198:18:0:2%{a.tap}", bind="::")
        assert sent == received
    finally:
        tf.stop()


VLAN_PROBE = textwrap.dedent(
    """
    # send DEV TPID VID N  |  receive DEV N: raw 802.1Q frames, as a tagged host would
    import json, select, socket, struct, sys, time
    mode, dev = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind((dev, 0))
    if mode == "send":
        tpid, vid, n = int(sys.argv[3], 16), int(sys.argv[4]), int(sys.argv[5])
        for i in range(n):
            s.send(b"\\xff" * 6 + b"\\x02\\x00\\x00\\x00\\x00\\x07" + struct.pack("!HH", tpid, vid)
                   + b"\\x88\\xb5" + b"greentap-vlan-%d" % i + b"\\x00" * 40)
        sys.exit(0)
    s.setsockopt(263, 8, 1)  # PACKET_AUXDATA
    print("ready", flush=True)
    want, got, deadline = int(sys.argv[3]), [], time.monotonic() + 10
    while len(got) < want and select.select([s], [], [], max(0, deadline - time.monotonic()))[0]:
        data, anc, _, _ = s.recvmsg(65536, 64)
        if b"greentap-vlan-" not in data:
            continue
        tpid, tci, where = struct.unpack("!HH", data[12:16]) + ("frame",)
        for level, kind, aux in anc:
            status, _, _, _, _, vtci, vtpid = struct.unpack("IIIHHHH", aux[:20])
            if level == 263 and kind == 8 and status & 0x10:  # TP_STATUS_VLAN_VALID
                tpid, tci, where = (vtpid if status & 0x40 else 0x8100), vtci, "auxdata"
        got.append({"tpid": tpid, "vid": tci & 0xFFF, "where": where})
    print(json.dumps(got), flush=True)
    """
)


def tagged(sender, sender_dev, receiver, receiver_dev, tpid, vid, n=5):
    """Send ``n`` frames tagged ``(tpid, vid)`` out of one device, return what the other read."""
    proc = receiver.ns.popen(sys.executable, "-c", VLAN_PROBE, "receive", receiver_dev, str(n),
                             stdout=-1, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        sender.ns.exec(sys.executable, "-c", VLAN_PROBE, "send", sender_dev, f"{tpid:x}",
                       str(vid), str(n))  # fmt: skip
        out = proc.stdout.readline()
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return json.loads(out)


def test_vlan_tags_cross_both_ways_intact(make_netns, tmp_path):
    """802.1Q and 802.1ad tagged frames (sent by userspace tagged hosts: this kernel
    has no 8021q) cross packet: and the TAP both ways with TPID and VID intact: the
    tag the kernel moved into the ring's metadata is put back into the frame."""
    (a,) = hosts(make_netns, 1)
    v = VethHost(make_netns, 1)
    tf = TapForward("--stats", "0", a.endpoint, v.endpoint, tmp_path=tmp_path)
    try:
        tf.wait_for("forwarding")
        for tpid, vid in ((0x8100, 100), (0x88A8, 4000)):
            want = [{"tpid": tpid, "vid": vid}] * 5
            for src, dst in ((v, a), (a, v)):
                got = tagged(src, src.tap, dst, dst.tap, tpid, vid)
                assert [{k: g[k] for k in ("tpid", "vid")} for g in got] == want, (src, got)
    finally:
        tf.stop()


RAW_SEND = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((sys.argv[1], 0))
    for i in range(int(sys.argv[2])):
        s.send(bytes.fromhex(sys.argv[3]) + b"\\x02\\x00\\x00\\x00\\x00\\x09\\x88\\xb5"
               + i.to_bytes(4, "big") + bytes(46))
    """
)


@pytest.mark.parametrize("qdisc", ["bypass", "use"])
def test_frames_leaving_the_interface_are_never_read_back(make_netns, tmp_path, qdisc):
    """Neither the frames tap-forward sends out of the interface nor those the host
    itself sends out of it are read back: with permanent neighbours, the packet
    port reads exactly the replies, and 7 frames the host sends out of it reach the
    veth's far end but never the TAP; the metrics say the same."""
    a, v, tf = joined(make_netns, tmp_path, "--metrics", "9100", query=f"&qdisc={qdisc}",
                      in_side=True)  # fmt: skip
    try:
        neighbours(a, v)
        assert ok(a.ping(v, count=3))
        before = v.tap_counters()["rx"]["packets"]
        v.side.exec(sys.executable, "-c", RAW_SEND, v.attach, "7", v.mac.replace(":", ""))
        wait_until(lambda: v.tap_counters()["rx"]["packets"] >= before + 7, what="7 frames at v")
        status, body = get(v.side, tf.wait_for("metrics_listening")["url"])
        assert status == "200"
        for name in ("greentap_rx_packets_total", "greentap_tx_packets_total"):
            assert metric(body, name, endpoint=v.attach, kind="packet") == 3
        assert metric(body, "greentap_endpoint_up", endpoint=v.attach, kind="packet") == 1
        stats = tf.final_stats()
    finally:
        tf.stop()
    assert stats[v.attach]["tx_packets"] == 3  # the echo requests
    assert stats[v.attach]["rx_packets"] == 3  # the replies: nothing read back
    assert stats[a.tap]["tx_packets"] == 3


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_a_deleted_interface_is_attached_again_when_it_comes_back(make_netns, tmp_path, user):
    """Delete the veth under tap-forward: endpoint_failed, waiting for it; create it
    again: endpoint_recovered, promiscuous again, and ping works; after exit the
    new interface is not promiscuous.  As nobody too (--user, opened as root, then
    without CAP_NET_RAW): binding the socket it holds again needs no privilege."""
    drop = ("--user", "nobody", "--group", "nogroup") if user == "nobody" else ()
    a, v, tf = joined(make_netns, tmp_path, *drop)
    try:
        if drop:
            tf.wait_for("privileges_dropped")
        assert ok(a.ping(v, count=2))
        v.side.ip("link", "del", v.attach)
        failed = tf.wait_for("endpoint_failed", endpoint=v.attach)
        assert failed["waiting_for_it"] is True
        back(v, a, tf)
        assert v.promiscuity() == 1
        assert ok(a.ping(v, count=3))
        assert tf.count("endpoint_failed") == 1
        assert tf.count("endpoint_reattach_failed") == 0
        tf.final_stats()
    finally:
        tf.stop()
    assert v.promiscuity() == 0


def test_link_down_and_up_are_logged_once_and_traffic_resumes(make_netns, tmp_path):
    """The interface taken down: link_down once, frames for it counted in
    tx_link_down, the process unharmed; up again: link_up once, ping works."""
    a, v, tf = joined(make_netns, tmp_path)
    try:
        a.knows(v)
        assert ok(a.ping(v, count=2))
        v.side.ip("link", "set", v.attach, "down")
        tf.wait_for("link_down", endpoint=v.attach)
        assert a.ping(v, count=3, interval="0.1").returncode != 0
        v.side.ip("link", "set", v.attach, "up")
        tf.wait_for("link_up", endpoint=v.attach)
        wait_until(lambda: ok(a.ping(v, count=1)), what="ping after link up")
        assert tf.count("link_down") == 1 and tf.count("link_up") == 1
        stats = tf.final_stats()
    finally:
        tf.stop()
    assert stats[v.attach]["tx_link_down"] >= 3


def test_an_interface_deleted_while_down_is_noticed(make_netns, tmp_path):
    """The kernel reports a link going down once and a deletion after that not at
    all: an interface taken down and then deleted still fails the endpoint
    (waiting for it), and it is attached again when it comes back."""
    a, v, tf = joined(make_netns, tmp_path)
    try:
        v.side.ip("link", "set", v.attach, "down")
        tf.wait_for("link_down", endpoint=v.attach)
        v.side.ip("link", "del", v.attach)
        assert tf.wait_for("endpoint_failed", endpoint=v.attach)["waiting_for_it"] is True
        back(v, a, tf)
        assert ok(a.ping(v, count=2))
        tf.final_stats()
    finally:
        tf.stop()


def test_a_packet_interface_is_a_switch_port(make_netns, tmp_path):
    """Two TAPs and packet: make a learning switch: every pair of hosts pings."""
    a, b = hosts(make_netns, 2)
    v = VethHost(make_netns, 2)
    tf = TapForward("--stats", "0", a.endpoint, b.endpoint, v.endpoint, tmp_path=tmp_path)
    try:
        assert tf.wait_for("forwarding")["mode"] == "switch"
        for host in (a, b, v):
            host.configure()
        for src, dst in ((a, v), (b, v), (v, a), (a, b)):
            assert ok(src.ping(dst, count=2)), (src.ip, dst.ip)
        stats = tf.final_stats()
    finally:
        tf.stop()
    assert stats[v.attach]["rx_packets"] >= 4 and stats[v.attach]["tx_packets"] >= 4


def test_an_interface_moved_away_and_back_is_attached_again(make_netns, tmp_path):
    """The interface moved to another namespace: the endpoint fails (the socket's
    namespace no longer has it), waiting for it; moved back: attached again, ping works."""
    a, v, tf = joined(make_netns, tmp_path)
    elsewhere = make_netns()
    try:
        neighbours(a, v)
        assert ok(a.ping(v, count=2))
        v.side.ip("link", "set", v.attach, "netns", elsewhere.name)
        assert tf.wait_for("endpoint_failed", endpoint=v.attach)["waiting_for_it"] is True
        elsewhere.ip("link", "set", v.attach, "netns", v.side.name)
        v.side.ip("link", "set", v.attach, "up")  # a move resets the link state
        tf.wait_for("endpoint_recovered", endpoint=v.attach)
        assert ok(a.ping(v, count=3))
        tf.final_stats()
    finally:
        tf.stop()


def test_bad_packet_endpoints_exit_with_one_line(make_netns, tmp_path):
    """No such interface, a loopback interface and no CAP_NET_RAW: each a one-line
    error naming the endpoint, with the documented exit status."""
    (a,) = hosts(make_netns, 1)
    side = make_netns()
    cases = [
        (f"packet:nosuch0?netns={side.name}", exits.EXIT_SYSTEM, "no interface 'nosuch0'"),
        (f"packet:lo?netns={side.name}", exits.EXIT_USAGE, "needs an Ethernet interface"),
    ]
    for endpoint, status, text in cases:
        tf = TapForward(a.endpoint, endpoint, tmp_path=tmp_path)
        try:
            assert tf.proc.wait(timeout=20) == status
            lines = tf.log_path.read_text().strip().splitlines()
            assert len(lines) == 1 and text in lines[0], lines
        finally:
            tf.stop()
    code = (
        "from greentap.ports.packet import PacketPort\n"
        "from greentap.errors import GreentapError\n"
        "from greentap.app.exits import exit_status\n"
        "try:\n"
        "    PacketPort('lo')\n"
        "except GreentapError as exc:\n"
        "    print(exit_status(exc), exc)\n"
    )
    out = capless_python(side, code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{exits.EXIT_PERMISSION} ") and "CAP_NET_RAW" in out.stdout


def test_the_port_in_process_reads_a_burst_exactly(make_netns):
    """In this process: a burst of 3000 frames into the veth (more than one ring
    block) is read from the ring exactly once each, in order, whole; closing the
    port leaves the interface not promiscuous."""
    from greentap.ports.packet import PacketPort

    v = VethHost(make_netns, 1)
    port = PacketPort(v.attach, netns=v.side.name)
    try:
        assert v.promiscuity() == 1
        buf = bytearray(port.max_frame_size)
        v.ns.exec(sys.executable, "-c", RAW_SEND, v.tap, "3000", "ff" * 6)
        numbers, sizes = [], set()
        while len(numbers) < 3000:
            n = port.recv_into(buf)
            if buf[12:14] == b"\x88\xb5":
                numbers.append(int.from_bytes(buf[14:18], "big"))
                sizes.add(n)
        assert numbers == list(range(3000))
        assert sizes == {64}
        assert port.counters.rx_packets == 3000
    finally:
        port.close()
    port.close()  # twice is harmless
    assert v.promiscuity() == 0

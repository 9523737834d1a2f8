"""VXLAN and raw-UDP endpoints against real peers: the kernel's own VXLAN,
a second tap-forward, and a one-frame-per-datagram socket peer."""

import socket
import subprocess
import sys
import textwrap

from tests import frames
from tests.privileged.topology import Host, TapForward, blast, iperf3, underlay

VNI = 42


def final_stats(tf):
    """SIGTERM the forwarder and return its last stats line per endpoint."""
    status, _ = tf.terminate(timeout=2)
    assert status == 0
    return {e["endpoint"]: e for e in tf.events() if e["event"] == "stats"}


def ping(ns, ip, count=5):
    return ns.exec("ping", "-c", str(count), "-i", "0.1", "-W", "2", ip, check=False, timeout=30)


def test_interop_with_the_kernel_vxlan(kernel_vtep):
    """A kernel vxlan device and a TAP bridged by tap-forward: ping both ways with
    0% loss, and a TCP transfer from the kernel's side."""
    k, b, tf, endpoint, _ = kernel_vtep
    there = ping(k, b.ip)
    back = ping(b.ns, "198.18.3.1")
    assert " 0% packet loss" in there.stdout, there.stdout
    assert " 0% packet loss" in back.stdout, back.stdout
    client = Host(k, 0)
    client.ip = "198.18.3.1"
    tcp = iperf3(client, b)
    assert tcp["end"]["sum_received"]["bytes"] > 1_000_000
    stats = final_stats(tf)[endpoint]
    assert stats["rx_packets"] >= 10 and stats["tx_packets"] >= 10
    assert stats["drops"] == {}


GARBAGE = textwrap.dedent(
    """
    import os, random, socket, struct, sys, time
    kind, src, dst, vni = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    frame = b"\\xff" * 6 + b"\\x02" * 6 + b"\\x08\\x06" + bytes(28)
    for i in range(10000):
        if kind == "random":  # never valid: either short or without the I flag
            d = bytearray(os.urandom(random.randrange(0, 120)))
            if d:
                d[0] &= 0xF7
        else:  # well-formed; "wrong_vni" carries another VNI, "stranger" ours
            v = vni + 1 if kind == "wrong_vni" else vni
            d = bytes([8, 0, 0, 0]) + struct.pack("!I", v << 8) + frame
        s.sendto(bytes(d), (dst, 4789))
        if i % 100 == 99:
            time.sleep(0.002)  # paced: the point is counting, not overflowing buffers
    """
)


def test_garbage_is_counted_and_never_forwarded_while_ping_runs(kernel_vtep):
    """10,000 random datagrams and 10,000 wrong-VNI ones from the listed remote, and 10,000
    well-formed ones from an unlisted sender, while a ping runs: the ping keeps 0% loss,
    each garbage datagram is counted by reason, none is forwarded."""
    k, b, tf, endpoint, uk = kernel_vtep
    k.ip("addr", "add", "198.18.2.9/24", "dev", uk)  # an unlisted sender
    pinger = k.popen(
        "ping", "-c", "40", "-i", "0.05", "-W", "2", b.ip, stdout=subprocess.PIPE, text=True
    )
    senders = [
        k.popen(sys.executable, "-c", GARBAGE, kind, src, "198.18.2.2", str(VNI))
        for kind, src in (
            ("random", "198.18.2.1"),
            ("wrong_vni", "198.18.2.1"),
            ("stranger", "198.18.2.9"),
        )
    ]
    for s in senders:
        assert s.wait(timeout=60) == 0
    out, _ = pinger.communicate(timeout=60)
    assert " 0% packet loss" in out, out
    stats = final_stats(tf)
    drops = stats[endpoint]["drops"]
    assert drops.get("rx_short", 0) + drops.get("rx_no_i_flag", 0) == 10000, drops
    assert drops["rx_wrong_vni"] == 10000
    assert drops["rx_unknown_sender"] == 10000
    assert stats[endpoint]["rx_errors"] == 30000
    # What came out of the tunnel is the ping's traffic (40 echo requests, a few ARPs).
    assert stats[endpoint]["rx_packets"] < 100
    assert stats[b.tap]["tx_packets"] == stats[endpoint]["rx_packets"]


def test_two_sites_joined_by_vxlan(make_netns, forwarder_in):
    """Two tap-forward processes joined by vxlan://, each with a TAP in its own namespace:
    ping and an iperf3 TCP transfer work."""
    s1, s2 = make_netns(), make_netns()
    underlay(s1, s2, "198.18.4.1", "198.18.4.2")
    h1, h2 = Host(make_netns(), 0), Host(make_netns(), 1)
    h1.ip, h2.ip = "198.18.5.1", "198.18.5.2"
    forwarder_in(s1, "--stats", "0", "--mtu", "1450", h1.endpoint,
                 "vxlan://198.18.4.2?vni=7&local=198.18.4.1:4789")  # fmt: skip
    forwarder_in(s2, "--stats", "0", "--mtu", "1450", h2.endpoint,
                 "vxlan://198.18.4.1?vni=7&local=198.18.4.2:4789")  # fmt: skip
    for h in (h1, h2):
        h.ns.ip("addr", "add", f"{h.ip}/24", "dev", h.tap)
    result = ping(h1.ns, h2.ip)
    assert " 0% packet loss" in result.stdout, result.stdout
    tcp = iperf3(h1, h2)
    assert tcp["end"]["sum_received"]["bytes"] > 1_000_000
    rate = tcp["end"]["sum_received"]["bits_per_second"] / 1e9
    print(f"\niperf3 across two sites: {rate:.2f} Gbit/s")


def test_raw_udp_matches_qemus_one_frame_per_datagram(netns, tmp_path):
    """udp://: a socket peer (as QEMU's -netdev dgram) exchanges bare frames with a TAP:
    its ARP request datagram reaches the kernel, whose reply comes back as one datagram."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    local.bind(("127.0.0.1", 0))
    local_port = local.getsockname()[1]
    local.close()
    host = Host(netns, 0)
    endpoint = f"udp://127.0.0.1:{peer.getsockname()[1]}?local=127.0.0.1:{local_port}"
    tf = TapForward("--stats", "0", host.endpoint, endpoint, tmp_path=tmp_path)
    try:
        tf.wait_for("forwarding")
        netns.ip("addr", "add", "198.18.6.1/24", "dev", host.tap)
        mac = frames.mac("02:00:5e:00:00:66")
        request = frames.arp(1, mac, "198.18.6.2", "198.18.6.1")
        reply = None
        for _ in range(20):  # the TAP's link may need a moment after the address
            peer.sendto(request, ("127.0.0.1", local_port))
            data, sender = peer.recvfrom(70000)
            arp = frames.parse_arp(data)
            if arp and arp["op"] == 2:
                reply = arp
                break
        assert sender == ("127.0.0.1", local_port)
        assert reply is not None and reply["eth_dst"] == mac and reply["spa"] == "198.18.6.1"
        assert len(data) == 42  # one bare frame: no header, nothing merged
        stats = final_stats(tf)[endpoint]
        assert stats["rx_packets"] >= 1 and stats["drops"] == {}
    finally:
        tf.stop()
        peer.close()


RECEIVER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], 4789))
    s.settimeout(10)
    print("listening", flush=True)
    while True:
        try:
            print(len(s.recv(65536)), flush=True)
        except socket.timeout:
            break
    """
)


def test_a_frame_just_over_the_path_mtu_is_counted_too_big_never_fragmented(
    make_netns, forwarder_in
):
    """An underlay of MTU 1000: a frame whose VXLAN datagram just fits (964 bytes: 964
    + 8 + 8 + 20 = 1000) crosses whole; one a byte larger is refused by the kernel
    (path-MTU discovery "do") and counted as tx_too_big: nothing of it, not even a
    fragment, reaches the other side."""
    f, r, b_ns = make_netns(), make_netns(), make_netns()
    uf, ur = underlay(f, r, "198.18.2.2", "198.18.2.1")
    f.ip("link", "set", uf, "mtu", "1000")
    r.ip("link", "set", ur, "mtu", "1000")
    assert ping(f, "198.18.2.1", count=1).returncode == 0  # ARP done before counting
    b = Host(b_ns, 1)
    endpoint = "vxlan://198.18.2.1?vni=42&local=198.18.2.2:4789"
    tf = forwarder_in(f, "--stats", "0", endpoint, b.endpoint)
    receiver = r.popen(
        sys.executable, "-c", RECEIVER, "198.18.2.1", stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout.readline() == "listening\n"
        before = r.link(ur)["stats64"]["rx"]["packets"]
        for size in (965, 964):  # the one that cannot fit first, then the one that can
            sent = blast(b_ns, b.tap, 1, "--size", str(size))
            assert sent["sent"] == 1
        assert receiver.stdout.readline() == f"{8 + 964}\n"  # the fitting one, whole
        arrived = r.link(ur)["stats64"]["rx"]["packets"] - before
    finally:
        receiver.kill()
        receiver.wait()
    stats = final_stats(tf)[endpoint]
    assert stats["drops"] == {"tx_too_big": 1}
    assert (stats["tx_packets"], stats["tx_errors"]) == (1, 1)
    assert arrived == 1  # one packet on the wire: the 964-byte frame, no fragment

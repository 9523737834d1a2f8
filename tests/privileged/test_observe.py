"""Seeing what flows: pcap files read by tcpdump and tshark, a live pcap stream,
and Prometheus metrics over HTTP."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import gevent

import greentap
from greentap.app.forwarder import Forwarder
from greentap.app.metrics import make_registry
from greentap.core import pcap, vxlan
from greentap.core.ratelimit import TokenBucket
from greentap.ports.base import FramePort
from greentap.ports.pcap import PcapPort
from greentap.ports.tap import TapPort
from greentap.ports.tunnel import VxlanPort
from tests.conftest import settle as shared_settle
from tests.privileged.conftest import python_env, unique
from tests.privileged.topology import SCRIPT, TapForward, hosts

PINGS = 10


def ping(a, b, count=PINGS):
    out = a.ping(b, count=count, interval="0.05")
    assert " 0% packet loss" in out.stdout, out.stdout
    return out


def test_pcap_file_is_read_by_tcpdump_and_tshark(make_netns, tmp_path):
    """N pings through `tap-forward --offload auto A B pcap:FILE`: tcpdump counts
    exactly 2N ICMP frames (each request and reply, read once), tshark agrees, and
    every timestamp is the time the frame was read: inside the ping's window, never
    going back (not the time it was written, at exit)."""
    a, b = hosts(make_netns, 2)
    path = tmp_path / "switch.pcap"
    # With offloads on, the mirror must get frames without the virtio-net header.
    tf = TapForward("--stats", "0", "--offload", "auto", a.endpoint, b.endpoint,
                    f"pcap:{path}", tmp_path=tmp_path)  # fmt: skip
    try:
        tf.wait_for("forwarding")
        a.configure()
        b.configure()
        before = time.time_ns() // 1000
        ping(a, b)
        after = time.time_ns() // 1000
        assert tf.terminate(timeout=5)[0] == 0  # flushes the capture
    finally:
        tf.stop()
    dump = subprocess.run(
        ["tcpdump", "-n", "-r", str(path), "icmp"], capture_output=True, text=True, check=True
    )
    icmp = [line for line in dump.stdout.splitlines() if "ICMP echo" in line]
    assert len(icmp) == 2 * PINGS
    shark = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "icmp", "-T", "fields", "-e", "frame.number"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert len(shark.stdout.split()) == len(icmp)
    _, records = pcap.parse(path.read_bytes())
    stamps = [ts for ts, _, frame in records if frame[12:14] == b"\x08\x00"]  # IPv4
    assert len(stamps) == 2 * PINGS
    assert stamps == sorted(stamps) and before <= stamps[0] and stamps[-1] <= after


def test_pcap_stream_feeds_tcpdump_live_and_its_exit_does_not_stop_forwarding(make_netns, tmp_path):
    """`tap-forward A B pcap:- | tcpdump -r -` shows frames while running; when tcpdump
    exits, the capture ends cleanly and forwarding goes on."""
    a, b = hosts(make_netns, 2)
    log = open(tmp_path / "tf.log", "w")  # noqa: SIM115 - closed below
    tf = subprocess.Popen(
        [sys.executable, SCRIPT, "--stats", "0", "--log-format", "json",
         a.endpoint, b.endpoint, "pcap:-"],
        stdout=subprocess.PIPE, stderr=log, env=python_env(),
    )  # fmt: skip
    dump = subprocess.Popen(
        ["tcpdump", "-n", "-l", "-r", "-", "icmp"],
        stdin=tf.stdout, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    tf.stdout.close()  # tcpdump holds the read end now
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["ip", "-n", b.ns.name, "link", "show", b.tap],
                             capture_output=True).returncode != 0:  # fmt: skip
            assert time.monotonic() < deadline, "tap-forward did not start"
            time.sleep(0.05)
        a.configure()
        b.configure()
        ping(a, b, count=3)
        line = dump.stdout.readline()  # arrives while tap-forward still runs
        assert "ICMP echo" in line, line
        assert tf.poll() is None
        dump.send_signal(signal.SIGTERM)
        dump.wait(timeout=5)
        ping(a, b, count=5)  # the capture's reader is gone: forwarding is not
        time.sleep(0.5)
        assert tf.poll() is None
        tf.send_signal(signal.SIGTERM)
        assert tf.wait(timeout=5) == 0
    finally:
        for proc in (dump, tf):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.close()
    events = [json.loads(x) for x in (tmp_path / "tf.log").read_text().splitlines()]
    ended = [e for e in events if e["event"] == "capture_ended"]
    assert len(ended) == 1 and "closed the pipe" in ended[0]["reason"]


HTTP_GET = textwrap.dedent(
    """
    import sys, urllib.request
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
            print(r.status); print(r.read().decode())
    except OSError as exc:
        print("unreachable", exc)
    """
)


def get(ns, url):
    out = ns.exec(sys.executable, "-c", HTTP_GET, url, timeout=30).stdout
    status, _, body = out.partition("\n")
    return status, body


def metric(body, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", body, re.M)
    assert m, f"{name}{{{want}}} missing"
    return float(m.group(1))


def test_metrics_match_the_traffic_and_stay_on_loopback(make_netns, tmp_path):
    """GET /metrics returns counters matching a ping; the default address is loopback
    only, so a host on another network cannot reach it unless asked for."""
    a, b = hosts(make_netns, 2)
    f, c = make_netns(), make_netns()
    uf, uc = "gtmf", "gtmc"
    f.ip("link", "add", uf, "type", "veth", "peer", "name", uc, "netns", c.name)
    f.ip("addr", "add", "198.18.8.1/24", "dev", uf)
    c.ip("addr", "add", "198.18.8.2/24", "dev", uc)
    f.ip("link", "set", uf, "up")
    c.ip("link", "set", uc, "up")
    tf = TapForward("--stats", "0", "--metrics", "9100", a.endpoint, b.endpoint,
                    tmp_path=tmp_path, netns=f.name)  # fmt: skip
    wide = None
    try:
        url = tf.wait_for("metrics_listening")["url"]
        assert url == "http://127.0.0.1:9100/metrics"
        a.configure()
        b.configure()
        a.knows(b)  # no ARP: the frames are the echo requests and replies, exactly
        b.knows(a)
        ping(a, b)
        status, body = get(f, url)
        assert status == "200"
        assert metric(body, "greentap_rx_packets_total", endpoint=a.tap, kind="tap") == PINGS
        assert metric(body, "greentap_tx_packets_total", endpoint=b.tap, kind="tap") == PINGS
        assert metric(body, "greentap_tx_packets_total", endpoint=a.tap, kind="tap") == PINGS
        assert metric(body, "greentap_tx_dropped_total", endpoint=b.tap, kind="tap",
                      reason="backpressure") == 0  # fmt: skip
        assert metric(body, "greentap_endpoint_up", endpoint=a.tap, kind="tap") == 1
        assert "process_resident_memory_bytes" in body
        status, _ = get(c, "http://198.18.8.1:9100/metrics")
        assert status.startswith("unreachable")
        wide = TapForward("--stats", "0", "--metrics", "198.18.8.1:9101",
                          f"tap:{a.tap}x?netns={a.ns.name}", f"tap:{b.tap}x?netns={b.ns.name}",
                          tmp_path=tmp_path, netns=f.name)  # fmt: skip
        wide.wait_for("metrics_listening")
        status, body = get(c, "http://198.18.8.1:9101/metrics")
        assert status == "200" and "greentap_rx_packets_total" in body
    finally:
        tf.stop()
        if wide is not None:
            wide.stop()


def test_rotated_captures_are_each_valid_and_bounded(make_netns, tmp_path):
    """'pcap:FILE?rotate=16k&keep=3' under traffic: at most 3 files, none over 16 KiB,
    each read by tcpdump without error."""
    a, b = hosts(make_netns, 2)
    path = tmp_path / "rot.pcap"
    tf = TapForward("--stats", "0", a.endpoint, b.endpoint, f"pcap:{path}?rotate=16k&keep=3",
                    tmp_path=tmp_path)  # fmt: skip
    try:
        tf.wait_for("forwarding")
        a.configure()
        b.configure()
        out = a.ns.exec("ping", "-c", "60", "-i", "0.01", "-s", "1000", "-W", "2", b.ip,
                        check=False, timeout=30)  # fmt: skip
        assert " 0% packet loss" in out.stdout, out.stdout
        assert tf.terminate(timeout=5)[0] == 0
    finally:
        tf.stop()
    files = sorted(p for p in tmp_path.iterdir() if p.name.startswith("rot.pcap"))
    assert [p.name for p in files] == ["rot.pcap", "rot.pcap.1", "rot.pcap.2"]
    for p in files:
        assert p.stat().st_size <= 16 * 1024
        dump = subprocess.run(["tcpdump", "-n", "-r", str(p)], capture_output=True, text=True)
        assert dump.returncode == 0, dump.stderr
        assert "ICMP echo" in dump.stdout


def test_every_drop_reason_and_mac_table_figure_shows_in_the_metrics(netns, tmp_path):
    """One switch where each thing the metrics promise happens for real, then one
    scrape: rx drops by reason (wrong_vni, unknown_sender, rate_limited), tx drops by
    reason (backpressure, link_down, error, too_big, backlog), a failed endpoint at
    0, and the MAC table's gauges and totals (entries, bound, learned, moved,
    refused, expired, flooded), each non-zero where the README says it counts."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(4)]
    src, pol, full, dead = (
        FramePort(greentap.Tap._adopt(ours.detach(), name).polled())
        for (ours, _), name in zip(pairs, ("src", "pol", "full", "dead"), strict=True)
    )
    peers = {name: peer for (_, peer), name in zip(pairs, ("src", "pol", "full", "dead"),
                                                   strict=True)}  # fmt: skip
    pol.policer = TokenBucket(10, 1)
    tap = TapPort(unique(), netns=netns.name)
    remote, stranger = udp_socket("127.0.0.2"), udp_socket("127.0.0.9")
    vx = VxlanPort("vx", [remote.getsockname()], 42, ("127.0.0.1", 0))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    idle_reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    capture = PcapPort(str(fifo), backlog_limit=4096)
    fwd = Forwarder([src, pol, full, dead, tap, vx, capture], aging=0.3, max_entries=3,
                    monitor_interval=0, keep_warm=0)  # fmt: skip
    peers["full"].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # never read
    fwd.start()
    try:
        m1, m2, m3, m4 = (bytes.fromhex(f"02000000000{i}") for i in range(1, 5))
        send(peers["src"], eth(BCAST, m1))  # learned: m1 on src
        send(peers["pol"], eth(BCAST, m2))  # learned: m2 on pol (the bucket's one token)
        for _ in range(20):
            send(peers["pol"], eth(BCAST, m2))  # beyond the rate: rate_limited
        remote.sendto(vxlan.encode(42, eth(BCAST, m3)), vx.local)  # learned: m3 on vx
        remote.sendto(vxlan.encode(43, eth(BCAST, m3)), vx.local)  # wrong_vni
        stranger.sendto(vxlan.encode(42, eth(BCAST, m3)), vx.local)  # unknown_sender
        settle(lambda: vx.counters.rx_errors == 2)
        send(peers["dead"], eth(BCAST, m4))  # the table is full: m4 refused
        settle(lambda: fwd.switch.table.refused == 1)
        peers["dead"].shutdown(socket.SHUT_RD)  # writes to `dead` now fail: EPIPE
        netns.ip("link", "set", tap.name, "down")  # later frames for the TAP: link_down
        for _ in range(300):  # fill `full` (backpressure) and the capture's backlog
            send(peers["src"], eth(BCAST, m1, size=1000))
        assert 3 in fwd.failed  # the first write to `dead` failed it, counted as error
        send(peers["src"], eth(BCAST, m1, size=65520))  # too big for one UDP datagram
        send(peers["pol"], eth(BCAST, m1))  # m1 moves to pol (the bucket refilled)
        settle(lambda: fwd.switch.table.moved == 1, timeout=5)
        gevent.sleep(0.4)  # past the aging time: m2 and m3 are stale
        send(peers["pol"], eth(m3, m1))  # a lookup of a stale entry (m3): expired
        settle(lambda: fwd.switch.table.expired >= 1)
        registry = make_registry(fwd)

        def value(name, **labels):
            return registry.get_sample_value(name, labels) or 0

        rx = "greentap_rx_dropped_total"
        assert value(rx, endpoint="vx", kind="vxlan", reason="wrong_vni") == 1
        assert value(rx, endpoint="vx", kind="vxlan", reason="unknown_sender") == 1
        assert value(rx, endpoint="pol", kind="tap", reason="rate_limited") >= 20
        tx = "greentap_tx_dropped_total"
        assert value(tx, endpoint="full", kind="tap", reason="backpressure") > 0
        assert value(tx, endpoint=tap.name, kind="tap", reason="link_down") > 0
        assert value(tx, endpoint="dead", kind="tap", reason="error") == 1
        assert value(tx, endpoint="vx", kind="vxlan", reason="too_big") == 1
        assert value(tx, endpoint=f"pcap:{fifo}", kind="pcap", reason="backlog") > 0
        assert value("greentap_endpoint_up", endpoint="dead", kind="tap") == 0
        assert value("greentap_endpoint_up", endpoint="src", kind="tap") == 1
        assert value("greentap_mac_table_max_entries") == 3
        assert 1 <= value("greentap_mac_table_entries") <= 3
        assert value("greentap_mac_table_learned_total") == 3
        assert value("greentap_mac_table_refused_total") == 1
        assert value("greentap_mac_table_moved_total") == 1
        assert value("greentap_mac_table_expired_total") >= 1
        assert value("greentap_frames_flooded_total") > 0
    finally:
        fwd.stop()
        os.close(idle_reader)
        for sock in (*peers.values(), remote, stranger):
            sock.close()


BCAST = b"\xff" * 6


def eth(dst, src, size=60):
    return dst + src + b"\x88\xb5" + bytes(size - 14)


def send(sock, frame):
    sock.send(frame)
    gevent.sleep(0.001)  # let the switch take it before the next: order matters here


def settle(predicate, timeout=3):
    """As tests.conftest.settle, 3 s by default, looking every 5 ms."""
    shared_settle(predicate, timeout, interval=0.005)


def udp_socket(host):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock

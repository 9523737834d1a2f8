"""Faults a long-running tap-forward meets, each with the real kernel in
throw-away namespaces: links taken down, interfaces deleted, re-created and
moved, an unreachable VXLAN peer, a full disk under a capture, a log pipe
whose reader left, and SIGHUP."""

import os
import signal
import subprocess
import sys

import gevent
import pytest
import structlog
import structlog.testing

from greentap.app.forwarder import Forwarder
from greentap.ports.tap import TapPort
from tests.privileged.conftest import python_env, sh, unique
from tests.privileged.topology import SCRIPT, Host, hosts, underlay, wait_until

# Every test here runs over each relay loop, C and pure Python (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("relay_loop")


def ok(ping):
    return ping.returncode == 0 and " 0% packet loss" in ping.stdout


def test_link_down_and_up_are_each_logged_once(make_netns, forwarders):
    """Taking B's TAP down logs link_down once (not per frame; frames for it are
    counted in tx_link_down); bringing it up logs link_up once and traffic resumes."""
    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0", a.endpoint, b.endpoint)
    tf.wait_for("forwarding")
    a.configure()
    b.configure()
    assert ok(a.ping(b, count=2))
    b.ns.ip("link", "set", b.tap, "down")
    tf.wait_for("link_down", endpoint=b.tap)
    assert a.ping(b, count=5, interval="0.1").returncode != 0  # frames dropped, not crashed
    b.ns.ip("link", "set", b.tap, "up")
    tf.wait_for("link_up", endpoint=b.tap)
    assert ok(a.ping(b, count=3))
    assert tf.count("link_down") == 1 and tf.count("link_up") == 1
    stats = tf.final_stats()
    assert stats[b.tap]["tx_link_down"] >= 5  # the ARP requests and pings while down


def test_a_deleted_persistent_tap_is_reattached_when_it_comes_back(make_netns, forwarders):
    """Delete a persistent TAP under tap-forward: endpoint_failed (waiting for it),
    and each frame for it meanwhile counted in its tx_errors; re-create it:
    endpoint_recovered, configured as at start (up, --mtu, offloads) and ping works;
    on exit it is left as it was found (kept, down, its own MTU)."""
    a, b = hosts(make_netns, 2)
    b.ns.ip("tuntap", "add", "dev", b.tap, "mode", "tap")
    tf = forwarders("--stats", "0", "--mtu", "1400", a.endpoint, b.endpoint)
    tf.wait_for("forwarding")
    a.configure()
    b.configure()
    a.knows(b)  # permanent neighbours, no ARP: every frame below is counted exactly
    b.knows(a)
    assert ok(a.ping(b, count=2))
    assert offloads(b) == {"tcp-segmentation-offload": "on", "tx-checksumming": "on"}
    b.ns.ip("link", "del", b.tap)
    failed = tf.wait_for("endpoint_failed", endpoint=b.tap)
    assert failed["waiting_for_it"] is True
    assert a.ping(b, count=2, interval="0.1").returncode != 0
    assert b.ns.link(b.tap) is None  # tap-forward never creates it behind our back
    b.ns.ip("tuntap", "add", "dev", b.tap, "mode", "tap")
    tf.wait_for("endpoint_recovered", endpoint=b.tap)
    link = b.ns.link(b.tap)
    assert "UP" in link["flags"] and link["mtu"] == 1400
    assert offloads(b) == {"tcp-segmentation-offload": "on", "tx-checksumming": "on"}
    b.configure()  # a new device: its address went with the old one
    a.knows(b)  # and it has a new MAC address
    b.knows(a)
    assert ok(a.ping(b, count=3))
    assert tf.count("endpoint_failed") == 1 and tf.count("endpoint_recovered") == 1
    stats = tf.final_stats()
    assert stats[b.tap]["tx_errors"] == 2  # the two frames for it while it was gone
    assert stats[b.tap]["tx_packets"] == 2 + 3  # the pings before and after
    kept = b.ns.link(b.tap)
    assert kept is not None and "UP" not in kept["flags"] and kept["mtu"] == 1500


def offloads(host):
    """The TAP's checksum and segmentation offloads, as `ethtool -k` shows them."""
    out = host.ns.exec("ethtool", "-k", host.tap).stdout
    wanted = ("tcp-segmentation-offload", "tx-checksumming")
    return {
        key: value.split()[0]
        for key, _, value in (line.strip().partition(": ") for line in out.splitlines())
        if key in wanted
    }


def test_a_deleted_tap_it_created_is_not_recreated(make_netns, forwarders):
    """A TAP tap-forward created and someone deleted stays failed: the process
    keeps running and never creates a device of that name by itself."""
    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0", a.endpoint, b.endpoint)
    tf.wait_for("forwarding")
    b.ns.ip("link", "del", b.tap)
    tf.wait_for("endpoint_failed", endpoint=b.tap)
    # SIGHUP looks at every endpoint at once: a buggy re-attach would create it.
    tf.proc.send_signal(signal.SIGHUP)
    reopened = tf.wait_for("reopened")
    assert reopened["failed"] == [b.tap]
    assert b.ns.link(b.tap) is None
    assert tf.proc.poll() is None
    assert tf.count("endpoint_recovered") == 0
    tf.final_stats()


def test_a_tap_moved_to_another_namespace_keeps_forwarding_there(make_netns, forwarders):
    """Move B's TAP into namespace C: endpoint_moved is logged once; the fd follows
    the device, so once configured and up in C, A reaches it through tap-forward."""
    a, b = hosts(make_netns, 2)
    c = make_netns()
    tf = forwarders("--stats", "0", a.endpoint, b.endpoint)
    tf.wait_for("forwarding")
    a.configure()
    b.ns.ip("link", "set", b.tap, "netns", c.name)
    tf.wait_for("endpoint_moved", endpoint=b.tap)
    c.ip("addr", "add", f"{b.ip}/24", "dev", b.tap)
    c.ip("link", "set", b.tap, "up")
    ping = a.ns.exec("ping", "-c", "3", "-i", "0.2", "-W", "2", b.ip, check=False, timeout=30)
    assert ok(ping), ping.stdout
    assert tf.count("endpoint_moved") == 1 and tf.count("endpoint_failed") == 0
    stats = tf.final_stats()
    assert stats[b.tap]["tx_packets"] >= 3 and stats[b.tap]["rx_packets"] >= 3
    assert c.link(b.tap) is None  # it was created by tap-forward: gone with its fd


def test_an_unreachable_vxlan_peer_is_logged_once_and_heals(make_netns, forwarders):
    """The underlay towards the kernel VTEP goes down: sends fail with 'network
    unreachable', counted, logged once as peer_unreachable; when it is back up
    the tunnel carries pings again and peer_reachable is logged."""
    k, f, b_ns = make_netns(), make_netns(), make_netns()
    uk, uf = underlay(k, f, "198.18.2.1", "198.18.2.2")
    k.ip(
        "link", "add", "vx42", "type", "vxlan", "id", "42", "remote", "198.18.2.2",
        "local", "198.18.2.1", "dstport", "4789", "dev", uk,
    )  # fmt: skip
    k.ip("addr", "add", "198.18.3.1/24", "dev", "vx42")
    k.ip("link", "set", "vx42", "up")
    b = Host(b_ns, 1)
    b.ip = "198.18.3.2"
    endpoint = "vxlan://198.18.2.1?vni=42&local=198.18.2.2:4789"
    tf = forwarders("--stats", "0", "--mtu", "1450", endpoint, b.endpoint, netns=f.name)
    tf.wait_for("forwarding")
    b.ns.ip("addr", "add", f"{b.ip}/24", "dev", b.tap)

    def ping():
        return b.ns.exec("ping", "-c", "3", "-i", "0.2", "-W", "1", "198.18.3.1", check=False)

    assert ok(ping())
    f.ip("link", "set", uf, "down")  # the connected route goes with it
    assert ping().returncode != 0
    event = tf.wait_for("peer_unreachable", endpoint=endpoint)
    assert event["remote"] == "198.18.2.1:4789" and "unreachable" in event["error"]
    f.ip("link", "set", uf, "up")
    wait_until(lambda: ok(ping()), timeout=15, what="ping over the healed underlay")
    tf.wait_for("peer_reachable", endpoint=endpoint)
    assert tf.count("peer_unreachable") == 1 and tf.count("peer_reachable") == 1
    stats = tf.final_stats()
    assert stats[endpoint]["drops"]["tx_unreachable"] >= 2


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, unmounted after the test."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "greentap-test", str(mnt))
    yield mnt
    sh("umount", "-l", str(mnt), check=False)


def test_a_full_disk_costs_captured_frames_not_forwarding(make_netns, forwarders, small_disk):
    """The capture's disk fills up: capture_write_failed is logged once, frames for
    it are dropped and counted, forwarding goes on; once there is room again the
    capture resumes (capture_resumed) and the file stays valid for tcpdump."""
    a, b = hosts(make_netns, 2)
    filler = small_disk / "filler"
    filler.write_bytes(bytes(900 * 1024))
    cap = small_disk / "cap.pcap"
    tf = forwarders("--stats", "0", a.endpoint, b.endpoint, f"pcap:{cap}")
    tf.wait_for("forwarding")
    a.configure()
    b.configure()
    load = a.ns.exec(
        "ping", "-f", "-c", "3000", "-s", "1000", "-w", "20", b.ip, check=False, timeout=40
    )  # 6,000 frames of about 1 KiB: several times the room left
    assert " 0% packet loss" in load.stdout, load.stdout  # forwarding is unaffected
    failed = tf.wait_for("capture_write_failed", endpoint=f"pcap:{cap}")
    assert failed["error"] == "ENOSPC"
    filler.unlink()
    assert ok(a.ping(b, count=3))
    tf.wait_for("capture_resumed", endpoint=f"pcap:{cap}")
    assert tf.count("capture_write_failed") == 1
    stats = tf.final_stats()
    assert stats[f"pcap:{cap}"]["drops"]["tx_ENOSPC"] > 0
    read = sh("tcpdump", "-n", "-r", str(cap), check=False)
    assert read.returncode == 0, read.stderr
    assert read.stdout.count("ICMP echo request") >= 3


def test_a_log_pipe_whose_reader_left_does_not_stop_forwarding(make_netns):
    """`tap-forward ... 2>&1 | head -1`: once the log reader exits, forwarding goes
    on, and SIGTERM still ends it with status 0."""
    a, b = hosts(make_netns, 2)
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "--log-format", "json", "--stats", "0.1", a.endpoint, b.endpoint],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=python_env(),
    )
    try:
        assert b'"endpoint_opened"' in proc.stderr.readline()
        proc.stderr.close()  # the reader is gone: the next log lines hit EPIPE
        wait_until(lambda: a.ns.link(a.tap) and b.ns.link(b.tap), what="both TAPs")
        a.configure()
        b.configure()
        assert ok(a.ping(b, count=5))  # stats lines every 0.1 s failed meanwhile
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def echo_requests(path):
    """How many ICMP echo requests tcpdump reads from a capture (which must be valid)."""
    read = sh("tcpdump", "-n", "-r", str(path), check=False)
    assert read.returncode == 0, read.stderr
    return read.stdout.count("ICMP echo request")


@pytest.mark.parametrize("moved", [True, False], ids=["file-moved", "file-in-place"])
def test_sighup_reopens_a_moved_capture_and_keeps_forwarding(
    make_netns, forwarders, tmp_path, moved
):
    """SIGHUP after the capture file was moved away (log rotation): a new file at the
    same path, the old one complete.  SIGHUP with the file in place: the capture
    goes on in it.  Either way ping works throughout and the process lives."""
    a, b = hosts(make_netns, 2)
    cap = tmp_path / "sw.pcap"
    tf = forwarders("--stats", "0", a.endpoint, b.endpoint, f"pcap:{cap}")
    tf.wait_for("forwarding")
    a.configure()
    b.configure()
    assert ok(a.ping(b, count=3))
    old = tmp_path / "sw.pcap.1"
    if moved:
        os.rename(cap, old)
    tf.proc.send_signal(signal.SIGHUP)
    tf.wait_for("reopened")
    wait_until(cap.exists, what="the capture file")
    assert ok(a.ping(b, count=4))
    assert tf.proc.poll() is None
    tf.final_stats()
    if moved:
        assert (echo_requests(old), echo_requests(cap)) == (3, 4)
    else:
        assert echo_requests(cap) == 7 and not old.exists()


def test_sighup_reattaches_a_tap_that_came_back_at_once(netns):
    """reopen() (what SIGHUP does) looks at every endpoint now: a persistent TAP that
    was deleted and is back is re-attached by it, with no monitor running at all."""
    name, other = unique(), unique()
    netns.ip("tuntap", "add", "dev", name, "mode", "tap")
    capture = structlog.testing.LogCapture()
    ports = [TapPort(name, netns=netns.name), TapPort(other, netns=netns.name)]
    fwd = Forwarder(
        ports, monitor_interval=0, keep_warm=0,
        logger=structlog.wrap_logger(None, processors=[capture]),
    )  # fmt: skip
    fwd.start()
    try:
        netns.ip("link", "del", name)
        with gevent.Timeout(5, AssertionError("the deletion was not noticed")):
            while 0 not in fwd.failed:
                gevent.sleep(0.01)
        netns.ip("tuntap", "add", "dev", name, "mode", "tap")
        gevent.sleep(0.2)  # nothing looks meanwhile: the monitor is off
        assert 0 in fwd.failed
        fwd.reopen()
        assert not fwd.failed
        events = [e["event"] for e in capture.entries]
        assert events.index("endpoint_recovered") < events.index("reopened")
        assert "UP" in netns.link(name)["flags"]
    finally:
        fwd.stop()

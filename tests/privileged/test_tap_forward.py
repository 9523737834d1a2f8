"""tap-forward and the Forwarder between real namespaces: wire, switch, signals, failures."""

import re
import signal
import socket
import subprocess
import sys
import time

import gevent
import pytest

import greentap
from greentap.app import exits
from greentap.app.forwarder import Forwarder
from greentap.ports.base import FramePort
from greentap.ports.tap import TapPort
from tests.privileged.conftest import capless_python, python_env, unique
from tests.privileged.topology import SCRIPT, gevent_wait, hosts, iperf3, wait_until

# Every test here runs over each relay loop, C and pure Python (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("relay_loop")


def test_two_namespaces_joined_by_tap_forward(make_netns, forwarders):
    """tap-forward between two namespaces: ping with 0% loss and an iperf3 TCP transfer."""
    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0", a.endpoint, b.endpoint)
    tf.wait_for("forwarding", mode="wire")
    a.configure()
    b.configure()
    ping = a.ping(b, count=5)
    assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, ping.stdout
    result = iperf3(a, b)
    received = result["end"]["sum_received"]["bytes"]
    assert received > 1_000_000
    rate = result["end"]["sum_received"]["bits_per_second"] / 1e9
    print(f"iperf3 through tap-forward: {rate:.2f} Gbit/s")
    status, _ = tf.terminate()
    assert status == 0


def test_two_namespaces_joined_in_process(make_netns):
    """The same through the library API in this process: ping and iperf3 both work."""
    a, b = hosts(make_netns, 2)
    ports = [TapPort(a.tap, netns=a.ns.name), TapPort(b.tap, netns=b.ns.name)]
    with Forwarder(ports) as fwd:
        a.configure()
        b.configure()
        ping = a.ns.popen(
            "ping", "-c", "5", "-i", "0.2", "-W", "2", b.ip, stdout=subprocess.PIPE, text=True
        )
        gevent_wait(ping)
        out = ping.stdout.read()
        assert ping.returncode == 0 and " 0% packet loss" in out, out
        result = iperf3(a, b, wait=gevent_wait)
        assert result["end"]["sum_received"]["bytes"] > 1_000_000
        stats = fwd.stats()["ports"]
        assert stats[0]["rx_packets"] >= 5 and stats[1]["rx_packets"] >= 5
        assert stats[0]["rx_packets"] == stats[1]["tx_packets"] + stats[1]["tx_dropped"]
    assert all(p.polled.closed for p in ports)
    assert a.ns.link(a.tap) is None  # created by the port, gone with it


def capture(host, bpf):
    """Start tcpdump on the host's TAP (kernel side); return the process once it listens."""
    proc = host.ns.popen(
        "tcpdump", "-i", host.tap, "-n", "-l", "-e", bpf,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for _ in range(3):
        line = proc.stderr.readline()
        if "listening on" in line:
            return proc
    raise AssertionError(f"tcpdump did not start: {line}")


def stop_capture(proc):
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    return out


def test_three_port_switch_floods_broadcast_and_learns_unicast(make_netns, forwarders):
    """Broadcast reaches both other hosts; once learned, A<->B unicast is not seen on C."""
    a, b, c = hosts(make_netns, 3)
    tf = forwarders("--stats", "0", a.endpoint, b.endpoint, c.endpoint)
    tf.wait_for("forwarding", mode="switch")
    for h in (a, b, c):
        h.configure()
    on_c = capture(c, "arp or icmp")
    on_b = capture(b, "arp")
    ping = a.ping(b, count=5)
    seen_c, seen_b = stop_capture(on_c), stop_capture(on_b)
    assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, ping.stdout
    who_has = f"Request who-has {b.ip} tell {a.ip}"
    assert who_has in seen_b and who_has in seen_c  # the broadcast was flooded to both
    assert "ICMP" not in seen_c, seen_c  # unicast A<->B never reached C
    assert "Reply" not in seen_c  # nor B's unicast ARP reply


def test_sigterm_exits_zero_and_restores_what_it_found(make_netns, forwarders):
    """SIGTERM: exit 0 within 2 s (a generous bound for the promised prompt stop: it
    takes some 50 ms), final counters logged, created TAP gone, attached persistent
    TAP still there, down again, MTU restored."""
    a, b = hosts(make_netns, 2)
    b.ns.ip("tuntap", "add", "dev", b.tap, "mode", "tap")
    tf = forwarders("--stats", "0", "--mtu", "1400", a.endpoint, b.endpoint)
    tf.wait_for("forwarding")
    assert b.ns.link(b.tap)["mtu"] == 1400 and "UP" in b.ns.link(b.tap)["flags"]
    assert a.ns.link(a.tap)["mtu"] == 1400
    status, took = tf.terminate(timeout=2.0)
    assert status == 0
    assert took < 2.0
    events = tf.events()
    names = [e["event"] for e in events]
    assert "signal_received" in names and names[-1] == "stopped"
    assert {e["endpoint"] for e in events if e["event"] == "stats"} == {a.tap, b.tap}
    assert a.ns.link(a.tap) is None
    persistent = b.ns.link(b.tap)
    assert persistent is not None
    assert "UP" not in persistent["flags"] and persistent["mtu"] == 1500


def test_sigint_also_stops_cleanly(make_netns, forwarders):
    """Ctrl-C (SIGINT) is a graceful stop too, exit 0."""
    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0", a.endpoint, b.endpoint)
    tf.wait_for("forwarding")
    tf.proc.send_signal(signal.SIGINT)
    assert tf.proc.wait(timeout=2) == 0
    assert a.ns.link(a.tap) is None and b.ns.link(b.tap) is None


def test_deleting_a_tap_under_traffic_does_not_crash(make_netns, forwarders):
    """Delete C's TAP while A floods B: the process lives, logs the failure once,
    and A<->B keeps working."""
    a, b, c = hosts(make_netns, 3)
    tf = forwarders("--stats", "0", a.endpoint, b.endpoint, c.endpoint)
    tf.wait_for("forwarding")
    for h in (a, b, c):
        h.configure()
    flood = a.ns.popen(
        "ping", "-f", "-c", "20000", "-w", "20", c.ip, stdout=subprocess.DEVNULL
    )  # traffic through C's port (and broadcasts to all) while it disappears
    try:
        wait_until(lambda: c.tap_counters()["rx"]["packets"] >= 100)  # flowing through C
        c.ns.ip("link", "del", c.tap)
        failed = tf.wait_for("endpoint_failed", endpoint=c.tap)
        assert failed["error_type"] == "EndpointVanished"
        assert tf.proc.poll() is None
    finally:
        flood.kill()
        flood.wait()
    ping = a.ping(b, count=3)
    assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, ping.stdout
    assert [e["event"] for e in tf.events()].count("endpoint_failed") == 1
    status, _ = tf.terminate(timeout=2)
    assert status == 0


def test_wire_survives_losing_one_side(make_netns, forwarders, relay_loop):
    """In a two-port wire (over either relay loop), deleting one TAP is logged; the
    process keeps running, and every frame read for the lost side afterwards is
    counted in its tx_errors, exactly."""
    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0", a.endpoint, b.endpoint)
    tf.wait_for("forwarding", loop=relay_loop)
    a.configure()
    b.configure()
    a.knows(b)  # no ARP: A sends exactly the two echo requests
    b.ns.ip("link", "del", b.tap)
    tf.wait_for("endpoint_failed", endpoint=b.tap)
    a.ping(b, count=2)  # frames now have nowhere to go: counted, no crash
    assert tf.proc.poll() is None
    assert a.tap_counters()["tx"]["packets"] == 2
    stats = tf.final_stats()
    assert stats[a.tap]["rx_packets"] == 2
    assert stats[b.tap]["tx_errors"] == 2 and stats[b.tap]["tx_packets"] == 0


def test_stats_are_logged_periodically(make_netns, forwarders):
    """--stats N logs one counters line per endpoint every N seconds, with the exact
    counts: two pings without ARP are 2 frames each way, of 98 bytes and the 10-byte
    virtio-net header each (offloads are on between TAPs)."""
    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0.2", a.endpoint, b.endpoint)
    tf.wait_for("forwarding")
    a.configure()
    b.configure()
    a.knows(b)
    b.knows(a)
    assert a.ping(b, count=2).returncode == 0
    line = tf.wait_for("stats", endpoint=a.tap, rx_packets=2)
    assert (line["rx_bytes"], line["tx_packets"], line["tx_bytes"]) == (216, 2, 216)
    assert (line["tx_dropped"], line["tx_link_down"], line["tx_errors"]) == (0, 0, 0)
    assert {"rx_pps", "tx_pps", "rx_bps", "tx_bps"} <= line.keys()  # rates after the first
    assert tf.count("stats", endpoint=b.tap) >= 1
    assert tf.terminate(timeout=2)[0] == 0


def test_busy_device_exits_4_with_one_line(netns, open_tap, forwarders):
    """A TAP already held by someone else: one error line, exit status 4."""
    held = open_tap()
    tf = forwarders(f"tap:{held.name}?netns={netns.name}", f"tap:{unique()}?netns={netns.name}")
    assert tf.proc.wait(timeout=20) == exits.EXIT_BUSY
    text = tf.log_path.read_text().strip().splitlines()
    assert len(text) == 1 and "busy" in text[0] and "Traceback" not in text[0]
    assert netns.links() == ["lo", held.name]  # the second TAP was not left behind


def test_not_privileged_exits_3(netns):
    """Without CAP_NET_ADMIN: 'needs CAP_NET_ADMIN' on one line, exit status 3."""
    code = (
        "import sys; from greentap.cli import main; "
        f"sys.exit(main(['--log-format', 'json', {unique()!r}, {unique()!r}]))"
    )
    out = capless_python(netns, code)
    assert out.returncode == exits.EXIT_PERMISSION
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("(needs CAP_NET_ADMIN)"), out.stderr


def namespaces():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def test_demo_runs_and_cleans_up():
    """`tap-forward --demo` pings across with 0% loss, prints counters and leaves nothing behind."""
    out = subprocess.run(
        [sys.executable, SCRIPT, "--demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env=python_env(),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0% packet loss" in out.stdout
    assert re.search(r"gtd\d+a +\d+ +\d+", out.stdout)  # a counters row
    assert "cleaned up" in out.stdout
    assert not [n for n in namespaces() if n.startswith("gtdemo-")]


def test_demo_cleans_up_on_ctrl_c():
    """Ctrl-C during the demo still removes its namespaces and TAPs."""
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "--demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    for line in proc.stdout:
        if line.startswith("$ "):  # namespaces and TAPs exist, the ping is starting
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "cleaned up" in out
    assert not [n for n in namespaces() if n.startswith(f"gtdemo-{proc.pid}-")]


def test_library_raises_what_the_cli_reports(netns, open_tap):
    """The CLI's "busy" is the library's SetTapAttributes, raised by TapPort."""
    held = open_tap()
    with pytest.raises(greentap.SetTapAttributes, match="busy"):
        TapPort(held.name, netns=netns.name)


def test_a_persistent_multi_queue_tap_is_attached_as_it_was_made(make_netns, forwarders):
    """A single-process tap-forward attaches to a persistent multi-queue TAP (one
    queue of it) instead of refusing it, forwards through it, and leaves it there."""
    a, b = hosts(make_netns, 2)
    b.ns.ip("tuntap", "add", "dev", b.tap, "mode", "tap", "multi_queue")
    tf = forwarders("--stats", "0", a.endpoint, b.endpoint)
    tf.wait_for("forwarding", mode="wire")
    a.configure()
    b.configure()
    ping = a.ping(b, count=3)
    assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, ping.stdout
    status, _ = tf.terminate()
    assert status == 0
    info = b.ns.link(b.tap)["linkinfo"]["info_data"]
    assert info["multi_queue"] is True and info["numqueues"] == 0  # kept, our queue closed


def test_a_long_keep_warm_tick_does_not_delay_the_stop(make_netns, forwarders):
    """--keep-warm 1000 (its longest tick) while traffic flows: SIGTERM does not wait
    for the tick, exit 0 within 1 s (generous: it takes some 50 ms; a stop that
    waited for the ticking greenlet took over a second)."""
    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0", "--keep-warm", "1000", a.endpoint, b.endpoint)
    tf.wait_for("forwarding", mode="wire")
    a.configure()
    b.configure()
    assert a.ping(b, count=2).returncode == 0  # frames flowed: the hub is kept warm
    status, took = tf.terminate(timeout=2.0)
    assert status == 0 and took < 1.0


def test_a_runt_into_a_tap_is_refused_counted_and_the_next_frame_passes(netns, relay_loop):
    """A 5-byte message read on one side of a wire is written to a real TAP: the
    kernel refuses it (EINVAL), it counts once in the TAP's tx_errors, the wire goes
    on and the next frame reaches the TAP, over either relay loop."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    left = FramePort(greentap.Tap._adopt(ours.detach(), "sp").polled())
    name = unique()
    right = TapPort(name, netns=netns.name)
    fwd = Forwarder([left, right], monitor_interval=0, keep_warm=0)
    fwd.start()
    try:
        peer.send(b"runt!")
        peer.send(b"\xff" * 6 + b"\x02" * 6 + b"\x88\xb5" + bytes(46))
        with gevent.Timeout(5, AssertionError("the frame after the runt never arrived")):
            while right.counters.tx_packets < 1:
                gevent.sleep(0.01)
        assert (right.counters.tx_errors, right.counters.tx_packets) == (1, 1)
        assert netns.link(name)["stats64"]["rx"]["packets"] == 1  # the kernel took one
        assert fwd.relay_loop()[0] == relay_loop and not fwd.failed
    finally:
        fwd.stop()
        peer.close()


def test_log_level_and_console_format_from_the_command_line(make_netns, forwarders):
    """--log-level warning --log-format console: the link going down is logged as a
    console line (not JSON) at warning level; no info line (forwarding, stats, stopped)
    is written at all."""
    a, b = hosts(make_netns, 2)
    tf = forwarders(
        "--stats", "0.2", "--log-level", "warning", "--log-format", "console",
        a.endpoint, b.endpoint,
    )  # fmt: skip
    wait_until(lambda: a.ns.link(a.tap) and b.ns.link(b.tap), what="both TAPs")
    b.ns.ip("link", "set", b.tap, "down")
    wait_until(lambda: "link_down" in tf.log_path.read_text(), what="a link_down line")
    assert tf.terminate(timeout=2)[0] == 0
    lines = tf.log_path.read_text().splitlines()
    assert lines and not any(line.lstrip().startswith("{") for line in lines)
    assert any("link_down" in line and "warning" in line for line in lines), lines
    assert not any(word in line for line in lines for word in ("forwarding", "stats", "stopped"))


def test_aging_forgets_a_station_so_its_frames_are_flooded_again(make_netns, forwarders):
    """--aging 0.5 in a three-port switch: a station learned is sent to alone while it is
    fresh; after half a second of silence it is forgotten and its frames are flooded to
    the third port again (whose kernel counts them)."""
    a, b, c = hosts(make_netns, 3)
    tf = forwarders("--stats", "0", "--aging", "0.5", a.endpoint, b.endpoint, c.endpoint)
    tf.wait_for("forwarding", mode="switch")
    for h in (a, b, c):
        h.configure()
    a.knows(b)  # no ARP: only the pings below cross
    b.knows(a)

    def seen_by_c():
        return c.tap_counters()["rx"]["packets"]

    assert a.ping(b, count=1).returncode == 0  # the request is flooded (b unknown)
    first = seen_by_c()
    assert first == 1
    assert a.ping(b, count=1).returncode == 0  # b and a are fresh: unicast, c sees nothing
    assert seen_by_c() == first
    time.sleep(0.8)  # let the entries age past --aging (the point of this test)
    assert a.ping(b, count=1).returncode == 0  # b forgotten: flooded to c again
    assert seen_by_c() == first + 1
    tf.final_stats()


@pytest.mark.parametrize("keep_warm", ["2", "0"])
def test_keep_warm_ticks_only_when_asked(make_netns, forwarders, keep_warm):
    """--keep-warm 2: after a frame, the process wakes every 2 ms (hundreds of context
    switches in half a second); --keep-warm 0: it sleeps until the next frame."""
    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0", "--keep-warm", keep_warm, a.endpoint, b.endpoint)
    tf.wait_for("forwarding")
    a.configure()
    b.configure()
    assert a.ping(b, count=1).returncode == 0  # traffic: the hub is kept warm for 5 s

    def switches():
        with open(f"/proc/{tf.proc.pid}/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("voluntary_ctxt_switches"))

    before = switches()
    time.sleep(0.5)  # the window measured (the point of this test)
    woke = switches() - before
    if keep_warm == "2":
        assert woke >= 100, woke  # 250 ticks at 2 ms
    else:
        assert woke <= 20, woke  # the monitor, once a second; nothing else
    assert tf.terminate(timeout=2)[0] == 0

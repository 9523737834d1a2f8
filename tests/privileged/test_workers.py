"""tap-forward --workers: multi-queue TAPs, one forwarder process per queue."""

import json
import os
import signal
import time
import urllib.request

import gevent
import pytest
import structlog
import structlog.testing
from prometheus_client.parser import text_string_to_metric_families

from greentap.app.supervisor import Supervisor
from greentap.core.endpoints import parse_endpoint
from tests.privileged.conftest import python_env, sh
from tests.privileged.topology import hosts, iperf3, wait_until

# Every test here runs over each relay loop, C and pure Python (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("relay_loop")


def ok(ping):
    return ping.returncode == 0 and " 0% packet loss" in ping.stdout


def numqueues(host):
    info = host.ns.link(host.tap)["linkinfo"]["info_data"]
    assert info["multi_queue"] is True
    return info["numqueues"]


def test_two_workers_forward_many_flows_and_survive_one_being_killed(make_netns, forwarders):
    """--workers 2: each TAP has two queues, a worker per queue; eight TCP flows and
    ping cross; both workers carry frames; a worker killed with SIGKILL is started
    again on its queues and traffic goes on; SIGTERM stops all with status 0 and
    the supervisor's final counters add up the workers'."""
    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0", "--workers", "2", a.endpoint, b.endpoint)
    tf.wait_for("forwarding", workers=2)
    first = {
        e["worker"]: e["pid"] for e in [tf.wait_for("worker_started", worker=i) for i in (0, 1)]
    }
    assert numqueues(a) == 2 and numqueues(b) == 2
    a.configure()
    b.configure()
    assert ok(a.ping(b, count=3))
    result = iperf3(a, b, seconds=2, extra=("-P", "8"))
    assert result["end"]["sum_received"]["bytes"] > 1_000_000
    os.kill(first[0], signal.SIGKILL)
    exited = tf.wait_for("worker_exited", worker=0)
    assert exited["status"] == "killed by SIGKILL"
    assert wait_restart(tf)["pid"] != first[0]
    assert ok(a.ping(b, count=3))
    assert iperf3(a, b, seconds=1, extra=("-P", "8"))["end"]["sum_received"]["bytes"] > 0
    handed = a.tap_counters()["tx"]["packets"]  # what A's kernel gave the queues, all told
    stats = tf.final_stats(timeout=8)
    workers = {}
    for e in tf.events():
        if e["event"] == "stats" and "worker" in e:
            workers.setdefault(e["worker"], {})[e["endpoint"]] = e
    assert set(workers) == {0, 1}
    assert all(w[a.tap]["rx_packets"] > 0 for w in workers.values())  # both carried frames
    total = sum(w[a.tap]["rx_packets"] for w in workers.values())
    # The live workers' counts, plus what the killed one had reported before it died
    # (what it read after its last report is lost with it), never more than the kernel
    # handed over.
    assert total <= stats[a.tap]["rx_packets"] <= handed
    assert a.ns.link(a.tap) is None and b.ns.link(b.tap) is None  # created TAPs are gone


def wait_restart(tf):
    """Wait for the second worker_started of worker 0; return it."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        started = [e for e in tf.events() if e["event"] == "worker_started" and e["worker"] == 0]
        if len(started) >= 2:
            return started[-1]
        time.sleep(0.05)
    raise AssertionError("worker 0 was not restarted:\n" + tf.log_path.read_text())


def test_an_unknown_user_is_refused_before_anything_opens(make_netns, forwarders):
    """--workers 2 --user nosuchuser: refused (status 3, one line) before any TAP is
    opened or any worker started."""
    a, b = hosts(make_netns, 2)
    tf = forwarders(
        "--stats", "0", "--workers", "2", "--user", "nosuchuser", a.endpoint, b.endpoint
    )
    assert tf.proc.wait(timeout=30) == 3
    assert "no such user: 'nosuchuser'" in tf.log_path.read_text().strip().splitlines()[-1]
    assert tf.count("endpoint_opened") == 0 and tf.count("worker_started") == 0


def test_workers_that_cannot_start_stop_the_supervisor(make_netns, monkeypatch):
    """Workers that fail closed at start (told to become a user that does not exist)
    exit 3 before forwarding anything; the supervisor does not restart them in a
    loop but returns 3 and removes the TAPs it created."""
    monkeypatch.setenv("PYTHONPATH", python_env()["PYTHONPATH"])
    a, b = hosts(make_netns, 2)
    capture = structlog.testing.LogCapture()
    specs = [parse_endpoint(h.endpoint) for h in (a, b)]
    supervisor = Supervisor(
        specs, 2, worker_config={"user": "nosuchuser", "log_format": "json"},
        logger=structlog.wrap_logger(None, processors=[capture]),
    )  # fmt: skip
    assert numqueues(a) == 2
    with gevent.Timeout(30):
        assert supervisor.serve_forever() == 3
    failed = [e for e in capture.entries if e["event"] == "worker_failed_to_start"]
    assert failed and all(e["status"] == 3 for e in failed)
    started = [e for e in capture.entries if e["event"] == "worker_started"]
    assert len(started) <= 2  # never restarted
    assert a.ns.link(a.tap) is None and b.ns.link(b.tap) is None


def test_a_persistent_tap_without_multi_queue_is_refused_clearly(make_netns, forwarders):
    """A persistent single-queue TAP cannot take --workers: one error line, exit 4."""
    a, b = hosts(make_netns, 2)
    b.ns.ip("tuntap", "add", "dev", b.tap, "mode", "tap")
    tf = forwarders("--workers", "2", a.endpoint, b.endpoint)
    assert tf.proc.wait(timeout=10) == 4
    err = tf.log_path.read_text().strip().splitlines()[-1]
    assert "another type or flags" in err and "multi_queue" in err
    assert json.loads(sh("ip", "-n", b.ns.name, "-j", "link", "show", b.tap).stdout)


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(make_netns, forwarders):
    """SIGKILL the supervisor: its workers notice (their report socket closes) and
    exit within seconds, so the TAPs it created vanish instead of lingering."""
    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0", "--workers", "2", a.endpoint, b.endpoint)
    pids = [tf.wait_for("worker_started", worker=i)["pid"] for i in (0, 1)]
    for i in (0, 1):
        tf.wait_for("forwarding", worker=i)
    tf.proc.kill()
    tf.proc.wait(timeout=5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(running(p) for p in pids):
        time.sleep(0.05)
    assert not any(running(p) for p in pids), "workers outlived the supervisor"
    assert tf.count("supervisor_gone") == 2
    assert a.ns.link(a.tap) is None and b.ns.link(b.tap) is None


def running(pid):
    """True if the process exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except OSError:
        return False


def test_workers_drop_to_the_user_and_the_supervisor_keeps_root(make_netns, forwarders):
    """--workers 2 --user nobody: each worker runs as uid 65534 with no capability
    and still forwards; the supervisor, which reads no frame, stays root."""
    from greentap.app.privileges import read_status

    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0", "--workers", "2", "--user", "nobody", a.endpoint, b.endpoint)
    pids = [tf.wait_for("worker_started", worker=i)["pid"] for i in (0, 1)]
    for i in (0, 1):
        tf.wait_for("privileges_dropped", worker=i)
    for pid in pids:
        status = read_status(f"/proc/{pid}/status")
        assert status["Uid"] == ["65534"] * 4 and int(status["CapEff"][0], 16) == 0
    assert read_status(f"/proc/{tf.proc.pid}/status")["Uid"][0] == "0"
    a.configure()
    b.configure()
    assert ok(a.ping(b, count=3))
    assert iperf3(a, b, seconds=1, extra=("-P", "4"))["end"]["sum_received"]["bytes"] > 0
    tf.final_stats(timeout=8)


def test_a_worker_that_keeps_dying_young_is_restarted_later_each_time(make_netns, forwarders):
    """Kill worker 0 as soon as it is back, twice: the restart delay doubles (0.5 s
    at first, then 1 s, then 2 s: logged as restart_in) while it dies young."""
    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0", "--workers", "2", a.endpoint, b.endpoint)
    pid = tf.wait_for("worker_started", worker=0)["pid"]
    for restart in (1, 2):
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda n=restart: tf.count("worker_started", worker=0) == n + 1,
                   timeout=15, what=f"restart {restart} of worker 0")  # fmt: skip
        pid = [e for e in tf.events() if e.get("event") == "worker_started"
               and e["worker"] == 0][-1]["pid"]  # fmt: skip
    delays = [e["restart_in"] for e in tf.events() if e.get("event") == "worker_exited"]
    assert delays == [1.0, 2.0]
    assert tf.terminate(timeout=8)[0] == 0


def test_sighup_is_passed_on_to_every_worker(make_netns, forwarders):
    """SIGHUP to the supervisor: each worker reopens (logs `reopened` with its number)
    and keeps forwarding; the supervisor itself keeps running."""
    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0", "--workers", "2", a.endpoint, b.endpoint)
    for i in (0, 1):
        tf.wait_for("forwarding", worker=i)
    tf.proc.send_signal(signal.SIGHUP)
    for i in (0, 1):
        tf.wait_for("reopened", worker=i)
    a.configure()
    b.configure()
    assert ok(a.ping(b, count=2))
    assert tf.terminate(timeout=8)[0] == 0


def test_metrics_add_up_the_workers_live(make_netns, forwarders):
    """--metrics with --workers 2: a scrape while running shows the frames every worker
    read, added up, exactly (no ARP: ten echo requests and ten replies)."""
    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0", "--workers", "2", "--metrics", "0", a.endpoint, b.endpoint)
    url = tf.wait_for("metrics_listening")["url"]
    for i in (0, 1):
        tf.wait_for("forwarding", worker=i)
    a.configure()
    b.configure()
    a.knows(b)
    b.knows(a)
    assert ok(a.ping(b, count=10, interval="0.05"))

    def scraped(name, endpoint):
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and s.labels.get("endpoint") == endpoint
        )

    wait_until(lambda: scraped("greentap_rx_packets_total", a.tap) == 10, timeout=5,
               what="the workers' reports adding up to 10")  # fmt: skip
    assert scraped("greentap_tx_packets_total", b.tap) == 10
    assert scraped("greentap_rx_packets_total", b.tap) == 10
    assert tf.terminate(timeout=8)[0] == 0


def test_a_rate_limit_is_shared_among_the_workers(make_netns, forwarders):
    """'tap:A?rate=1000&burst=100' with --workers 2: each worker polices its half
    (rate 500, burst 50), as its endpoint_opened line says."""
    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0", "--workers", "2", f"{a.endpoint}&rate=1000&burst=100",
                    b.endpoint)  # fmt: skip
    for i in (0, 1):
        tf.wait_for("forwarding", worker=i)
    opened = [e for e in tf.events() if e.get("event") == "endpoint_opened" and "worker" in e]
    policed = sorted((e["worker"], e["rate"], e["burst"]) for e in opened if "rate" in e)
    assert policed == [(0, 500.0, 50.0), (1, 500.0, 50.0)]
    assert tf.terminate(timeout=8)[0] == 0


def test_vlan_ports_keep_their_vlans_in_every_worker(make_netns, forwarders):
    """--workers 2 with access ports of VLANs 10, 10 and 20: every worker's queue of each
    TAP is the same access port (its endpoint_opened line says so); hosts of VLAN 10
    ping each other, the host of VLAN 20 reaches neither."""
    a, b, c = hosts(make_netns, 3)
    tf = forwarders("--stats", "0", "--workers", "2", f"{a.endpoint}&vlan=10",
                    f"{b.endpoint}&vlan=10", f"{c.endpoint}&vlan=20")  # fmt: skip
    for i in (0, 1):
        tf.wait_for("forwarding", worker=i)
    opened = [e for e in tf.events() if e.get("event") == "endpoint_opened" and "worker" in e]
    assert sorted(e.get("vlan") for e in opened) == [10, 10, 10, 10, 20, 20]
    for h in (a, b, c):
        h.configure()
    ok = a.ping(b, count=3)
    assert ok.returncode == 0 and " 0% packet loss" in ok.stdout, ok.stdout
    for src, dst in ((a, c), (c, b)):
        out = src.ping(dst, count=2)
        assert out.returncode != 0 and "100% packet loss" in out.stdout
    assert tf.terminate(timeout=8)[0] == 0

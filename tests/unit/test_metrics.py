"""Prometheus metrics and --stats rates, from a real forwarder over socketpairs."""

import socket

import gevent
import prometheus_client
import structlog
import structlog.testing

from greentap.app.forwarder import Forwarder
from greentap.app.metrics import make_registry
from greentap.app.stats import StatsReporter
from greentap.green.polled import Tap
from greentap.ports.base import FramePort

FRAME = b"\xff" * 6 + bytes.fromhex("020000000001") + b"\x08\x00" + bytes(46)


def rig(n):
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(n)]
    ports = [FramePort(Tap._adopt(a.detach(), f"p{i}").polled()) for i, (a, _) in enumerate(pairs)]
    log = structlog.wrap_logger(None, processors=[structlog.testing.LogCapture()])
    return Forwarder(ports, logger=log), [b for _, b in pairs]


def sample(registry, name, **labels):
    return registry.get_sample_value(name, labels)


def test_metrics_follow_the_traffic():
    """rx/tx counters carry endpoint and kind labels and match what was forwarded."""
    fwd, peers = rig(3)
    fwd.start()
    for _ in range(5):
        peers[0].send(FRAME)
    with gevent.Timeout(2):
        while fwd.ports[2].counters.tx_packets < 5:
            gevent.sleep(0.001)
    reg = make_registry(fwd)
    assert sample(reg, "greentap_rx_packets_total", endpoint="p0", kind="tap") == 5
    assert sample(reg, "greentap_tx_packets_total", endpoint="p1", kind="tap") == 5
    assert sample(reg, "greentap_tx_bytes_total", endpoint="p2", kind="tap") == 5 * 60
    assert (
        sample(reg, "greentap_tx_dropped_total", endpoint="p1", kind="tap", reason="backpressure")
        == 0
    )
    assert sample(reg, "greentap_endpoint_up", endpoint="p0", kind="tap") == 1
    assert sample(reg, "greentap_mac_table_entries") == 1
    assert sample(reg, "greentap_frames_flooded_total") == 5
    text = prometheus_client.generate_latest(reg).decode()
    assert 'greentap_rx_packets_total{endpoint="p0",kind="tap"} 5.0' in text
    assert "process_resident_memory_bytes" in text
    fwd.stop()
    for p in peers:
        p.close()


def test_stats_lines_carry_rates():
    """The second and later --stats lines carry packets/s and bits/s since the previous one."""
    fwd, peers = rig(2)
    fwd.start()
    capture = structlog.testing.LogCapture()
    times = iter([100.0, 102.0])
    log = structlog.wrap_logger(None, processors=[capture])
    report = StatsReporter(log, clock=lambda: next(times))
    report(fwd)
    for _ in range(10):
        peers[0].send(FRAME)
    with gevent.Timeout(2):
        while fwd.ports[1].counters.tx_packets < 10:
            gevent.sleep(0.001)
    report(fwd)
    last = [e for e in capture.entries if e["event"] == "stats"][-2]
    assert last["endpoint"] == "p0"
    assert last["rx_pps"] == 5.0 and last["rx_bps"] == 10 * 60 * 8 / 2
    assert "rx_pps" not in capture.entries[0]
    fwd.stop()
    for p in peers:
        p.close()

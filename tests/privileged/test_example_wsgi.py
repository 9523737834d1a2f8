"""examples/wsgi_status.py: a WSGI server in the same hub as a forwarder under full load."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from tests.privileged.conftest import python_env
from tests.privileged.topology import hosts

# Every test here runs over each relay loop, C and pure Python (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("relay_loop")

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "wsgi_status.py")

# Offers UDP frames as fast as one Python process can, bounded in count and time.
BLASTER = textwrap.dedent(
    """
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    deadline = time.monotonic() + float(sys.argv[2])
    payload = b"x" * 18
    for i in range(3_000_000):
        try:
            s.sendto(payload, (sys.argv[1], 9))
        except BlockingIOError:
            pass
        if i % 4096 == 0 and time.monotonic() > deadline:
            break
    """
)


def progressed_in_every_slice(samples, width):
    """``samples`` are (seconds, counter): did the counter grow within every slice of
    ``width`` seconds between the first sample and the last?"""
    end = samples[-1][0]
    t = samples[0][0]
    while t + width <= end:
        inside = [n for when, n in samples if t <= when <= t + width]
        if len(inside) < 2 or inside[-1] <= inside[0]:
            return False
        t += width
    return True


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_wsgi_server_answers_while_forwarding_at_full_load(make_netns):
    """Every GET is answered while frames flow, and frames were forwarded between every
    two answers: neither starves the other.  p50/p99 and the rate are printed (the
    figures belong to benchmarks; the test asserts behaviour)."""
    a, b = hosts(make_netns, 2)
    proc = subprocess.Popen(
        [sys.executable, EXAMPLE, "--listen", "127.0.0.1:0", a.endpoint, b.endpoint],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=python_env(),
    )
    blaster = None
    try:
        url = proc.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:"), url
        a.configure()
        b.configure()
        a.ns.ip("neigh", "add", b.ip, "lladdr", "02:00:5e:00:99:99", "dev", a.tap)

        def get():
            with urllib.request.urlopen(url, timeout=2) as resp:
                assert resp.status == 200
                return json.loads(resp.read())

        before = get()["ports"][0]["rx_packets"]
        blaster = a.ns.popen(sys.executable, "-c", BLASTER, b.ip, "8")
        time.sleep(0.5)  # let the load build up
        latencies, seen = [], []
        start = time.monotonic()
        while time.monotonic() - start < 4 and blaster.poll() is None:
            t0 = time.perf_counter()
            stats = get()
            latencies.append(time.perf_counter() - t0)
            seen.append((time.monotonic() - start, stats["ports"][0]["rx_packets"]))
        elapsed = time.monotonic() - start
        during = stats["ports"][0]["rx_packets"] - before
    finally:
        if blaster is not None:
            blaster.kill()
            blaster.wait()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
    assert proc.returncode == 0
    assert len(latencies) >= 20
    rate = during / elapsed
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(
        f"\nWSGI under forwarding load: {len(latencies)} requests, "
        f"p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, forwarder rx {rate:,.0f} frames/s"
    )
    # Forwarding went on all along, in every half second of the answers: the server
    # did not starve the forwarder, nor the forwarder the server (each GET has a 2 s
    # timeout, and at least 20 were answered).
    assert progressed_in_every_slice(seen, 0.5), seen[:: max(1, len(seen) // 20)]

"""Other people's traffic: a flood of source MACs, a broadcast storm next to a
WSGI server in the same hub, and the per-port rate limit, with real TAPs."""

import json
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.privileged.conftest import python_env
from tests.privileged.test_example_wsgi import EXAMPLE, percentile, progressed_in_every_slice
from tests.privileged.topology import BLAST, blast, hosts, wait_until

UNKNOWN = "02:00:5e:00:99:99"  # a unicast address nobody has: flooded


def scrape(url):
    """Prometheus metrics as {(name, endpoint or None): value}."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "reason" not in sample.labels:
                out[(sample.name, sample.labels.get("endpoint"))] = sample.value
    return out


def wait_for_metric(url, key, value, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = scrape(url).get(key)
        if seen == value:
            return
        time.sleep(0.1)
    raise AssertionError(f"{key} is {seen}, not {value}")


def test_100k_source_macs_leave_the_table_at_its_bound_and_memory_flat(make_netns, forwarders):
    """Two bursts of 100,000 frames, each from a distinct source MAC: every frame read
    is flooded (and every frame sent is read, or dropped by A's kernel queue and
    counted there), the MAC table holds exactly --max-macs entries and refuses the
    rest (counted), and the second burst adds no memory (the first adds little)."""
    a, b, c = hosts(make_netns, 3)
    tf = forwarders(
        "--stats", "0", "--max-macs", "4096", "--metrics", "0", a.endpoint, b.endpoint, c.endpoint
    )
    url = tf.wait_for("metrics_listening")["url"]
    # Room for a whole burst in the TAP's queue, so (nearly) every frame reaches
    # tap-forward; what the kernel still drops, it counts.
    a.ns.ip("link", "set", "dev", a.tap, "txqueuelen", "200000")
    rss = [tf.rss_kib()]
    for burst in range(2):
        sent = blast(a.ns, a.tap, 100_000, "--distinct-sources", "--base", str(burst * 100_000),
                     "--dst", UNKNOWN)  # fmt: skip
        assert sent["sent"] == 100_000
        total = (burst + 1) * 100_000
        wait_until(lambda t=total: handed_or_dropped(a) == t, timeout=30,
                   what="every frame read or dropped by the kernel")  # fmt: skip
        read = a.tap_counters()["tx"]["packets"]
        wait_for_metric(url, ("greentap_rx_packets_total", a.tap), read)
        rss.append(tf.rss_kib())
    assert read > 150_000  # most reached the forwarder: the table is what is tested
    m = scrape(url)
    assert m[("greentap_mac_table_entries", None)] == 4096
    assert m[("greentap_mac_table_learned_total", None)] == 4096
    assert m[("greentap_mac_table_refused_total", None)] == read - 4096
    stats = tf.final_stats()
    for host in (b, c):  # every frame read flooded to both (taken, or dropped and counted)
        s = stats[host.tap]
        assert s["tx_packets"] + s["tx_dropped"] + s["tx_link_down"] == read
    print(f"\nRSS KiB: start {rss[0]}, after 100k MACs {rss[1]}, after 200k MACs {rss[2]}")
    assert rss[2] - rss[1] < 2048, rss  # flat: the table is full and stays so
    assert rss[1] - rss[0] < 16 * 1024, rss  # 4,096 entries, not 100,000


def test_a_broadcast_storm_is_flooded_while_a_wsgi_server_in_the_hub_answers(make_netns):
    """A floods broadcast frames as fast as it can: each is flooded to B and C,
    and the WSGI server in the same hub answers every request meanwhile."""
    a, b, c = hosts(make_netns, 3)
    proc = subprocess.Popen(
        [sys.executable, EXAMPLE, "--listen", "127.0.0.1:0", a.endpoint, b.endpoint, c.endpoint],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=python_env(),
    )
    storm = None
    try:
        url = proc.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:"), url

        def get():
            with urllib.request.urlopen(url, timeout=2) as resp:
                assert resp.status == 200
                return json.loads(resp.read())

        storm = a.ns.popen(
            sys.executable, BLAST, a.tap, "--count", "2000000", "--seconds", "6",
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        latencies, seen = [], []
        start = time.monotonic()
        while storm.poll() is None and time.monotonic() - start < 10:
            t0 = time.perf_counter()
            stats = get()
            latencies.append(time.perf_counter() - t0)
            seen.append((time.monotonic() - start, stats["ports"][0]["rx_packets"]))
        storm.wait(timeout=30)
        elapsed = time.monotonic() - start
        final = get()
    finally:
        if storm is not None and storm.poll() is None:
            storm.kill()
            storm.wait()
        proc.terminate()
        proc.wait(timeout=5)
    assert proc.returncode == 0
    assert len(latencies) >= 20
    ports = {p["endpoint"]: p for p in final["ports"]}
    read = ports[a.tap]["rx_packets"]
    for host in (b, c):
        p = ports[host.tap]
        assert p["tx_packets"] + p["tx_dropped"] + p["tx_link_down"] == read
    rate = read / elapsed
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(
        f"\nbroadcast storm: {rate:,.0f} frames/s read and flooded to 2 ports; WSGI "
        f"{len(latencies)} requests, p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms"
    )
    assert stats["mode"] == "switch"
    # The storm was read and flooded all along, in every half second of the answers
    # (the last slice may reach past the storm's end): neither starved the other.
    during = [(t, n) for t, n in seen if t <= elapsed - 0.5]
    assert progressed_in_every_slice(during, 0.5), during[:: max(1, len(during) // 20)]


def handed_or_dropped(host):
    """Frames A's kernel handed to the forwarder or dropped (its TAP's queue full)."""
    tx = host.tap_counters()["tx"]
    return tx["packets"] + tx["dropped"]


def test_a_rate_limited_port_forwards_at_most_its_rate(make_netns, forwarders):
    """tap:A?rate=2000&burst=100: of 20,000 frames offered at once, what passes is
    bounded by rate x time + burst, the rest is counted as rx_rate_limited, and
    read = forwarded + policed exactly; B, not policed, is untouched.  Every frame
    sent is accounted for: read by the forwarder, or dropped by A's kernel when the
    TAP's queue was full (counted there)."""
    a, b = hosts(make_netns, 2)
    tf = forwarders("--stats", "0", f"{a.endpoint}&rate=2000&burst=100", b.endpoint)
    tf.wait_for("forwarding")
    a.ns.ip("link", "set", "dev", a.tap, "txqueuelen", "50000")
    start = time.monotonic()
    sent = blast(a.ns, a.tap, 20_000, "--dst", UNKNOWN)
    assert sent["sent"] == 20_000

    wait_until(lambda: handed_or_dropped(a) == 20_000, what="every frame read or dropped")
    dropped_by_kernel = a.tap_counters()["tx"]["dropped"]
    stats = tf.final_stats()
    elapsed = time.monotonic() - start
    read = stats[a.tap]["rx_packets"]
    policed = stats[a.tap]["drops"]["rx_rate_limited"]
    forwarded = stats[b.tap]["tx_packets"] + stats[b.tap]["tx_dropped"]
    assert read + dropped_by_kernel == 20_000
    assert read > 10_000  # most reached the forwarder: the policer is what is tested
    assert forwarded + policed == read
    assert 100 <= forwarded <= 2000 * elapsed + 100, (forwarded, elapsed)
    assert policed > 0

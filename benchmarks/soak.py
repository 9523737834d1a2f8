"""Soak test: tap-forward under mixed load for a bounded time, watched every few seconds.

    sudo python3 benchmarks/soak.py [--duration 600] [--interval 10] [--json PATH]

Builds two throw-away namespaces (198.18.0.1 and 198.18.0.2, IPv6 off), joins
them with ``tap-forward`` and runs, for ``--duration`` seconds, a ping every
0.2 s, one iperf3 TCP stream and a burst of 50,000 small frames (unknown
destination, flooded and dropped by the far kernel) every interval.  Every
``--interval`` seconds it records the forwarder's resident memory, open fds
and counters.  Then it stops the loads, stops tap-forward with SIGTERM and
checks:

* the process never died and exited 0 on SIGTERM;
* resident memory did not grow (last sample within 5% of the first sample
  taken under load) and open fds did not change;
* the counters add up, per direction: frames read on one side = frames
  written on the other + drops counted by reason (backpressure, link down,
  errors), exactly;
* the forwarder's counters agree with the kernel's, exactly: what it read
  from each TAP is what that TAP's kernel counted as handed over (``tx``), what
  it wrote is what the kernel took (``rx``); and every frame the burst sender
  says it sent was handed over or dropped by the kernel, counted;
* the TCP stream never stalled (no 1-second iperf3 interval without data);
* the pings lost no more than 1%.

It prints a small report and exits 1 if any check failed.  CI runs it for
60 seconds (``tests/privileged/test_soak.py``); the default is 10 minutes.
Everything it starts is bounded in count and time, and removed at the end.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(ROOT, "scripts", "tap-forward")
BLAST = os.path.join(HERE, "blast.py")
RSS_GROWTH_LIMIT = 0.05
PING_LOSS_LIMIT = 1.0  # percent
BURST = 50_000


def sh(*argv, check=True, timeout=30):
    return subprocess.run(argv, check=check, timeout=timeout, capture_output=True, text=True)


class Namespace:
    def __init__(self, tag):
        self.name = f"soak-{os.getpid()}-{tag}-{uuid.uuid4().hex[:6]}"
        sh("ip", "netns", "add", self.name)
        self.exec("ip", "link", "set", "lo", "up")
        self.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                  "net.ipv6.conf.default.disable_ipv6=1")  # fmt: skip

    def exec(self, *argv, **kw):
        return sh("ip", "netns", "exec", self.name, *argv, **kw)

    def popen(self, *argv, **kw):
        return subprocess.Popen(("ip", "netns", "exec", self.name, *argv), **kw)

    def delete(self):
        sh("ip", "netns", "del", self.name, check=False)


def proc_status(pid):
    """(VmRSS KiB, open fds) of a process."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def scrape(url):
    """{(metric, endpoint): value} of the counters, drops summed over reasons."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "endpoint" in s.labels and s.name.endswith("_total"):
                key = (s.name, s.labels["endpoint"])
                out[key] = out.get(key, 0) + s.value
    return out


def log_events(log_path):
    """The JSON events tap-forward logged so far."""
    with open(log_path) as f:
        for line in f:
            try:
                yield json.loads(line)
            except ValueError:
                continue


def wait_for_event(log_path, event, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in log_events(log_path):
            if entry.get("event") == event:
                return entry
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"tap-forward logged no {event!r}; see {log_path}")


def final_stats(log_path):
    """The last stats line of each endpoint."""
    return {e["endpoint"]: e for e in log_events(log_path) if e.get("event") == "stats"}


def kernel_counters(ns, dev):
    """The kernel's counters of a device: ``tx`` = frames handed to a TAP's reader."""
    out = ns.exec("ip", "-j", "-s", "link", "show", "dev", dev).stdout
    return json.loads(out)[0]["stats64"]


def ping_loss(ping_out):
    """The percentage of pings lost, from ping's summary (None if there is none)."""
    for line in ping_out.splitlines():
        if "packet loss" in line:
            return float(line.split("% packet loss")[0].rsplit(" ", 1)[-1])
    return None


def balance(stats, src, dst):
    """Frames read on src, and where they went on dst (written + each drop reason)."""
    s, d = stats[src], stats[dst]
    policed = s.get("drops", {}).get("rx_rate_limited", 0)
    out = {
        "read": s["rx_packets"],
        "written": d["tx_packets"],
        "tx_dropped": d["tx_dropped"],
        "tx_link_down": d["tx_link_down"],
        "tx_errors": d["tx_errors"],
        "rx_rate_limited": policed,
    }
    out["accounted"] = sum(v for k, v in out.items() if k != "read")
    return out


def run(args):
    a, b = Namespace("a"), Namespace("b")
    tap_a, tap_b = f"sk{uuid.uuid4().hex[:8]}", f"sk{uuid.uuid4().hex[:8]}"
    log_path = args.log or f"/tmp/soak-{os.getpid()}.log"
    procs = []
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        with open(log_path, "w") as log:
            fwd = subprocess.Popen(
                [sys.executable, SCRIPT, "--log-format", "json", "--stats", "0",
                 "--metrics", "127.0.0.1:0", f"tap:{tap_a}?netns={a.name}",
                 f"tap:{tap_b}?netns={b.name}"],
                stdout=subprocess.DEVNULL, stderr=log, env=env,
            )  # fmt: skip
        procs.append(fwd)
        url = wait_for_event(log_path, "metrics_listening", fwd)["url"]
        a.exec("ip", "addr", "add", "198.18.0.1/24", "dev", tap_a)
        b.exec("ip", "addr", "add", "198.18.0.2/24", "dev", tap_b)
        # Permanent neighbours: no ARP, so nothing moves once the loads stop and the
        # forwarder's counters can be held against the kernel's exactly.
        mac_a = json.loads(a.exec("ip", "-j", "link", "show", tap_a).stdout)[0]["address"]
        mac_b = json.loads(b.exec("ip", "-j", "link", "show", tap_b).stdout)[0]["address"]
        a.exec("ip", "neigh", "replace", "198.18.0.2", "lladdr", mac_b, "dev", tap_a,
               "nud", "permanent")  # fmt: skip
        b.exec("ip", "neigh", "replace", "198.18.0.1", "lladdr", mac_a, "dev", tap_b,
               "nud", "permanent")  # fmt: skip
        # Room in the TAP's queue for a whole burst: drops are then ours to count.
        a.exec("ip", "link", "set", "dev", tap_a, "txqueuelen", str(BURST))
        duration = args.duration
        ping = a.popen(
            "ping", "-q", "-i", "0.2", "-W", "2", "-w", str(int(duration)), "198.18.0.2",
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(ping)
        iperf_srv = b.popen(
            "iperf3", "-s", "-1", "--forceflush", "-B", "198.18.0.2",
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(iperf_srv)
        # iperf3's client does not retry: start it once the server says it listens.
        for _ in range(5):
            if "Server listening" in iperf_srv.stdout.readline():
                break
        else:
            raise RuntimeError("the iperf3 server did not start")
        iperf = a.popen(
            "iperf3", "-c", "198.18.0.2", "-t", str(int(duration)), "-J",
            "--connect-timeout", "3000", stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(iperf)
        samples = []
        start = time.monotonic()
        burst_no = 0
        while True:
            elapsed = time.monotonic() - start
            alive = fwd.poll() is None
            sample = {"t": round(elapsed, 1), "alive": alive}
            if alive:
                sample["rss_kib"], sample["fds"] = proc_status(fwd.pid)
                m = scrape(url)
                sample["rx"] = {tap: m.get(("greentap_rx_packets_total", tap), 0)
                                for tap in (tap_a, tap_b)}  # fmt: skip
            samples.append(sample)
            print(json.dumps(sample), flush=True)
            if not alive or elapsed >= duration:
                break
            blast = a.exec(
                sys.executable, BLAST, tap_a, "--count", str(BURST), "--seconds",
                str(args.interval), "--dst", "02:00:5e:00:99:99", "--base", str(burst_no),
                timeout=args.interval + 30,
            )  # fmt: skip
            burst_no += 1
            sample["burst"] = json.loads(blast.stdout)["sent"]
            time.sleep(max(0.0, start + len(samples) * args.interval - time.monotonic()))
        iperf_out, _ = iperf.communicate(timeout=duration + 60)
        ping_out, _ = ping.communicate(timeout=60)
        still_alive = fwd.poll() is None
        kernel, status = {}, None
        if still_alive:
            # The loads are over: wait until the forwarder has read what was handed to it
            # (its metrics catch up with the kernel), then read the kernel's counters;
            # the TAPs go with the process.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                kernel = {tap_a: kernel_counters(a, tap_a), tap_b: kernel_counters(b, tap_b)}
                m = scrape(url)
                if all(m.get(("greentap_rx_packets_total", t)) == kernel[t]["tx"]["packets"]
                       for t in kernel):  # fmt: skip
                    break
                time.sleep(0.1)
            fwd.send_signal(signal.SIGTERM)
            status = fwd.wait(timeout=10)
        sent = sum(s.get("burst", 0) for s in samples)
        code = report(args, samples, still_alive, status, final_stats(log_path),
                      (tap_a, tap_b), iperf_out, ping_out, kernel, sent)  # fmt: skip
        if code == 0 and not args.log:
            os.unlink(log_path)
        else:
            print(f"tap-forward's log: {log_path}")
        return code
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        a.delete()
        b.delete()


def report(args, samples, alive, status, stats, taps, iperf_out, ping_out, kernel, sent):
    tap_a, tap_b = taps
    checks = []

    def check(name, passed, detail):
        checks.append({"check": name, "passed": bool(passed), "detail": detail})

    check("process alive to the end, exit 0 on SIGTERM",
          alive and status == 0 and all(s["alive"] for s in samples),
          f"exit status {status}")  # fmt: skip
    loaded = [s for s in samples[1:] if "rss_kib" in s]
    if len(loaded) >= 2:
        first, last = loaded[0]["rss_kib"], loaded[-1]["rss_kib"]
        growth = (last - first) / first
        peak = max(s["rss_kib"] for s in loaded)
        check("resident memory flat under load", growth <= RSS_GROWTH_LIMIT,
              f"{first} -> {last} KiB ({growth:+.1%}, limit +{RSS_GROWTH_LIMIT:.0%}), "
              f"peak {peak} KiB")  # fmt: skip
        fds = sorted({s["fds"] for s in loaded})
        check("open fds constant", len(fds) == 1, f"fds seen: {fds}")
    else:
        check("enough samples under load", False, f"{len(loaded)} samples")
    for src, dst in ((tap_a, tap_b), (tap_b, tap_a)):
        if src in stats and dst in stats:
            b = balance(stats, src, dst)
            check(f"counters add up {src} -> {dst}", b["read"] == b["accounted"], b)
        else:
            check(f"counters add up {src} -> {dst}", False, "no final stats logged")
    for tap in taps:
        if tap in stats and tap in kernel:
            k, f = kernel[tap], stats[tap]
            pairs = {"read": (f["rx_packets"], k["tx"]["packets"]),
                     "written": (f["tx_packets"], k["rx"]["packets"])}  # fmt: skip
            check(f"{tap}: the forwarder's counters are the kernel's",
                  all(x == y for x, y in pairs.values()),
                  {n: f"forwarder {x}, kernel {y}" for n, (x, y) in pairs.items()})  # fmt: skip
        else:
            check(f"{tap}: the forwarder's counters are the kernel's", False, "no counters")
    if taps[0] in kernel:
        k = kernel[taps[0]]["tx"]
        check("every frame the sender sent was handed over or dropped, counted",
              k["packets"] + k["dropped"] >= sent,
              f"sent {sent} in bursts; the kernel handed over {k['packets']} "
              f"(bursts, pings and TCP) and dropped {k['dropped']}")  # fmt: skip
    loss = ping_loss(ping_out)
    check("pings not lost", loss is not None and loss <= PING_LOSS_LIMIT,
          f"{loss}% lost (limit {PING_LOSS_LIMIT:g}%)")  # fmt: skip
    try:
        intervals = json.loads(iperf_out)["intervals"]
        sums = [i["sum"]["bytes"] for i in intervals]
        total = json.loads(iperf_out)["end"]["sum_received"]
        stalled = [n for n, v in enumerate(sums) if v == 0]
        check("TCP never stalled", sums and not stalled,
              f"{len(sums)} intervals, stalled: {stalled}, "
              f"{total['bits_per_second'] / 1e9:.2f} Gbit/s average")  # fmt: skip
    except (ValueError, KeyError) as exc:
        check("TCP never stalled", False, f"no iperf3 result: {exc}")
    ping_summary = [line for line in ping_out.splitlines() if "packet loss" in line]
    result = {
        "duration": args.duration,
        "interval": args.interval,
        "samples": samples,
        "checks": checks,
        "ping": ping_summary[0] if ping_summary else None,
        "passed": all(c["passed"] for c in checks),
    }
    print(f"\nsoak: {args.duration:g} s, a sample every {args.interval:g} s")
    print(f"{'t (s)':>7} {'RSS KiB':>9} {'fds':>4} {'rx ' + tap_a:>18} {'rx ' + tap_b:>18}")
    for s in samples:
        if "rss_kib" in s:
            rx = s["rx"]
            print(f"{s['t']:>7} {s['rss_kib']:>9} {s['fds']:>4} {rx[tap_a]:>18,.0f} "
                  f"{rx[tap_b]:>18,.0f}")  # fmt: skip
    print(f"ping: {result['ping']}")
    for c in checks:
        print(f"{'PASS' if c['passed'] else 'FAIL'}  {c['check']}: {c['detail']}")
    print("soak:", "passed" if result["passed"] else "FAILED")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if result["passed"] else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds under load (default 600)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--log", metavar="PATH", help="tap-forward's log (default /tmp/soak-PID.log)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.exit(2, "soak.py: needs root (network namespaces and TAPs)\n")
    if args.duration < 2 * args.interval:
        p.exit(2, "soak.py: --duration must be at least two intervals\n")
    # SIGTERM (a timeout, a kill) still removes the namespaces and processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

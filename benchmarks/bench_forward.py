#!/usr/bin/env python3
"""Benchmark tap-forward against socat and a kernel veth pair, in one run.

Builds two throw-away network namespaces A and B (addresses from
198.18.0.0/15) joined, in turn, by:

* ``veth``: a kernel veth pair (the ceiling);
* ``tap-forward``: a TAP in each namespace, forwarded by tap-forward;
* ``socat``: a TAP in each namespace, forwarded by
  ``socat TUN,tun-type=tap TUN,tun-type=tap`` (socat's TUN address, tap type).

For each it measures ping RTT, iperf3 TCP throughput (one stream) and
small-frame packets/s: trafgen in A offers 60-byte UDP frames whose
destination MAC is not B's, and the rate is what arrives on B's interface.
It prints a table with ratios and removes everything it made.

Run as root:  python3 benchmarks/bench_forward.py [--seconds 5]
Needs: iproute2, iputils-ping, iperf3, socat, netsniff-ng (trafgen).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A_IP, B_IP = "198.18.1.1", "198.18.1.2"
FAR_MAC = "02:00:5e:00:99:99"  # not B's: B's kernel drops the frame right after the device
TRAFGEN_CONF = """{
  eth(da=%s, sa=02:00:5e:00:00:01),
  ipv4(saddr=%s, daddr=%s, ttl=64),
  udp(sp=4000, dp=9),
  fill(0x00, 18)
}
"""


def sh(*argv, check=True, timeout=60):
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


class Topology:
    def __init__(self, tag):
        self.a, self.b = f"gtb-{tag}-a", f"gtb-{tag}-b"
        self.procs = []

    def __enter__(self):
        for ns in (self.a, self.b):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        return self

    def __exit__(self, *exc):
        self.stop_procs()
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)

    def start(self, argv, **kw):
        proc = subprocess.Popen(argv, **kw)
        self.procs.append(proc)
        return proc

    def stop_procs(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs = []

    def address(self, dev_a, dev_b):
        sh("ip", "-n", self.a, "addr", "add", f"{A_IP}/24", "dev", dev_a)
        sh("ip", "-n", self.b, "addr", "add", f"{B_IP}/24", "dev", dev_b)
        sh("ip", "-n", self.a, "link", "set", dev_a, "up")
        sh("ip", "-n", self.b, "link", "set", dev_b, "up")


def wait_for_link(ns, dev, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sh("ip", "-n", ns, "link", "show", dev, check=False).returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{dev} did not appear in {ns}")


def rx_packets(ns, dev):
    info = json.loads(sh("ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev).stdout)[0]
    return info["stats64"]["rx"]["packets"]


def measure_ping(topo):
    out = sh("ip", "netns", "exec", topo.a, "ping", "-c", "100", "-i", "0.01", "-q", B_IP).stdout
    # rtt min/avg/max/mdev = 0.051/0.063/0.098/0.010 ms
    return float(out.rsplit("=", 1)[1].split("/")[1])


def measure_tcp(topo, seconds):
    srv = topo.start(
        ["ip", "netns", "exec", topo.b, "iperf3", "-s", "-1", "--forceflush", "-B", B_IP],
        stdout=subprocess.PIPE,
        text=True,
    )
    for _ in range(5):
        if "Server listening" in srv.stdout.readline():
            break
    out = sh(
        "ip", "netns", "exec", topo.a, "iperf3", "-c", B_IP, "-t", str(seconds), "-J",
        timeout=seconds + 30,
    ).stdout  # fmt: skip
    srv.wait(timeout=10)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def measure_pps(topo, dev_a, dev_b, seconds, conf):
    # Bounded in count and time: at most 50M frames, and `seconds` + 2 s.
    gen = topo.start(
        [
            "ip", "netns", "exec", topo.a, "timeout", "-s", "INT", str(seconds + 2),
            "trafgen", "--dev", dev_a, "--conf", conf, "--no-sock-mem", "--notouch-irq",
            "-P", "1", "-n", "50000000", "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # let queues fill and rates settle
    start_n, start_t = rx_packets(topo.b, dev_b), time.monotonic()
    time.sleep(seconds)
    end_n, end_t = rx_packets(topo.b, dev_b), time.monotonic()
    gen.wait(timeout=30)
    return (end_n - start_n) / (end_t - start_t)


def run_case(name, tag, seconds, conf):
    with Topology(f"{tag}{name[0]}") as topo:
        dev_a, dev_b = f"b{name[0]}{tag}a", f"b{name[0]}{tag}b"
        env = {**os.environ, "PYTHONPATH": REPO}
        if name == "veth":
            sh("ip", "link", "add", dev_a, "netns", topo.a, "type", "veth",
               "peer", "name", dev_b, "netns", topo.b)  # fmt: skip
        elif name == "tap-forward":
            topo.start(
                [sys.executable, os.path.join(REPO, "scripts", "tap-forward"), "--stats", "0",
                 "--log-level", "warning",
                 f"tap:{dev_a}?netns={topo.a}", f"tap:{dev_b}?netns={topo.b}"],
                env=env,
            )  # fmt: skip
            wait_for_link(topo.a, dev_a)
            wait_for_link(topo.b, dev_b)
        elif name == "socat":
            # socat creates both TAPs in its own namespace (A); B's is then moved
            # to B: its fd stays attached.
            topo.start(
                ["ip", "netns", "exec", topo.a, "socat",
                 f"TUN,tun-type=tap,tun-name={dev_a},iff-no-pi,iff-up",
                 f"TUN,tun-type=tap,tun-name={dev_b},iff-no-pi,iff-up"],
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            wait_for_link(topo.a, dev_a)
            wait_for_link(topo.a, dev_b)
            sh("ip", "-n", topo.a, "link", "set", dev_b, "netns", topo.b)
        topo.address(dev_a, dev_b)
        sh("ip", "netns", "exec", topo.a, "ping", "-c", "1", "-W", "2", B_IP)  # warm ARP
        return {
            "ping_rtt_ms": measure_ping(topo),
            "tcp_gbps": measure_tcp(topo, seconds),
            "small_pps": measure_pps(topo, dev_a, dev_b, seconds, conf),
        }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="duration of each load test")
    parser.add_argument("--cases", default="veth,tap-forward,socat")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench_forward: run as root (creates namespaces and TAPs)")
    for tool in ("ip", "ping", "iperf3", "socat", "trafgen", "timeout"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_forward: `{tool}` is missing (apt install iperf3 socat netsniff-ng)")
    tag = os.getpid() % 100000
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as f:
        f.write(TRAFGEN_CONF % (FAR_MAC, A_IP, B_IP))
        conf = f.name
    results = {}
    try:
        for name in args.cases.split(","):
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            results[name] = run_case(name, tag, args.seconds, conf)
    finally:
        os.unlink(conf)
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


def print_table(results):
    metrics = [
        ("ping_rtt_ms", "ping RTT (ms, lower is better)", "{:.3f}"),
        ("tcp_gbps", "iperf3 TCP (Gbit/s)", "{:.2f}"),
        ("small_pps", "small frames (packets/s)", "{:,.0f}"),
    ]
    names = list(results)
    print(f"{'metric':<32}" + "".join(f"{n:>14}" for n in names) + "  ratios")
    for key, label, fmt in metrics:
        row = f"{label:<32}" + "".join(f"{fmt.format(results[n][key]):>14}" for n in names)
        ratios = []
        if "tap-forward" in results:
            tf = results["tap-forward"][key]
            for ref in ("socat", "veth"):
                if ref in results and results[ref][key]:
                    ratios.append(f"tap-forward/{ref} {tf / results[ref][key]:.2f}x")
        print(row + "  " + ", ".join(ratios))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Benchmark tap-forward against socat and a kernel veth pair, in one run.

Builds two throw-away network namespaces A and B (addresses from
198.18.0.0/15) joined, in turn, by:

* ``veth``: a kernel veth pair (the ceiling);
* ``tap-forward``: a TAP in each namespace, forwarded by tap-forward;
* ``tf-offload``: the same with ``--offload auto`` (virtio-net headers, TSO);
* ``socat``: a TAP in each namespace, forwarded by
  ``socat TUN,tun-type=tap TUN,tun-type=tap`` (socat's TUN address, tap type);
* ``kernel-vxlan``: the kernel's vxlan on both sides of a veth underlay (the
  ceiling for tunnels);
* ``kvxlan+tf``: the kernel's vxlan in A, tap-forward bridging it to a TAP in B;
* ``tf+vxlan+tf``: two tap-forward processes ("sites") joined by VXLAN.

For each it measures ping RTT, iperf3 TCP throughput (one stream) and
small-frame packets/s: trafgen in A offers 60-byte UDP frames whose
destination MAC is not B's, and the rate is what arrives on B's interface.
It prints a table with ratios and removes everything it made.

Run as root:  python3 benchmarks/bench_forward.py [--seconds 5]
Needs: iproute2, iputils-ping, iperf3, socat, netsniff-ng (trafgen), ethtool.
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
# trafgen -P 1 runs on CPU 0; the forwarder under test (tap-forward or socat
# alike) is pinned to the last CPU so the two never share a core.
FORWARDER_CPU = ["taskset", "-c", str(max(os.cpu_count() - 1, 0))]
TRAFGEN_CONF = """{
  eth(da=%s, sa=02:00:5e:00:00:01),
  ipv4(saddr=%s, daddr=%s, ttl=64),
  udp(sp=%s, dp=9),
  fill(0x00, 64)
}
"""
ONE_FLOW = "4000"
EIGHT_FLOWS = "dinc(4000, 4007, 1)"  # eight UDP flows: the kernel spreads them over queues


def sh(*argv, check=True, timeout=60):
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


class Topology:
    """Namespaces and processes of one case; all removed on exit."""

    def __init__(self, tag):
        self.tag = tag
        self.namespaces = []
        self.procs = []

    def ns(self, role):
        name = f"gtb-{self.tag}-{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        return name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_procs()
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)

    def start(self, argv, **kw):
        proc = subprocess.Popen(argv, **kw)
        self.procs.append(proc)
        return proc

    def tap_forward(self, ns, *endpoints, mtu=None):
        """Start tap-forward (inside namespace `ns`, or here if None)."""
        prefix = ["ip", "netns", "exec", ns] if ns else []
        prefix += FORWARDER_CPU
        extra = ["--mtu", str(mtu)] if mtu else []
        self.start(
            [*prefix, sys.executable, os.path.join(REPO, "scripts", "tap-forward"),
             "--stats", "0", "--log-level", "warning", *extra, *endpoints],
            env={**os.environ, "PYTHONPATH": REPO},
        )  # fmt: skip

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


def address(ns, dev, ip, mtu=None):
    sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
    if mtu:
        sh("ip", "-n", ns, "link", "set", dev, "mtu", str(mtu))
    sh("ip", "-n", ns, "link", "set", dev, "up")


def underlay(topo, ns1, ns2, ip1, ip2):
    """A veth pair between two namespaces: the network the tunnels run over."""
    d1, d2 = f"u{topo.tag}x", f"u{topo.tag}y"
    sh("ip", "link", "add", d1, "netns", ns1, "type", "veth", "peer", "name", d2, "netns", ns2)
    address(ns1, d1, ip1)
    address(ns2, d2, ip2)
    return d1, d2


def kernel_vxlan(ns, name, remote, local, dev):
    sh("ip", "-n", ns, "link", "add", name, "type", "vxlan", "id", "42", "remote", remote,
       "local", local, "dstport", "4789", "dev", dev)  # fmt: skip


# Each case builds its topology and returns (ns A, device in A that trafgen
# sends on, ns B, device in B whose received frames are counted).
def case_veth(topo):
    a, b = topo.ns("a"), topo.ns("b")
    da, db = f"v{topo.tag}a", f"v{topo.tag}b"
    sh("ip", "link", "add", da, "netns", a, "type", "veth", "peer", "name", db, "netns", b)
    return a, da, b, db, None


def case_tap_forward(topo, offload="off"):
    a, b = topo.ns("a"), topo.ns("b")
    da, db = f"t{topo.tag}a", f"t{topo.tag}b"
    topo.tap_forward(None, "--offload", offload, f"tap:{da}?netns={a}", f"tap:{db}?netns={b}")
    wait_for_link(a, da)
    wait_for_link(b, db)
    return a, da, b, db, None


def case_socat(topo):
    # socat creates both TAPs in its own namespace (A); B's is then moved to
    # B: its fd stays attached.
    a, b = topo.ns("a"), topo.ns("b")
    da, db = f"s{topo.tag}a", f"s{topo.tag}b"
    topo.start(
        ["ip", "netns", "exec", a, *FORWARDER_CPU, "socat",
         f"TUN,tun-type=tap,tun-name={da},iff-no-pi,iff-up",
         f"TUN,tun-type=tap,tun-name={db},iff-no-pi,iff-up"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_link(a, da)
    wait_for_link(a, db)
    sh("ip", "-n", a, "link", "set", db, "netns", b)
    return a, da, b, db, None


def case_kernel_vxlan(topo):
    """The ceiling: the kernel's vxlan on both sides."""
    a, b = topo.ns("a"), topo.ns("b")
    ua, ub = underlay(topo, a, b, "198.18.7.1", "198.18.7.2")
    kernel_vxlan(a, "vxa", "198.18.7.2", "198.18.7.1", ua)
    kernel_vxlan(b, "vxb", "198.18.7.1", "198.18.7.2", ub)
    return a, "vxa", b, "vxb", None


def case_kernel_vxlan_tap_forward(topo):
    """Kernel vxlan in A <-> tap-forward in F <-> TAP in B."""
    a, f, b = topo.ns("a"), topo.ns("f"), topo.ns("b")
    ua, _ = underlay(topo, a, f, "198.18.7.1", "198.18.7.2")
    kernel_vxlan(a, "vxa", "198.18.7.2", "198.18.7.1", ua)
    # On one host the kernel would hand its checksum offload over the veth
    # unfinished (a real NIC completes it): have it checksum in software.
    sh("ip", "netns", "exec", a, "ethtool", "-K", "vxa", "tx", "off")
    db = f"t{topo.tag}b"
    topo.tap_forward(f, "vxlan://198.18.7.1?vni=42&local=198.18.7.2:4789",
                     f"tap:{db}?netns={b}", mtu=1450)  # fmt: skip
    wait_for_link(b, db)
    return a, "vxa", b, db, 1450


def case_tap_forward_vxlan(topo):
    """TAP in A <-> tap-forward in S1 <-> VXLAN <-> tap-forward in S2 <-> TAP in B."""
    a, s1, s2, b = topo.ns("a"), topo.ns("s1"), topo.ns("s2"), topo.ns("b")
    underlay(topo, s1, s2, "198.18.7.1", "198.18.7.2")
    da, db = f"t{topo.tag}a", f"t{topo.tag}b"
    topo.tap_forward(s1, f"tap:{da}?netns={a}",
                     "vxlan://198.18.7.2?vni=42&local=198.18.7.1:4789", mtu=1450)  # fmt: skip
    topo.tap_forward(s2, f"tap:{db}?netns={b}",
                     "vxlan://198.18.7.1?vni=42&local=198.18.7.2:4789", mtu=1450)  # fmt: skip
    wait_for_link(a, da)
    wait_for_link(b, db)
    return a, da, b, db, 1450


CASES = {
    "veth": case_veth,
    "tap-forward": case_tap_forward,
    "tf-offload": lambda topo: case_tap_forward(topo, offload="auto"),
    "socat": case_socat,
    "kernel-vxlan": case_kernel_vxlan,
    "kvxlan+tf": case_kernel_vxlan_tap_forward,
    "tf+vxlan+tf": case_tap_forward_vxlan,
}
#: (case, reference) pairs whose ratios the table prints.
RATIOS = [
    ("tap-forward", "socat"),
    ("tap-forward", "veth"),
    ("tf-offload", "socat"),
    ("tf-offload", "veth"),
    ("kvxlan+tf", "kernel-vxlan"),
    ("tf+vxlan+tf", "kernel-vxlan"),
]


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


def measure_ping(ns_a):
    out = sh("ip", "netns", "exec", ns_a, "ping", "-c", "100", "-i", "0.01", "-q", B_IP).stdout
    # rtt min/avg/max/mdev = 0.051/0.063/0.098/0.010 ms
    return float(out.rsplit("=", 1)[1].split("/")[1])


def measure_tcp(topo, ns_a, ns_b, seconds):
    srv = topo.start(
        ["ip", "netns", "exec", ns_b, "iperf3", "-s", "-1", "--forceflush", "-B", B_IP],
        stdout=subprocess.PIPE,
        text=True,
    )
    for _ in range(5):
        if "Server listening" in srv.stdout.readline():
            break
    out = sh(
        "ip", "netns", "exec", ns_a, "iperf3", "-c", B_IP, "-t", str(seconds), "-J",
        timeout=seconds + 30,
    ).stdout  # fmt: skip
    srv.wait(timeout=10)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def measure_pps(topo, ns_a, dev_a, ns_b, dev_b, seconds, conf):
    # Bounded in count and time: at most 50M frames, and `seconds` + 2 s.
    gen = topo.start(
        [
            "ip", "netns", "exec", ns_a, "timeout", "-s", "INT", str(seconds + 2),
            "trafgen", "--dev", dev_a, "--conf", conf, "--no-sock-mem", "--notouch-irq",
            "-P", "1", "-n", "50000000", "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # let queues fill and rates settle
    start_n, start_t = rx_packets(ns_b, dev_b), time.monotonic()
    time.sleep(seconds)
    end_n, end_t = rx_packets(ns_b, dev_b), time.monotonic()
    gen.wait(timeout=30)
    return (end_n - start_n) / (end_t - start_t)


def run_case(name, tag, seconds, conf):
    with Topology(tag) as topo:
        ns_a, dev_a, ns_b, dev_b, mtu = CASES[name](topo)
        address(ns_a, dev_a, A_IP, mtu)
        address(ns_b, dev_b, B_IP, mtu)
        sh("ip", "netns", "exec", ns_a, "ping", "-c", "1", "-W", "2", B_IP)  # warm ARP
        return {
            "ping_rtt_ms": measure_ping(ns_a),
            "tcp_gbps": measure_tcp(topo, ns_a, ns_b, seconds),
            "small_pps": measure_pps(topo, ns_a, dev_a, ns_b, dev_b, seconds, conf),
        }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="duration of each load test")
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES)
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench_forward: run as root (creates namespaces and TAPs)")
    for tool in ("ip", "ping", "iperf3", "socat", "trafgen", "timeout", "ethtool"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_forward: `{tool}` is missing (apt install iperf3 socat netsniff-ng)")
    names = args.cases.split(",")
    unknown = set(names) - set(CASES)
    if unknown:
        sys.exit(f"bench_forward: unknown case(s) {', '.join(sorted(unknown))}")
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as f:
        f.write(TRAFGEN_CONF % (FAR_MAC, A_IP, B_IP, ONE_FLOW))
        conf = f.name
    results = {}
    try:
        for i, name in enumerate(names):
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            results[name] = run_case(name, f"{os.getpid() % 10000}{i}", args.seconds, conf)
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
    print(f"{'metric':<32}" + "".join(f"{n:>14}" for n in names))
    for key, label, fmt in metrics:
        print(f"{label:<32}" + "".join(f"{fmt.format(results[n][key]):>14}" for n in names))
    print()
    for case, ref in RATIOS:
        if case in results and ref in results:
            ratios = ", ".join(
                f"{label.split(' (')[0]} {results[case][key] / results[ref][key]:.2f}x"
                for key, label, _ in metrics
                if results[ref][key]
            )
            print(f"{case} / {ref}: {ratios}")


if __name__ == "__main__":
    main()

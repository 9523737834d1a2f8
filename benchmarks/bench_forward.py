#!/usr/bin/env python3
"""Benchmark tap-forward against socat and a kernel veth pair, in one run.

Builds two throw-away network namespaces A and B (addresses from
198.18.0.0/15) joined, in turn, by:

* ``veth``: a kernel veth pair (the ceiling);
* ``tap-forward``: a TAP in each namespace, forwarded by tap-forward with its
  defaults (offloads on between TAPs, the C relay loop, the hub kept warm);
* ``tf-no-offload``, ``tf-python`` (the pure-Python loop,
  ``GREENTAP_PURE_PYTHON=1``), ``tf-cold`` (``--keep-warm 0``): the same with
  one of those off, to show what each is worth;
* ``tf-8flows`` and ``tf-2w-8flows``: one process against ``--workers 2``
  (multi-queue TAPs), offered eight UDP flows; ``tf-py-8flows`` and
  ``tf-py-2w-8flows``: the same with the pure-Python loop;
* ``socat``: a TAP in each namespace, forwarded by
  ``socat TUN,tun-type=tap TUN,tun-type=tap`` (socat's TUN address, tap type);
* ``kernel-vxlan``: the kernel's vxlan on both sides of a veth underlay (the
  ceiling for tunnels);
* ``tf-packet``: a TAP in A, tap-forward, ``packet:`` on a veth whose peer is
  B's (``-rx``: the generator in B, frames read from the ring; ``-python``:
  the pure-Python loop);
* ``kvxlan+tf``: the kernel's vxlan in A, tap-forward bridging it to a TAP in B;
* ``tf+vxlan+tf``: two tap-forward processes ("sites") joined by VXLAN
  (``-off``: with ``--offload off``, every segment a trip through Python);
* ``tf+unix+tf`` and ``tf+tcp+tf``: two sites joined by a stream socket
  carrying QEMU's framing (one listening, the other connecting), and
  ``tf+udp+tf`` (``-off``) the same joined by ``udp://``, QEMU's dgram framing;
* with ``--baseline DIR`` (another checkout of greentap, its C loop built in
  place, e.g. ``git worktree add /tmp/base <commit>`` then ``python setup.py
  build_ext --inplace`` there): ``base-tap-forward`` and ``base-tf-python``,
  that checkout's tap-forward in the same run, to show a change costs nothing.

For each it measures ping RTT, iperf3 TCP throughput (one stream),
small-frame packets/s (trafgen in A offers 106-byte UDP frames whose
destination MAC is not B's; the rate is what arrives on B's interface) and
the resident memory of each forwarder process.  Then tap-forward runs
``--memory-seconds`` (60) at full small-frame load while its resident memory
is sampled every 5 s.  It prints a table, the ratios, and each of the
project's speed floors as PASS or FAIL, and removes everything it made.

Run as root:  python3 benchmarks/bench_forward.py [--seconds 5] [--memory-seconds 60] [--repeat N]
Needs: iproute2, iputils-ping, iperf3, socat, netsniff-ng (trafgen), ethtool.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
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
        self.forwarders = []  # tap-forward processes, for their memory

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

    def tap_forward(self, ns, *args, mtu=None, pin=True, env=None, repo=REPO):
        """Start tap-forward (inside namespace `ns`, or here if None) from checkout `repo`."""
        prefix = ["ip", "netns", "exec", ns] if ns else []
        if pin:
            prefix += FORWARDER_CPU
        extra = ["--mtu", str(mtu)] if mtu else []
        proc = self.start(
            [*prefix, sys.executable, os.path.join(repo, "scripts", "tap-forward"),
             "--stats", "0", "--log-level", "warning", *extra, *args],
            env={**os.environ, "PYTHONPATH": repo, **(env or {})},
        )  # fmt: skip
        self.forwarders.append(proc)
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


def case_tap_forward(topo, *args, env=None, pin=True, repo=REPO):
    a, b = topo.ns("a"), topo.ns("b")
    da, db = f"t{topo.tag}a", f"t{topo.tag}b"
    topo.tap_forward(
        None, *args, f"tap:{da}?netns={a}", f"tap:{db}?netns={b}", env=env, pin=pin, repo=repo
    )
    wait_for_link(a, da)
    wait_for_link(b, db)
    return a, da, b, db, None


PURE = {"GREENTAP_PURE_PYTHON": "1"}


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


def two_sites(topo, args, there, back):
    """TAP in A <-> tap-forward in S1 <-> a tunnel over a veth underlay <-> tap-forward in
    S2 <-> TAP in B: ``there`` and ``back`` are S1's and S2's tunnel endpoints."""
    a, s1, s2, b = topo.ns("a"), topo.ns("s1"), topo.ns("s2"), topo.ns("b")
    underlay(topo, s1, s2, "198.18.7.1", "198.18.7.2")
    da, db = f"t{topo.tag}a", f"t{topo.tag}b"
    topo.tap_forward(s1, *args, f"tap:{da}?netns={a}", there, mtu=1450)
    topo.tap_forward(s2, *args, f"tap:{db}?netns={b}", back, mtu=1450)
    wait_for_link(a, da)
    wait_for_link(b, db)
    return a, da, b, db, 1450


def case_tap_forward_vxlan(topo, *args):
    """Two sites joined by VXLAN."""
    return two_sites(topo, args, "vxlan://198.18.7.2?vni=42&local=198.18.7.1:4789",
                     "vxlan://198.18.7.1?vni=42&local=198.18.7.2:4789")  # fmt: skip


def case_tap_forward_packet(topo, *args, env=None, reverse=False):
    """TAP in A <-> tap-forward <-> ``packet:`` on a veth whose peer is B's; with
    ``reverse`` the generator sends from B (through the ring) to A."""
    a, f, b = topo.ns("a"), topo.ns("f"), topo.ns("b")
    da, dp, db = f"t{topo.tag}a", f"p{topo.tag}f", f"p{topo.tag}b"
    sh("ip", "link", "add", dp, "netns", f, "type", "veth", "peer", "name", db, "netns", b)
    sh("ip", "-n", f, "link", "set", dp, "up")
    topo.tap_forward(None, *args, f"tap:{da}?netns={a}", f"packet:{dp}?netns={f}", env=env)
    wait_for_link(a, da)
    return (b, db, a, da, None) if reverse else (a, da, b, db, None)


def case_tap_forward_stream(topo, listen, connect, *args):
    """TAP in A <-> tap-forward <-> a stream socket (QEMU's framing) <-> tap-forward <-> TAP
    in B: ``listen`` and ``connect`` are the two ends' endpoints."""
    a, b = topo.ns("a"), topo.ns("b")
    da, db = f"t{topo.tag}a", f"t{topo.tag}b"
    topo.tap_forward(None, *args, f"tap:{da}?netns={a}", listen)
    wait_for_link(a, da)  # the listener is up once its TAP is
    topo.tap_forward(None, *args, f"tap:{db}?netns={b}", connect)
    wait_for_link(b, db)
    return a, da, b, db, None


def case_tap_forward_unix(topo, *args):
    path = os.path.join(tempfile.gettempdir(), f"gtb-{topo.tag}.sock")
    return case_tap_forward_stream(topo, f"unix:{path}?listen", f"unix:{path}", *args)


def case_tap_forward_udp(topo, *args):
    """The same two sites joined by udp:// (QEMU's dgram framing)."""
    return two_sites(topo, args, "udp://198.18.7.2:5000?local=198.18.7.1:5000",
                     "udp://198.18.7.1:5000?local=198.18.7.2:5000")  # fmt: skip


# name -> (build the topology, the flows trafgen offers)
CASES = {
    "veth": (case_veth, ONE_FLOW),
    "tap-forward": (case_tap_forward, ONE_FLOW),
    "tf-no-offload": (lambda t: case_tap_forward(t, "--offload", "off"), ONE_FLOW),
    "tf-python": (lambda t: case_tap_forward(t, env=PURE), ONE_FLOW),
    "tf-cold": (lambda t: case_tap_forward(t, "--keep-warm", "0"), ONE_FLOW),
    "socat": (case_socat, ONE_FLOW),
    "tf-8flows": (case_tap_forward, EIGHT_FLOWS),
    "tf-2w-8flows": (lambda t: case_tap_forward(t, "--workers", "2", pin=False), EIGHT_FLOWS),
    "tf-py-8flows": (lambda t: case_tap_forward(t, env=PURE), EIGHT_FLOWS),
    "tf-py-2w-8flows": (
        lambda t: case_tap_forward(t, "--workers", "2", env=PURE, pin=False),
        EIGHT_FLOWS,
    ),
    "tf-packet": (case_tap_forward_packet, ONE_FLOW),
    "tf-packet-python": (lambda t: case_tap_forward_packet(t, env=PURE), ONE_FLOW),
    "tf-packet-rx": (lambda t: case_tap_forward_packet(t, reverse=True), ONE_FLOW),
    "tf-packet-rx-python": (
        lambda t: case_tap_forward_packet(t, env=PURE, reverse=True),
        ONE_FLOW,
    ),
    "kernel-vxlan": (case_kernel_vxlan, ONE_FLOW),
    "kvxlan+tf": (case_kernel_vxlan_tap_forward, ONE_FLOW),
    "tf+vxlan+tf": (case_tap_forward_vxlan, ONE_FLOW),
    "tf+vxlan+tf-off": (lambda t: case_tap_forward_vxlan(t, "--offload", "off"), ONE_FLOW),
    "tf+unix+tf": (case_tap_forward_unix, ONE_FLOW),
    "tf+tcp+tf": (
        lambda t: case_tap_forward_stream(
            t,
            f"tcp://127.0.0.1:{47000 + int(t.tag) % 1000}?listen",
            f"tcp://127.0.0.1:{47000 + int(t.tag) % 1000}",
        ),
        ONE_FLOW,
    ),
    "tf+udp+tf": (case_tap_forward_udp, ONE_FLOW),
    "tf+udp+tf-off": (lambda t: case_tap_forward_udp(t, "--offload", "off"), ONE_FLOW),
    # With --baseline DIR: the same as tap-forward and tf-python, from that checkout.
    "base-tap-forward": (lambda t: case_tap_forward(t, repo=BASELINE[0]), ONE_FLOW),
    "base-tf-python": (lambda t: case_tap_forward(t, env=PURE, repo=BASELINE[0]), ONE_FLOW),
}
BASELINE = [None]  # --baseline DIR
#: (case, reference) pairs whose ratios the table prints.
RATIOS = [
    ("tap-forward", "socat"),
    ("tap-forward", "veth"),
    ("tf-no-offload", "socat"),
    ("tf-python", "socat"),
    ("tf-cold", "socat"),
    ("tf-2w-8flows", "tf-8flows"),
    ("tf-py-2w-8flows", "tf-py-8flows"),
    ("tf-packet", "tap-forward"),
    ("tf-packet-python", "tf-python"),
    ("tf-packet-rx", "tap-forward"),
    ("tf-packet-rx-python", "tf-python"),
    ("kvxlan+tf", "kernel-vxlan"),
    ("tf+vxlan+tf", "kernel-vxlan"),
    ("tf+vxlan+tf-off", "kernel-vxlan"),
    ("tf+vxlan+tf", "tf+vxlan+tf-off"),
    ("tf+unix+tf", "tf-no-offload"),
    ("tf+unix+tf", "tf+udp+tf"),
    ("tf+tcp+tf", "tf-no-offload"),
    ("tf+unix+tf", "tf+udp+tf-off"),
    ("tap-forward", "base-tap-forward"),
    ("tf-python", "base-tf-python"),
]
#: The project's floors: (case, reference, metric, "min" or "max", bound).
FLOORS = [
    ("tap-forward", "socat", "small_pps", "min", 2.6),
    ("tap-forward", "veth", "small_pps", "min", 0.55),
    ("tap-forward", "socat", "tcp_gbps", "min", 12.0),
    ("tap-forward", "veth", "tcp_gbps", "min", 0.70),
    ("tap-forward", "socat", "ping_rtt_ms", "max", 1.5),
    ("tf-2w-8flows", "tf-8flows", "small_pps", "min", 1.3),
    ("tf-packet", "tap-forward", "small_pps", "min", 0.9),
    ("tf-packet", "tap-forward", "tcp_gbps", "min", 0.7),
    ("tf-packet-rx", "tap-forward", "small_pps", "min", 0.9),
    ("tf+vxlan+tf", "kernel-vxlan", "tcp_gbps", "min", 0.5),
    ("kvxlan+tf", "kernel-vxlan", "tcp_gbps", "min", 0.5),
    ("tf+vxlan+tf", "kernel-vxlan", "small_pps", "min", 0.8),
    ("kvxlan+tf", "kernel-vxlan", "small_pps", "min", 0.9),
    ("tf+vxlan+tf", "kernel-vxlan", "ping_rtt_ms", "max", 2.0),
    ("tf+unix+tf", "tf-no-offload", "tcp_gbps", "min", 0.8),
    ("tf+unix+tf", "tf+udp+tf", "small_pps", "min", 0.8),
]
RSS_LIMIT_MB = 60.0
RSS_GROWTH_LIMIT = 0.05


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


def forwarder_pids(topo):
    """The tap-forward processes of a case, with their workers."""
    pids = []
    for proc in topo.forwarders:
        pids.append(proc.pid)
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                pids += [int(pid) for pid in f.read().split()]
        except OSError:
            pass
    return pids


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_case(name, tag, seconds, confs):
    build, flows = CASES[name]
    with Topology(tag) as topo:
        ns_a, dev_a, ns_b, dev_b, mtu = build(topo)
        address(ns_a, dev_a, A_IP, mtu)
        address(ns_b, dev_b, B_IP, mtu)
        sh("ip", "netns", "exec", ns_a, "ping", "-c", "1", "-W", "2", B_IP)  # warm ARP
        result = {
            "ping_rtt_ms": measure_ping(ns_a),
            "tcp_gbps": measure_tcp(topo, ns_a, ns_b, seconds),
            "small_pps": measure_pps(topo, ns_a, dev_a, ns_b, dev_b, seconds, confs[flows]),
        }
        pids = forwarder_pids(topo)
        if pids:
            result["rss_mb"] = max(rss_mb(pid) for pid in pids)  # the largest process
        return result


def memory_run(seconds, conf, tag):
    """Full small-frame load through tap-forward for `seconds`; RSS every 5 s."""
    with Topology(tag) as topo:
        ns_a, dev_a, ns_b, dev_b, _ = case_tap_forward(topo)
        address(ns_a, dev_a, A_IP)
        address(ns_b, dev_b, B_IP)
        pid = topo.forwarders[0].pid
        gen = topo.start(
            [
                "ip", "netns", "exec", ns_a, "timeout", "-s", "INT", str(seconds + 2),
                "trafgen", "--dev", dev_a, "--conf", conf, "--no-sock-mem", "--notouch-irq",
                "-P", "1", "-n", str(int(seconds * 2_000_000)), "-q",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        samples = []
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            time.sleep(5)
            samples.append(round(rss_mb(pid), 1))
        frames = rx_packets(ns_b, dev_b)
        gen.wait(timeout=30)
    return {"samples_mb": samples, "frames": frames, "seconds": seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="duration of each load test")
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES)
    )
    parser.add_argument(
        "--memory-seconds", type=int, default=60, help="length of the memory run (0: skip it)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, metavar="N",
        help="measure the cases N times, one after the other in turn, and report the medians "
        "(runs on a shared machine move by 10-30%%: a floor is judged on the medians)",
    )  # fmt: skip
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="another greentap checkout (C loop built in place): adds base-tap-forward and "
        "base-tf-python, that checkout's tap-forward, to the cases",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench_forward: run as root (creates namespaces and TAPs)")
    for tool in ("ip", "ping", "iperf3", "socat", "trafgen", "timeout", "ethtool"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_forward: `{tool}` is missing (apt install iperf3 socat netsniff-ng)")
    default = args.cases == parser.get_default("cases")
    names = [n for n in args.cases.split(",") if not (default and n.startswith("base-"))]
    if args.baseline:
        if not os.path.exists(os.path.join(args.baseline, "scripts", "tap-forward")):
            sys.exit(f"bench_forward: {args.baseline} is not a greentap checkout")
        BASELINE[0] = os.path.abspath(args.baseline)
        if default:
            names += ["base-tap-forward", "base-tf-python"]
    elif any(n.startswith("base-") for n in names):
        sys.exit("bench_forward: base-* cases need --baseline DIR")
    unknown = set(names) - set(CASES)
    if unknown:
        sys.exit(f"bench_forward: unknown case(s) {', '.join(sorted(unknown))}")
    # SIGTERM (a timeout, a kill) still removes the namespaces.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    confs = {}
    for flows in (ONE_FLOW, EIGHT_FLOWS):
        with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as f:
            f.write(TRAFGEN_CONF % (FAR_MAC, A_IP, B_IP, flows))
            confs[flows] = f.name
    runs, memory = {name: [] for name in names}, None
    try:
        for r in range(max(args.repeat, 1)):
            for i, name in enumerate(names):
                turn = f" (round {r + 1} of {args.repeat})" if args.repeat > 1 else ""
                print(f"measuring {name}{turn} ...", file=sys.stderr, flush=True)
                tag = f"{os.getpid() % 1000}{r}{i}"
                runs[name].append(run_case(name, tag, args.seconds, confs))
        if args.memory_seconds:
            print(f"memory run ({args.memory_seconds} s) ...", file=sys.stderr, flush=True)
            memory = memory_run(args.memory_seconds, confs[ONE_FLOW], f"{os.getpid() % 10000}m")
    finally:
        for conf in confs.values():
            os.unlink(conf)
    results = {name: medians(each) for name, each in runs.items()}
    if args.repeat > 1:
        print(f"medians of {args.repeat} rounds; small frames per round:")
        for name, each in runs.items():
            print(f"  {name}: " + ", ".join(f"{run['small_pps']:,.0f}" for run in each))
        print()
    print_table(results, memory, runs if args.repeat > 1 else None)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cases": results, "rounds": runs, "memory": memory}, f, indent=2)
    return results


def medians(runs):
    """One result of a case's runs: each metric's median."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


METRICS = [
    ("ping_rtt_ms", "ping RTT (ms, lower is better)", "{:.3f}"),
    ("tcp_gbps", "iperf3 TCP (Gbit/s)", "{:.2f}"),
    ("small_pps", "small frames (packets/s)", "{:,.0f}"),
    ("rss_mb", "resident memory (MB, largest)", "{:.1f}"),
]


def paired_ratio(runs, case, ref, key):
    """The median over rounds of ``case``'s ``key`` over ``ref``'s in the same round: a
    case and its reference measured minutes apart share the machine's drift."""
    pairs = zip(runs[case], runs[ref], strict=True)
    return statistics.median(c[key] / r[key] for c, r in pairs if r[key])


def print_table(results, memory=None, runs=None):
    names = list(results)
    width = max(14, max(len(n) for n in names) + 2)
    print(f"{'metric':<32}" + "".join(f"{n:>{width}}" for n in names))
    for key, label, fmt in METRICS:
        cells = [fmt.format(results[n][key]) if key in results[n] else "-" for n in names]
        print(f"{label:<32}" + "".join(f"{c:>{width}}" for c in cells))
    print()
    for case, ref in RATIOS:
        if case in results and ref in results:
            ratios = ", ".join(
                f"{label.split(' (')[0]} {results[case][key] / results[ref][key]:.2f}x"
                for key, label, _ in METRICS[:3]
                if results[ref][key]
            )
            print(f"{case} / {ref}: {ratios}")
    print()
    if runs:
        print("floors on the median of each round's ratio (a case against its reference "
              "measured in the same round)")  # fmt: skip
    for case, ref, key, sense, bound in FLOORS:
        if case in results and ref in results and results[ref][key]:
            if runs:
                ratio = paired_ratio(runs, case, ref, key)
            else:
                ratio = results[case][key] / results[ref][key]
            passed = ratio >= bound if sense == "min" else ratio <= bound
            rel = ">=" if sense == "min" else "<="
            print(f"{'PASS' if passed else 'FAIL'}  {key} {case} / {ref} = {ratio:.2f}x "
                  f"(floor {rel} {bound}x)")  # fmt: skip
    sizes = [r["rss_mb"] for r in results.values() if "rss_mb" in r]
    if sizes:
        print(f"{'PASS' if max(sizes) < RSS_LIMIT_MB else 'FAIL'}  resident memory per "
              f"process {max(sizes):.1f} MB at most (floor < {RSS_LIMIT_MB:.0f} MB)")  # fmt: skip
    if memory and len(memory["samples_mb"]) >= 2:
        first, last = memory["samples_mb"][0], memory["samples_mb"][-1]
        growth = (last - first) / first
        print(f"{'PASS' if abs(growth) <= RSS_GROWTH_LIMIT else 'FAIL'}  resident memory over "
              f"{memory['seconds']} s at full load: {first} -> {last} MB ({growth:+.1%}, "
              f"floor within 5%); samples {memory['samples_mb']}, "
              f"{memory['frames']:,} frames")  # fmt: skip


if __name__ == "__main__":
    main()

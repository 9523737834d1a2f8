#!/usr/bin/env python3
"""Connect and disconnect cycles against a listening stream endpoint: no fd or memory growth.

    sudo python3 benchmarks/cycles.py [--cycles 1000] [--warmup 2000] [--json PATH]

Starts ``tap-forward`` with a TAP in a throw-away namespace and
``unix:PATH?listen``, then plays a VM that connects, sends one frame (from
a source MAC of its own, so the switch learns and forgets one address per
connection), half-closes and waits for the forwarder to close its side:
``--warmup`` times first (the allocator's high-water mark settles within the
first 2,000 here: 31.2 MB, then 32.0-32.3 MB over 10,000 more), then
``--cycles`` times measured.  It prints the forwarder's open fds and
resident memory before and after the measured cycles, the cycles per second,
and the issue's floor (same fds, RSS within 5%) as PASS or FAIL; exit 1 if
it failed.  Everything it starts is removed at the end.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = 4  # QEMU's stream framing: a 4-byte big-endian length before each frame
RSS_GROWTH_LIMIT = 0.05


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cycle(path, n, first=0):
    """``n`` connections, one after another, each sending one frame and leaving."""
    for i in range(first, first + n):
        frame = b"\xff" * 6 + bytes([2, 0, 0, i >> 16 & 255, i >> 8 & 255, i & 255])
        frame += b"\x08\x06" + bytes(46)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(path)
        s.sendall(len(frame).to_bytes(HEADER, "big") + frame)
        s.shutdown(socket.SHUT_WR)  # leave; the forwarder closes its side in turn
        while s.recv(4096):
            pass
        s.close()


def left(log_path):
    with open(log_path) as f:
        return sum('"endpoint_left"' in line for line in f)


def wait_left(log_path, total, timeout=60):
    deadline = time.monotonic() + timeout
    while left(log_path) < total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {left(log_path)} of {total} connections left in time")
        time.sleep(0.01)


def run(cycles, warmup):
    ns = f"gtc-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    work = tempfile.mkdtemp(prefix="gtc-")
    path, log_path = os.path.join(work, "c.sock"), os.path.join(work, "tf.log")
    sh("ip", "netns", "add", ns)
    proc = None
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, os.path.join(REPO, "scripts", "tap-forward"), "--stats", "0",
                 "--log-format", "json", f"tap:gtc{os.getpid() % 100000}?netns={ns}",
                 f"unix:{path}?listen"],
                stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "PYTHONPATH": REPO},
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while not os.path.exists(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log_path) as f:
                    raise RuntimeError(f"tap-forward did not listen: {f.read()}")
            time.sleep(0.02)
        cycle(path, warmup)
        wait_left(log_path, warmup)
        before = {"fds": fds(proc.pid), "rss_kib": status(proc.pid, "VmRSS")}
        start = time.monotonic()
        cycle(path, cycles, first=warmup)
        wait_left(log_path, warmup + cycles)
        seconds = time.monotonic() - start
        after = {"fds": fds(proc.pid), "rss_kib": status(proc.pid, "VmRSS")}
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for name in ("c.sock", "tf.log"):
            if os.path.exists(os.path.join(work, name)):
                os.unlink(os.path.join(work, name))
        os.rmdir(work)
    growth = after["rss_kib"] / before["rss_kib"] - 1
    checks = [
        {"check": "the same fds after the cycles", "passed": after["fds"] == before["fds"]},
        {"check": f"RSS within {RSS_GROWTH_LIMIT:.0%}", "passed": growth < RSS_GROWTH_LIMIT},
        {"check": "exit 0 on SIGTERM", "passed": code == 0},
    ]
    return {"cycles": cycles, "seconds": seconds, "before": before, "after": after,
            "rss_growth": growth, "checks": checks}  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("cycles: run as root (it makes a network namespace and a TAP)")
    report = run(args.cycles, args.warmup)
    b, a = report["before"], report["after"]
    print(f"cycles: {args.cycles} connect/disconnect cycles in {report['seconds']:.2f} s "
          f"({args.cycles / report['seconds']:,.0f}/s)")  # fmt: skip
    print(f"  fds {b['fds']} -> {a['fds']}, RSS {b['rss_kib']} -> {a['rss_kib']} KiB "
          f"(x{1 + report['rss_growth']:.3f})")  # fmt: skip
    for check in report["checks"]:
        print(f"{'PASS' if check['passed'] else 'FAIL'}  {check['check']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if all(c["passed"] for c in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())

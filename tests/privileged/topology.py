"""Hosts in namespaces joined by tap-forward, for the forwarding tests."""

import json
import os
import signal
import subprocess
import sys
import time

import gevent

from tests.privileged.conftest import python_env, unique

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SCRIPT = os.path.join(ROOT, "scripts", "tap-forward")
BLAST = os.path.join(ROOT, "benchmarks", "blast.py")


def wait_until(predicate, timeout=10, what="the condition"):
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not come true within {timeout} s")
        time.sleep(0.01)


class Host:
    """A namespace with a TAP (made by the forwarder) and an address in 198.18.0.0/24."""

    def __init__(self, ns, index):
        self.ns = ns
        self.tap = unique("gh")
        self.ip = f"198.18.0.{index + 1}"
        self.endpoint = f"tap:{self.tap}?netns={ns.name}"

    def configure(self):
        self.ns.ip("addr", "add", f"{self.ip}/24", "dev", self.tap)

    @property
    def mac(self):
        """The TAP's MAC address, as the kernel reports it."""
        return self.ns.link(self.tap)["address"]

    def knows(self, *others):
        """Permanent neighbour entries for ``others``: no ARP, so frame counts are exact."""
        for other in others:
            self.ns.ip("neigh", "replace", other.ip, "lladdr", other.mac, "dev", self.tap,
                       "nud", "permanent")  # fmt: skip

    def tap_counters(self):
        """The kernel's counters of the TAP: ``tx`` = frames it handed to the forwarder."""
        return self.ns.link(self.tap)["stats64"]

    def ping(self, other, count=3, interval="0.2"):
        return self.ns.exec(
            "ping", "-c", str(count), "-i", interval, "-W", "2", other.ip, check=False, timeout=30
        )


def underlay(ns1, ns2, ip1, ip2):
    """Join two namespaces with a veth pair on 198.18.x.0/24; return the device names."""
    d1, d2 = unique("u"), unique("u")
    ns1.ip("link", "add", d1, "type", "veth", "peer", "name", d2, "netns", ns2.name)
    ns1.ip("addr", "add", f"{ip1}/24", "dev", d1)
    ns2.ip("addr", "add", f"{ip2}/24", "dev", d2)
    ns1.ip("link", "set", d1, "up")
    ns2.ip("link", "set", d2, "up")
    return d1, d2


def blast(ns, dev, count, *args, seconds=30):
    """Send ``count`` raw frames out of ``dev`` in ``ns`` (benchmarks/blast.py); wait
    for it and return its report ``{"sent", "dropped", "seconds"}``."""
    out = ns.exec(
        sys.executable, BLAST, dev, "--count", str(count), "--seconds", str(seconds), *args,
        timeout=seconds + 30,
    )  # fmt: skip
    return json.loads(out.stdout)


def hosts(make_netns, n):
    return [Host(make_netns(), i) for i in range(n)]


def iperf3(client, server, seconds=2, wait=None, extra=()):
    """Run an iperf3 TCP test from client to server; return the parsed JSON result.

    Args:
        extra: more client options, e.g. ``("-P", "8")`` for eight flows.
        wait: ``wait(proc)`` waits for a process; pass :func:`gevent_wait`
            when the forwarder runs in this process's hub.  Default: block.
    """
    wait = wait or (lambda proc: proc.wait(timeout=60))
    srv = server.ns.popen(
        "iperf3", "-s", "-1", "--forceflush", "-B", server.ip, stdout=subprocess.PIPE, text=True
    )
    try:
        for _ in range(5):
            if "Server listening" in srv.stdout.readline():
                break
        else:
            raise AssertionError("iperf3 server did not start")
        cli = client.ns.popen(
            "iperf3",
            "-c",
            server.ip,
            "-t",
            str(seconds),
            "-J",
            *extra,
            stdout=subprocess.PIPE,
            text=True,
        )
        wait(cli)
        out = cli.stdout.read()  # read after exit: the JSON report fits a pipe buffer
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait()
    assert cli.returncode == 0, out
    return json.loads(out)


def gevent_wait(proc, timeout=60):
    """Wait for a process without blocking the hub."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{proc.args} did not finish in {timeout} s")
        gevent.sleep(0.02)


class TapForward:
    """`tap-forward` run as a subprocess, as a user would; JSON logs on stderr."""

    def __init__(self, *args, tmp_path, netns=None, prefix=(), env=None):
        """Start it (inside ``netns`` if given, behind the command ``prefix`` if given,
        with ``env`` added to its environment)."""
        self.log_path = tmp_path / f"tap-forward-{unique('')}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        prefix = (["ip", "netns", "exec", netns] if netns else []) + list(prefix)
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, SCRIPT, "--log-format", "json", *args],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env={**python_env(), **(env or {})},
        )

    def events(self):
        out = []
        with open(self.log_path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append({"event": "<not json>", "line": line})
        return out

    def wait_for(self, event, timeout=10, **match):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if e.get("event") == event and all(e.get(k) == v for k, v in match.items()):
                    return e
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(
            f"no {event!r} event (exit {self.proc.poll()}); log:\n{self.log_path.read_text()}"
        )

    def count(self, event, **match):
        """How many times ``event`` (with these fields) was logged so far."""
        return sum(
            1
            for e in self.events()
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        )

    def rss_kib(self):
        """The process's resident set size in KiB (VmRSS)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def final_stats(self, timeout=2.0):
        """SIGTERM, check the exit status is 0, return the last stats line per endpoint."""
        status, _ = self.terminate(timeout=timeout)
        assert status == 0, self.log_path.read_text()
        return {e["endpoint"]: e for e in self.events() if e["event"] == "stats"}

    def terminate(self, timeout=1.0):
        """SIGTERM; return (exit status, seconds it took)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(timeout=timeout)
        return status, time.monotonic() - start

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

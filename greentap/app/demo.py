"""``tap-forward --demo``: see the forwarder work on any Linux machine, as root.

Builds two throw-away network namespaces, each holding a TAP with an address
from 198.18.0.0/15 (the benchmarking range), forwards between the TAPs, pings
across, prints the counters and removes everything it made, also on Ctrl-C or
failure.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from typing import TextIO

import structlog

from greentap.app.forwarder import Forwarder
from greentap.app.logs import PROG
from greentap.errors import OpenTunFailed, SystemRefused
from greentap.ports.tap import TapPort

__all__ = ["run_demo"]

ADDRESSES = ("198.18.0.1", "198.18.0.2")
COLUMNS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "tx_dropped", "tx_errors")


def _ip(*args: str) -> None:
    subprocess.run(("ip", *args), check=True, capture_output=True, text=True, timeout=30)


def _preflight() -> None:
    if os.geteuid() != 0:
        raise OpenTunFailed("--demo creates namespaces and TAPs: run it as root", errno=errno.EPERM)
    for tool in ("ip", "ping"):
        if shutil.which(tool) is None:
            raise SystemRefused(
                f"--demo needs `{tool}` (Debian: iproute2, iputils-ping)", errno=errno.ENOENT
            )


def run_demo(out: TextIO | None = None, count: int = 5) -> int:
    """Run the demo; return 0 if the ping across got every reply (or on Ctrl-C), else 5.

    Args:
        out: where to print (default stdout).
        count: pings to send.

    Raises:
        GreentapError: not root, a tool missing, or a device could not be opened.
    """
    out = out if out is not None else sys.stdout
    _preflight()
    log = structlog.get_logger(PROG)
    tag = os.getpid()
    namespaces = (f"gtdemo-{tag}-a", f"gtdemo-{tag}-b")
    names = (f"gtd{tag}a", f"gtd{tag}b")
    made: list[str] = []
    forwarder: Forwarder | None = None
    ports: list[TapPort] = []

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    try:
        say("greentap demo: two network namespaces, a TAP in each, tap-forward between them")
        for ns in namespaces:
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for ns, name, addr in zip(namespaces, names, ADDRESSES, strict=True):
            ports.append(TapPort(name, netns=ns))
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", name)
            say(f"  namespace {ns}: {name} {addr}/24")
        forwarder = Forwarder(ports, logger=log)
        ports = []  # the forwarder owns them now
        forwarder.handle_signals()
        forwarder.start()
        argv = ("ip", "netns", "exec", namespaces[0], "ping", "-c", str(count), "-i", "0.2")
        say(f"$ {' '.join(argv)} -W 2 {ADDRESSES[1]}")
        ping = subprocess.Popen(
            (*argv, "-W", "2", ADDRESSES[1]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        interrupted = False
        try:
            # Wait cooperatively: the forwarder runs on this same hub.
            while ping.poll() is None:
                if forwarder.wait(0.05):
                    interrupted = True
                    say("interrupted: stopping")
                    break
        finally:
            if ping.poll() is None:
                ping.kill()
            output, _ = ping.communicate()
        for line in output.splitlines():
            say(f"  {line}")
        say()
        say("counters:")
        say(f"  {'endpoint':<14}" + "".join(f"{c:>12}" for c in COLUMNS))
        for port in forwarder.stats()["ports"]:
            say(f"  {port['endpoint']:<14}" + "".join(f"{port[c]:>12}" for c in COLUMNS))
        if interrupted:
            return 0  # a stop the user asked for, as for the forwarder itself
        ok = ping.returncode == 0
        say()
        say("ping across the forwarder: " + ("OK, 0% loss" if ok else "FAILED"))
        return 0 if ok else 5
    finally:
        if forwarder is not None:
            forwarder.stop()
        for port in ports:
            port.close()
        for ns in made:
            try:
                _ip("netns", "del", ns)
            except (OSError, subprocess.SubprocessError) as exc:
                say(f"warning: could not delete namespace {ns}: {exc}")
        if made:
            say("cleaned up: namespaces and TAPs removed")

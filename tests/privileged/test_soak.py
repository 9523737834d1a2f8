"""The soak script in its short form: 60 s of mixed load through tap-forward."""

import json
import os
import subprocess
import sys

from tests.privileged.conftest import python_env
from tests.privileged.topology import ROOT

SOAK = os.path.join(ROOT, "benchmarks", "soak.py")


def test_a_minute_of_mixed_load_leaves_no_growth_and_counters_that_add_up(tmp_path):
    """benchmarks/soak.py --duration 60: ping, iperf3 TCP and small-frame bursts for a
    minute; memory and fds flat, the process alive, every frame read accounted for
    as written or dropped by reason, the forwarder's counters equal to the kernel's,
    every burst frame accounted for, TCP never stalled, no ping lost beyond 1%.
    Its report is printed."""
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, SOAK, "--duration", "60", "--interval", "10", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env=python_env(),
    )
    print(proc.stdout[proc.stdout.find("soak:") :])
    assert out.exists(), proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    failed = [c for c in report["checks"] if not c["passed"]]
    assert not failed, failed
    assert proc.returncode == 0
    assert len([s for s in report["samples"] if "rss_kib" in s]) >= 7
    names = [c["check"] for c in report["checks"]]
    assert len(names) == 10, names  # every check ran, none was left out
    assert sum("the forwarder's counters are the kernel's" in n for n in names) == 2

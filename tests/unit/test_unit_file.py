"""examples/systemd/tap-forward.service: a unit systemd accepts, running what the parser takes."""

import configparser
import os
import shlex
import shutil
import subprocess

import pytest

from greentap.cli import build_parser

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
UNIT = os.path.join(ROOT, "examples", "systemd", "tap-forward.service")
SCRIPT = os.path.abspath(os.path.join(ROOT, "scripts", "tap-forward"))


def service_section():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNIT)
    return parser["Service"]


def test_the_unit_is_notify_least_privilege_and_its_command_parses():
    """Type=notify with a watchdog and reload by SIGHUP, its own User= with only
    CAP_NET_ADMIN, and an ExecStart whose options tap-forward's parser accepts."""
    service = service_section()
    assert service["Type"] == "notify" and int(service["WatchdogSec"]) > 0
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["User"] != "root" and service["AmbientCapabilities"] == "CAP_NET_ADMIN"
    argv = shlex.split(service["ExecStart"])
    args = build_parser().parse_args(argv[1:])
    assert args.config == "/etc/tap-forward.toml" and args.control.startswith("/run/tap-forward/")


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    """`systemd-analyze verify` (ExecStart pointed at this checkout's script) reports
    nothing: no unknown key, no bad value."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing (Debian: systemd)")
        pytest.skip("systemd-analyze is not installed")
    with open(UNIT) as f:
        text = f.read().replace("/usr/local/bin/tap-forward", SCRIPT)
    unit = tmp_path / "tap-forward.service"
    unit.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # sanitize's, for Python
    out = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                         text=True, timeout=60, env=env)  # fmt: skip
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr

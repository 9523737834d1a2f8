"""tap-forward's command line, run as a user would: one-line errors, exit statuses."""

import os
import shutil
import subprocess
import sys

import pytest

import greentap
from greentap import cli

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "tap-forward")


def tap_forward(*args):
    """Run scripts/tap-forward with the greentap under test."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=30, env=env
    )


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        ((), cli.EXIT_USAGE, "need at least two endpoints, got 0"),
        (("tap0",), cli.EXIT_USAGE, "need at least two endpoints, got 1"),
        (("foo:x", "tap1"), cli.EXIT_USAGE, "unknown endpoint type 'foo'"),
        (("a" * 16, "tap1"), cli.EXIT_USAGE, "TapNameTooLong"),
        (("tap:a b", "tap1"), cli.EXIT_USAGE, "whitespace"),
        (("--mtu", "10", "a", "b"), cli.EXIT_USAGE, "between 68 and 65535"),
        (("--bogus",), cli.EXIT_USAGE, "unrecognized arguments"),
        (("--demo", "tap0"), cli.EXIT_USAGE, "--demo takes no endpoints"),
        (("--workers", "0", "a", "b"), cli.EXIT_USAGE, "between 1 and 256"),
        (
            ("--workers", "2", "a", "udp://127.0.0.1:9?local=127.0.0.1:0"),
            cli.EXIT_USAGE,
            "--workers needs every endpoint to be a TAP",
        ),
        (("--workers", "2", "a", "b", "pcap:-"), cli.EXIT_USAGE, "--workers needs every"),
        (("tap0?rate=0", "tap1"), cli.EXIT_USAGE, "expected frames per second > 0"),
    ],
)
def test_errors_are_one_line_with_a_documented_status(args, status, message):
    """Every usage error is one line on stderr, no traceback, and the documented status."""
    out = tap_forward(*args)
    assert out.returncode == status
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tap-forward: error: ")
    assert message in lines[0]
    assert "Traceback" not in out.stderr


def test_help_shows_examples_and_exit_statuses():
    """--help documents endpoints, examples and every exit status."""
    out = tap_forward("--help")
    assert out.returncode == 0
    for text in ("examples:", "tap-forward --demo", "tap:NAME?netns=NS", "exit status:", "--stats"):
        assert text in out.stdout


def test_version():
    """--version prints the package version."""
    out = tap_forward("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"tap-forward {greentap.__version__}"


def test_exit_status_mapping():
    """Errors map onto statuses by whose fault they were."""
    import errno

    assert cli.exit_status(greentap.OpenTunFailed.from_errno("t", errno.EPERM)) == 3
    assert cli.exit_status(greentap.SetTapAttributes.from_errno("t", errno.EBUSY)) == 4
    assert cli.exit_status(greentap.OpenTunFailed.from_errno("t", errno.ENOENT)) == 5
    assert cli.exit_status(greentap.TapNameTooLong("x" * 20)) == 2


def test_installed_command_exists():
    """The script is installed as a command next to the interpreter (when installed)."""
    installed = shutil.which("tap-forward", path=os.path.dirname(sys.executable))
    if installed is None:
        pytest.skip("greentap is not installed in this interpreter's environment")
    out = subprocess.run([installed, "--version"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == f"tap-forward {greentap.__version__}"

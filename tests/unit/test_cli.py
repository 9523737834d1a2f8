"""tap-forward's command line, run as a user would: one-line errors, exit statuses."""

import os
import shutil
import subprocess
import sys

import pytest

import greentap
from greentap.app import exits
from greentap.green import relay

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "tap-forward")


def tap_forward(*args, env=None):
    """Run scripts/tap-forward with the greentap under test."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **(env or {})}
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=30, env=env
    )


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        ((), exits.EXIT_USAGE, "need at least two endpoints that carry traffic"),
        (("tap0",), exits.EXIT_USAGE, "or a listening one (unix:PATH?listen, tcp://"),
        (("foo:x", "tap1"), exits.EXIT_USAGE, "unknown endpoint type 'foo'"),
        (("a" * 16, "tap1"), exits.EXIT_USAGE, "TapNameTooLong"),
        (("tap:a b", "tap1"), exits.EXIT_USAGE, "whitespace"),
        (("--mtu", "10", "a", "b"), exits.EXIT_USAGE, "expected a whole number from 68 to 65535"),
        (("--bogus",), exits.EXIT_USAGE, "unrecognized arguments"),
        (("--demo", "tap0"), exits.EXIT_USAGE, "--demo takes no endpoints"),
        (("--workers", "0", "a", "b"), exits.EXIT_USAGE, "expected a whole number from 1 to 256"),
        (
            ("--workers", "2", "a", "udp://127.0.0.1:9?local=127.0.0.1:0"),
            exits.EXIT_USAGE,
            "--workers needs every endpoint to be a TAP",
        ),
        (("--workers", "2", "a", "b", "pcap:-"), exits.EXIT_USAGE, "--workers needs every"),
        (("tap0?rate=0", "tap1"), exits.EXIT_USAGE, "rate '0': expected a number above 0"),
        (("--config", "/nonexistent.toml"), exits.EXIT_USAGE, "/nonexistent.toml: cannot read"),
        (("--command", "list"), exits.EXIT_USAGE, "--command needs --control PATH"),
        (("--control", "/x", "--command", "jump"), exits.EXIT_USAGE, "unknown command 'jump'"),
        (("--control", "/x", "--command", "add", "a"), exits.EXIT_USAGE, "add NAME ENDPOINT"),
        (
            ("--control", "/nonexistent.sock", "--command", "list"),
            exits.EXIT_SYSTEM,
            "cannot reach the control socket",
        ),
        (("--control", "x" * 120, "a", "b"), exits.EXIT_USAGE, "1 to 107 bytes"),
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


def test_a_config_file_error_is_one_line_naming_file_line_and_key(tmp_path):
    """--config with a bad value: exit 2, one line FILE:LINE: key ...; the command line's
    own value for that option does not hide the file's error (the file is checked whole)."""
    path = tmp_path / "bad.toml"
    path.write_text('stats = 1\n[[endpoint]]\nname = "a"\nkind = "tap"\nvni = 3\n')
    out = tap_forward("--config", str(path))
    assert out.returncode == exits.EXIT_USAGE
    assert out.stderr.splitlines() == [
        f"tap-forward: error: {path}:5: endpoint 'a', key 'vni': unknown key for a tap "
        "endpoint (known: burst, device, native, netns, rate, trunk, vlan)"
    ]
    path.write_text("mtu = 1\n")
    out = tap_forward("--config", str(path), "--mtu", "1500", "a", "b")
    assert out.returncode == exits.EXIT_USAGE and f"{path}:1: key 'mtu'" in out.stderr


def test_help_shows_examples_and_exit_statuses():
    """--help documents endpoints, examples and every exit status."""
    out = tap_forward("--help")
    assert out.returncode == 0
    for text in ("examples:", "tap-forward --demo", "tap:NAME?netns=NS", "exit status:", "--stats"):
        assert text in out.stdout


def test_version_says_which_relay_loop_runs():
    """--version prints the package version, then which relay loop runs and what does
    the software offloads' per-byte work (and why not C)."""
    from greentap.core import _accel

    out = tap_forward("--version")
    assert out.returncode == 0
    first, second, third = out.stdout.strip().splitlines()
    assert first == f"tap-forward {greentap.__version__}"
    assert second == (
        "relay loop: C" if relay.LOOP == "c" else f"relay loop: pure Python ({relay.LOOP_REASON})"
    )
    assert third == (
        "software offloads: C"
        if _accel.offload is not None
        else f"software offloads: pure Python ({_accel.REASON})"
    )
    pure = tap_forward("--version", env={"GREENTAP_PURE_PYTHON": "1"})
    assert pure.stdout.strip().splitlines()[1:] == [
        "relay loop: pure Python (GREENTAP_PURE_PYTHON is set)",
        "software offloads: pure Python (GREENTAP_PURE_PYTHON is set)",
    ]


def test_exit_status_mapping():
    """Errors map onto statuses by whose fault they were."""
    import errno

    assert exits.exit_status(greentap.OpenTunFailed.from_errno(errno.EPERM, endpoint="t")) == 3
    assert exits.exit_status(greentap.SetTapAttributes.from_errno(errno.EBUSY, endpoint="t")) == 4
    assert exits.exit_status(greentap.OpenTunFailed.from_errno(errno.ENOENT, endpoint="t")) == 5
    assert exits.exit_status(greentap.TapNameTooLong(endpoint="x" * 20)) == 2
    assert exits.exit_status(greentap.NotATapDevice("fd 987: not open")) == 2


def test_installed_command_exists():
    """The script is installed as a command next to the interpreter (when installed)."""
    installed = shutil.which("tap-forward", path=os.path.dirname(sys.executable))
    if installed is None:
        pytest.skip("greentap is not installed in this interpreter's environment")
    out = subprocess.run([installed, "--version"], capture_output=True, text=True, timeout=30)
    assert out.stdout.splitlines()[0] == f"tap-forward {greentap.__version__}"


def test_python_dash_m_greentap_is_tap_forward():
    """`python -m greentap` is the same command as tap-forward."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    for args, status, text in ((["--version"], 0, "tap-forward "), (["tap0"], 2, "at least two")):
        out = subprocess.run(
            [sys.executable, "-m", "greentap", *args],
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip
        assert out.returncode == status
        assert text in out.stdout + out.stderr


def test_a_system_error_is_status_5_on_one_line(tmp_path):
    """A capture in a directory that does not exist: the system refuses, status 5, one
    line naming the file; the capture is opened first, so no TAP was touched."""
    out = tap_forward(f"pcap:{tmp_path}/no/such/dir/x.pcap", "a", "b")
    lines = out.stderr.strip().splitlines()
    assert (out.returncode, len(lines)) == (exits.EXIT_SYSTEM, 1), out.stderr
    assert lines[0].startswith("tap-forward: error: EndpointUnavailable: pcap:")
    assert "No such file or directory" in lines[0] and "Traceback" not in out.stderr


def test_an_internal_error_is_status_1_on_one_line():
    """A bug (here one planted in the start-up) is status 1 and one line saying it is an
    internal error, never a traceback."""
    code = (
        "import sys; from greentap.app import startup; "
        "startup.execute = lambda *a, **k: {}['planted']; "
        "from greentap.cli import main; sys.exit(main(['a', 'b']))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env
    )
    lines = out.stderr.strip().splitlines()
    assert (out.returncode, len(lines)) == (exits.EXIT_INTERNAL, 1), out.stderr
    assert lines[0] == "tap-forward: error: internal error: KeyError: 'planted'"

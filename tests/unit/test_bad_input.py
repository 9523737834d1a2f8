"""Bad input gets one line on stderr and its documented exit status, never a traceback.

A table of the malformed invocations found by hand (each once exited 1 with
"internal error", or with the wrong status), run as a user would run them;
then property-based tests that feed random endpoint strings and options to
the parser and the command line and never see exit 1, a traceback, or an
exception that is not a GreentapError.
"""

import contextlib
import io
import os
import subprocess
import sys

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greentap import cli
from greentap.app import exits, startup
from greentap.core.endpoints import parse_endpoint
from greentap.errors import GreentapError, UsageError

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "tap-forward")
USAGE, PERMISSION = exits.EXIT_USAGE, exits.EXIT_PERMISSION

# (arguments, exit status, text of the one error line).  Every case fails
# before anything is opened, so none needs privileges.
BAD = [
    (["vxlan://[::1?vni=42", "tap1"], USAGE, "remote '[::1': missing ']'"),
    (["udp://[::1:5555", "tap1"], USAGE, "missing ']'"),
    (["vxlan://[zz]:4789?vni=42", "tap1"], USAGE, "'zz' in brackets is not an IPv6 address"),
    (["fd:987", "fd:988"], USAGE, "NotATapDevice: fd:987: fd 987: Bad file descriptor"),
    (["tap:x?netns=", "tap1"], USAGE, "option 'netns' needs a value"),
    (["--stats", "inf", "a", "b"], USAGE, "argument --stats: expected 0 (off) or a number"),
    (["--stats", "1e-9", "a", "b"], USAGE, "argument --stats: expected 0 (off) or a number"),
    (["--keep-warm", "1e9", "a", "b"], USAGE, "argument --keep-warm: expected 0 (off)"),
    (["udp://127.0.0.1:0", "tap1"], USAGE, "port '0': expected a whole number from 1"),
    (["vxlan://198.18.0.2:0?vni=1", "tap1"], USAGE, "port '0'"),
    (["vxlan://198.18.0.2?vni=\u0664\u0662", "tap1"], USAGE, "vni '\u0664\u0662': expected"),
    (["vxlan://198.18.0.2?vni=\uff14\uff12", "tap1"], USAGE, "expected a whole number"),
    (["vxlan://198.18.0.2?vni=\u00b2", "tap1"], USAGE, "vni '\u00b2': expected"),
    (["udp://127.0.0.1:\u00b2", "tap1"], USAGE, "port '\u00b2'"),
    (["fd:\u00b2", "tap1"], USAGE, "expected fd:N"),
    (["packet:eth0?qdisc=maybe", "tap1"], USAGE, "qdisc 'maybe': expected bypass or use"),
    (["--x\x85y", "a", "b"], USAGE, "--x\\x85y"),  # a line break echoed back is escaped
    (["--x\u2028y", "a", "b"], USAGE, "--x\\u2028y"),
    (["packet:eth0/x", "tap1"], USAGE, "eth0/x: name contains '/'"),
    (["--offload", "on", "packet:eth0", "fd:5"], USAGE, "--offload on needs"),
    (["pcap:/tmp/x.pcap?snaplen=\u00b2", "a", "b"], USAGE, "snaplen '\u00b2'"),
    (["--mtu", "\uff16\uff18", "a", "b"], USAGE, "argument --mtu: expected a whole number"),
    (["--max-macs", "1_000", "a", "b"], USAGE, "argument --max-macs"),
    (["--aging", "nan", "a", "b"], USAGE, "argument --aging"),
    (["--workers", "\u00b2", "a", "b"], USAGE, "argument --workers"),
    (["--group", "nogroup", "a", "b"], USAGE, "--group needs --user"),
    (["--work", "2", "a", "b"], USAGE, "unrecognized arguments: --work"),
    (["--rep", "7", "a", "b"], USAGE, "unrecognized arguments: --rep"),
    (["--report-fd", "7", "a", "b"], USAGE, "unrecognized arguments: --report-fd"),
    (["--worker-index", "1", "a", "b"], USAGE, "unrecognized arguments: --worker-index"),
    (["--metrics", "99999", "a", "b"], USAGE, "argument --metrics"),
    (["--metrics", "\u00b9", "a", "b"], USAGE, "argument --metrics"),
    (["tap0", "pcap:-"], USAGE, "need at least two endpoints that carry traffic"),
    (["tap0", "tap:tap0", "tap1"], USAGE, "are the same endpoint"),
    (["pcap:/tmp/x?rotate=1", "a", "b"], USAGE, "rotate=1 is too small for one frame"),
    (["tap0?rate=1e999", "tap1"], USAGE, "rate '1e999'"),
    (["tap0?rate=10&&burst=2", "tap1"], USAGE, "unknown option ''"),
    (["vxlan:198.18.0.2", "tap1"], USAGE, "expected vxlan://"),
    (["udp://a b:5", "tap1"], USAGE, "expected an IPv4 address, a host name or [IPv6]"),
    (
        ["vxlan://[::1]?vni=1&remote=127.0.0.1&local=[::1]:0", "udp://127.0.0.1:9"],
        USAGE,
        "mix IPv4 and IPv6",
    ),
    (["--user", "nosuchuser", "a", "b"], PERMISSION, "no such user: 'nosuchuser'"),
    (["--user", "\u00b2", "a", "b"], PERMISSION, "no such user"),
    (["--user", "nobody", "--group", "99999999999", "a", "b"], PERMISSION, "no such group"),
]


def tap_forward(*args):
    """Run scripts/tap-forward with the greentap under test, as a user would."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=30, env=env
    )


@pytest.mark.parametrize(("args", "status", "text"), BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_input_is_one_line_and_its_documented_status(args, status, text):
    """Each malformed invocation exits with its documented status and one line
    naming what is wrong; nothing is opened (no TAP named a or b appears)."""
    out = tap_forward(*args)
    lines = out.stderr.strip().splitlines()
    assert (out.returncode, len(lines)) == (status, 1), out.stderr
    assert lines[0].startswith("tap-forward: error: ")
    assert text in lines[0]
    assert "internal error" not in out.stderr and "Traceback" not in out.stderr
    assert not os.path.exists("/sys/class/net/a")


def test_help_into_a_closed_pipe_is_not_an_error():
    """`tap-forward --help | head -1`: the reader leaves early; exit 0, nothing on stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # the reader is gone before the first byte
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == b"", err


# --- property-based ------------------------------------------------------------------
# Characters that break parsers: digits of other scripts, superscripts, brackets,
# separators, escapes, whitespace, NUL, a lone surrogate (undecodable argv bytes).
TRICKY = "0123456789\u00b2\u00b9\u0664\u0662\uff14\uff12\u0967[]:?&=%/#@.-_ \t\0\udcff"
text = st.text(alphabet=st.sampled_from(TRICKY) | st.characters(), max_size=24)
numberish = (
    st.sampled_from(
        ["0", "1", "-1", "4789", "65535", "65536", "1e3", "1e999", "inf", "nan", "0.5", "1_0", ""]
    )
    | text
)
KEYS = ["netns", "rate", "burst", "vni", "remote", "local", "snaplen", "rotate", "keep", "x"]
query = st.lists(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), numberish), max_size=4
).map("&".join)
host = st.sampled_from(["198.18.0.2", "[::1]", "[zz]", "[::1", "localhost", "a b", ""]) | text
endpoint = st.one_of(
    st.builds(
        lambda p, t: p + t,
        st.sampled_from(["", "tap:", "vxlan://", "udp://", "pcap:", "fd:", "packet:", "foo:"]),
        text,
    ),
    st.builds(
        lambda s, h, port, q: f"{s}{h}{port}?{q}",
        st.sampled_from(["vxlan://", "udp://"]),
        host,
        st.sampled_from(["", ":4789", ":0", ":\u00b2", ":99999"]) | text.map(":".__add__),
        query,
    ),
    st.builds(lambda n, q: f"tap:{n}?{q}", st.sampled_from(["tap0", "x" * 16, "a b"]), query),
    st.builds(lambda n, q: f"fd:{n}?{q}", numberish, query),
    st.builds(lambda p, q: f"pcap:{p}?{q}", st.sampled_from(["-", "/tmp/gt.pcap", ""]), query),
)
FLAGS = [
    "--stats",
    "--mtu",
    "--metrics",
    "--max-macs",
    "--aging",
    "--keep-warm",
    "--workers",
    "--offload",
    "--log-format",
    "--log-level",
    "--user",
    "--group",
]
option = st.builds(lambda f, v: [f, v], st.sampled_from(FLAGS), numberish)
argv = st.builds(
    lambda opts, eps, extra: [x for o in opts for x in o] + eps + extra,
    st.lists(option, max_size=3),
    st.lists(endpoint, max_size=4),
    st.lists(st.sampled_from(["--demo", "--bogus", "-x", "--", "--version"]), max_size=1),
)


@given(endpoint)
@settings(max_examples=600, deadline=None)
def test_random_endpoints_parse_or_raise_a_usage_error(text):
    """Any string parses to an endpoint or raises a UsageError: never another exception."""
    try:
        spec = parse_endpoint(text)
    except UsageError:
        return
    assert spec.kind in ("tap", "vxlan", "udp", "pcap", "fd", "packet")


@given(argv)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_invocations_never_exit_1_or_print_a_traceback(args):
    """Random options and endpoints through the whole command line, up to the point
    where it would open something: an exit status of 0, 2 or 3 and at most one line."""
    planned = []
    real_execute, real_demo = startup.execute, cli.run_demo
    startup.execute = lambda plan, log, **kw: planned.append(plan) or 0
    cli.run_demo = lambda: 0
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                status = cli.main(args)
            except SystemExit as exc:  # argparse's usage errors, --help, --version
                status = exc.code
    finally:
        startup.execute, cli.run_demo = real_execute, real_demo
        structlog.reset_defaults()
    stderr = err.getvalue()
    assert status in (0, USAGE, PERMISSION), (args, status, stderr)
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    if status:
        assert len(stderr.strip().splitlines()) == 1, stderr
    else:
        assert not stderr.strip() or "--version" in args or "--demo" in args, stderr


def test_the_plan_accepts_what_it_should():
    """The checks before opening are not so strict that valid setups fail."""
    plan = startup.plan(
        startup.Options(
            endpoints=[
                "tap0",
                "tap:tap1?netns=blue&rate=100",
                "vxlan://[::1]?vni=7",
                "udp://127.0.0.1:5555?local=127.0.0.1:0",
                "pcap:-",
                "fd:3",
            ],
        )
    )
    assert [s.kind for s in plan.specs] == ["tap", "tap", "vxlan", "udp", "pcap", "fd"]
    assert plan.offload is False
    assert startup.plan(startup.Options(endpoints=["a", "b", "pcap:-"])).offload is True
    with pytest.raises(GreentapError):
        startup.plan(startup.Options(endpoints=["a", "b"], offload="on", workers=2, user="\0"))

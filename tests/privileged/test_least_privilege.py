"""Least privilege: forwarding as an unprivileged user, and with TAP fds passed by a helper."""

import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import greentap
from greentap.app import exits
from greentap.app.privileges import read_status
from tests.privileged.conftest import capless_python, python_env, unique
from tests.privileged.topology import TapForward, hosts

# Every test here runs over each relay loop, C and pure Python (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("relay_loop")


def test_user_drops_root_after_opening_and_keeps_forwarding(make_netns, tmp_path):
    """--user nobody: the running process has uid/gid 65534, no groups, no capabilities,
    and still forwards; SIGTERM still exits 0 and removes the TAPs it created."""
    a, b = hosts(make_netns, 2)
    tf = TapForward("--stats", "0", "--user", "nobody", "--group", "nogroup",
                    a.endpoint, b.endpoint, tmp_path=tmp_path)  # fmt: skip
    try:
        dropped = tf.wait_for("privileges_dropped")
        assert (dropped["uid"], dropped["gid"]) == (65534, 65534)
        status = read_status(f"/proc/{tf.proc.pid}/status")
        assert status["Uid"] == ["65534"] * 4 and status["Gid"] == ["65534"] * 4
        assert status["Groups"] == [] and int(status["CapEff"][0], 16) == 0
        a.configure()
        b.configure()
        out = a.ping(b, count=3)
        assert " 0% packet loss" in out.stdout, out.stdout
        assert tf.terminate(timeout=2)[0] == 0
    finally:
        tf.stop()
    assert a.ns.link(a.tap) is None and b.ns.link(b.tap) is None


def test_unknown_user_fails_closed(make_netns, tmp_path):
    """--user with a user that does not exist: one line, exit 3, before any endpoint
    is opened (nothing to leave behind)."""
    a, b = hosts(make_netns, 2)
    tf = TapForward("--user", "no-such-user-gt", a.endpoint, b.endpoint, tmp_path=tmp_path)
    try:
        assert tf.proc.wait(timeout=20) == exits.EXIT_PERMISSION
        lines = tf.log_path.read_text().strip().splitlines()
        assert "no such user" in lines[-1] and "Traceback" not in tf.log_path.read_text()
        events = [e["event"] for e in tf.events()]
        assert not {"endpoint_opened", "forwarding", "privileges_dropped"} & set(events)
    finally:
        tf.stop()
    assert a.ns.link(a.tap) is None and b.ns.link(b.tap) is None


def test_a_drop_that_fails_after_opening_fails_closed(make_netns, tmp_path):
    """--user nobody without CAP_SETUID/CAP_SETGID (removed by setpriv): the endpoints
    open, the drop fails, and tap-forward exits 3 without ever forwarding: the
    `forwarding` event never comes, the TAPs it created are gone."""
    a, b = hosts(make_netns, 2)
    tf = TapForward(
        "--stats", "0", "--user", "nobody", a.endpoint, b.endpoint, tmp_path=tmp_path,
        prefix=("setpriv", "--bounding-set=-setuid,-setgid", "--"),
    )  # fmt: skip
    try:
        assert tf.proc.wait(timeout=20) == exits.EXIT_PERMISSION
        text = tf.log_path.read_text()
        assert "PrivilegeDropFailed" in text.strip().splitlines()[-1], text
        events = [e["event"] for e in tf.events()]
        assert events.count("endpoint_opened") == 2  # it got as far as opening
        assert "forwarding" not in events and "privileges_dropped" not in events
    finally:
        tf.stop()
    assert a.ns.link(a.tap) is None and b.ns.link(b.tap) is None


CHILD = textwrap.dedent(
    """
    import socket, sys
    from greentap.cli import main
    sock = socket.socket(fileno=int(sys.argv[1]))
    _, fds, _, _ = socket.recv_fds(sock, 16, 2)
    sock.close()
    print("received", *fds, flush=True)
    sys.exit(main(["--stats", "0", "--log-format", "json"] + [f"fd:{fd}" for fd in fds]))
    """
)


def test_fds_from_a_privileged_helper_need_no_privilege(make_netns, tmp_path):
    """A helper opens two TAPs and sends their fds over a UNIX socket (SCM_RIGHTS) to a
    tap-forward without any capability, which forwards between them as fd:N endpoints."""
    a, b = hosts(make_netns, 2)
    taps = [greentap.Tap(h.tap, netns=h.ns.name) for h in (a, b)]
    helper, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    log = open(tmp_path / "child.log", "w")  # noqa: SIM115 - closed below
    child = subprocess.Popen(
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--",
         sys.executable, "-c", CHILD, str(child_end.fileno())],
        pass_fds=(child_end.fileno(),), stdout=subprocess.PIPE, stderr=log, text=True,
        env=python_env(),
    )  # fmt: skip
    child_end.close()
    try:
        for tap in taps:
            tap.up()  # configuring the link is the helper's job
        socket.send_fds(helper, [b"taps"], [t.fileno() for t in taps])
        for tap in taps:
            tap.close()  # the child holds the only copies now
        assert child.stdout.readline().startswith("received")
        status = read_status(f"/proc/{child.pid}/status")
        assert int(status["CapEff"][0], 16) == 0
        a.configure()
        b.configure()
        deadline = time.monotonic() + 10
        while True:  # the child may still be starting its forwarder
            out = a.ping(b, count=2)
            if " 0% packet loss" in out.stdout or time.monotonic() > deadline:
                break
        assert " 0% packet loss" in out.stdout, out.stdout
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=5) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        helper.close()
        log.close()
    assert a.ns.link(a.tap) is None  # the last fd closed with the child: the TAP is gone


def test_a_tap_owned_by_a_user_is_attached_by_that_user_without_privilege(netns):
    """A persistent TAP made with owner=<uid> (TUNSETOWNER) is attached later by a
    process of that uid holding no capability at all; for another owner the same
    process is refused with a message saying what is missing."""
    mine, theirs = unique(), unique()
    for name, owner in ((mine, 0), (theirs, "nobody")):
        greentap.Tap(name, netns=netns.name, persist=True, owner=owner).close()
    code = textwrap.dedent(
        f"""
        import greentap
        tap = greentap.Tap({mine!r})
        print("attached", tap.name, tap.created, tap.persistent)
        try:
            greentap.Tap({theirs!r})
        except greentap.OpenTunFailed as exc:
            print("refused", exc)
        """
    )
    out = capless_python(netns, code)
    assert out.returncode == 0, out.stderr
    assert f"attached {mine} False True" in out.stdout
    assert f"refused {theirs}: Operation not permitted" in out.stdout
    assert "owner/group must match" in out.stdout


def test_as_nobody_a_persistent_tap_it_owns_is_reattached_when_recreated(make_netns, forwarders):
    """tap-forward --user nobody, attached to a persistent TAP owned by nobody: the TAP
    is deleted and re-created (owner nobody).  While it is down, nobody may attach
    but not bring it up: that is logged once; once it is up it is re-attached,
    without root, and traffic flows."""
    a = hosts(make_netns, 1)[0]
    f = make_netns()
    b_tap, b_ip = unique("gh"), "198.18.0.2"
    f.ip("tuntap", "add", "dev", b_tap, "mode", "tap", "user", "nobody")
    tf = forwarders("--stats", "0", "--user", "nobody", a.endpoint, f"tap:{b_tap}", netns=f.name)
    tf.wait_for("privileges_dropped")
    f.ip("link", "del", b_tap)
    tf.wait_for("endpoint_failed", endpoint=b_tap)
    f.ip("tuntap", "add", "dev", b_tap, "mode", "tap", "user", "nobody")
    refused = tf.wait_for("endpoint_reattach_failed", endpoint=b_tap)
    assert "Operation not permitted" in refused["error"]  # bringing it up needs root
    f.ip("link", "set", b_tap, "up")
    tf.wait_for("endpoint_recovered", endpoint=b_tap)
    assert tf.count("endpoint_reattach_failed") == 1
    a.configure()
    f.ip("addr", "add", f"{b_ip}/24", "dev", b_tap)
    ping = a.ns.exec("ping", "-c", "3", "-i", "0.2", "-W", "2", b_ip, check=False, timeout=30)
    assert " 0% packet loss" in ping.stdout, ping.stdout
    assert tf.terminate(timeout=2)[0] == 0

"""tap-forward as a service: reloads under traffic, the control socket's owners, systemd."""

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from tests.privileged.conftest import python_env
from tests.privileged.topology import SCRIPT, hosts, wait_until

pytestmark = pytest.mark.privileged


def table(name, host, **extra):
    lines = [f'[[endpoint]]\nname = "{name}"\nkind = "tap"\ndevice = "{host.tap}"\n'
             f'netns = "{host.ns.name}"\n']  # fmt: skip
    lines += [f"{k} = {v}\n" for k, v in extra.items()]
    return "".join(lines)


def command(control, *words):
    """`tap-forward --control PATH --command WORDS`: (exit status, JSON reply)."""
    out = subprocess.run([sys.executable, SCRIPT, "--control", control, "--command", *words],
                         capture_output=True, text=True, timeout=60, env=python_env())  # fmt: skip
    assert out.stderr == "", out.stderr
    return out.returncode, json.loads(out.stdout)


def test_reloads_under_ping_lose_nothing_and_a_broken_file_keeps_the_setup(
    make_netns, forwarders, tmp_path
):
    """While 300 pings cross the unchanged pair a-b: a reload adds d, one gives c a
    rate limit (in place), one gives c another device (reopened), SIGHUP removes d, a
    broken file is refused with one log line and the setup stays; the ping loses
    nothing (0% loss) and each change shows in the control socket's list."""
    a, b, c, d = hosts(make_netns, 4)
    path, control = tmp_path / "tf.toml", str(tmp_path / "ctl.sock")
    path.write_text("stats = 0\n" + table("a", a) + table("b", b) + table("c", c))
    tf = forwarders("--config", str(path), "--control", control)
    tf.wait_for("control_socket")
    for h in (a, b):
        h.configure()
    a.knows(b)
    b.knows(a)
    ping = a.ns.popen("ping", "-c", "300", "-i", "0.01", "-W", "2", b.ip,
                      stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_until(lambda: a.tap_counters()["tx"]["packets"] >= 20, what="pings flowing")
        path.write_text("stats = 0\n" + table("a", a) + table("b", b) + table("c", c)
                        + table("d", d))  # fmt: skip
        status, reply = command(control, "reload")
        assert status == 0 and reply["reloaded"]["added"] == ["d"], reply
        assert reply["reloaded"]["unchanged"] == ["a", "b", "c"]
        assert d.ns.link(d.tap) is not None
        path.write_text("stats = 0\n" + table("a", a) + table("b", b) + table("c", c, rate=1000)
                        + table("d", d))  # fmt: skip
        status, reply = command(control, "reload")
        assert status == 0 and reply["reloaded"]["changed"] == ["c"], reply
        assert reply["reloaded"]["in_place"] == ["c"]  # a rate limit alone: not reopened
        c.tap = c.tap[:-1] + "z"  # another device: reopened
        path.write_text("stats = 0\n" + table("a", a) + table("b", b) + table("c", c, rate=1000)
                        + table("d", d))  # fmt: skip
        status, reply = command(control, "reload")
        assert reply["reloaded"]["changed"] == ["c"] and reply["reloaded"]["in_place"] == []
        assert c.ns.link(c.tap) is not None
        path.write_text("stats = 0\n" + table("a", a) + table("b", b) + table("c", c, rate=1000))
        tf.proc.send_signal(signal.SIGHUP)
        tf.wait_for("reloaded", removed=["d"])
        wait_until(lambda: d.ns.link(d.tap) is None, what="d's TAP removed")
        path.write_text("stats = 0\nmtu = 'big'\n" + table("a", a))
        tf.proc.send_signal(signal.SIGHUP)
        refused = tf.wait_for("reload_refused")
        assert "tf.toml:2: key 'mtu'" in refused["error"]
        status, reply = command(control, "list")
        assert [e["name"] for e in reply["endpoints"]] == ["a", "b", "c"]
        out, _ = ping.communicate(timeout=60)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
    assert ping.returncode == 0 and " 0% packet loss" in out, out
    assert "300 received" in out
    assert tf.count("endpoint_left", reason="reload") == 2  # c (changed), then d
    assert tf.count("reload_refused") == 1
    assert tf.terminate()[0] == 0


def _ask_as(uid, control):
    """Connect to ``control`` as ``uid`` in a forked child; its reply, or the errno."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing imported after the fork (/root is 0700)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            try:
                s.connect(control)
                s.sendall(b'{"command": "list"}\n')
                os.write(write, s.recv(65536))
            except OSError as exc:
                os.write(write, json.dumps({"errno": exc.errno}).encode())
        finally:
            os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return json.loads(data)


def test_the_control_socket_serves_root_and_the_user_only(make_netns, forwarders, tmp_path):
    """With --user nobody the socket is 0600 and nobody's: nobody is served, another uid
    cannot even connect (EACCES); made world-writable, the other uid is still refused,
    by SO_PEERCRED, with an error object."""
    a, b = hosts(make_netns, 2)
    # Outside pytest's 0700 directory: other uids may reach the file, its mode decides.
    where = tempfile.mkdtemp(prefix="gt-ctl-", dir="/tmp")
    os.chmod(where, 0o755)
    control = os.path.join(where, "ctl.sock")
    try:
        tf = forwarders("--stats", "0", "--control", control, "--user", "nobody", a.endpoint,
                        b.endpoint)  # fmt: skip
        tf.wait_for("privileges_dropped")
        st = os.stat(control)
        assert (oct(st.st_mode & 0o777), st.st_uid) == ("0o600", 65534)
        reply = _ask_as(65534, control)
        assert len(reply.get("endpoints", ())) == 2, reply
        assert _ask_as(65533, control) == {"errno": 13}
        assert len(command(control, "list")[1]["endpoints"]) == 2  # root
        os.chmod(control, 0o666)
        reply = _ask_as(65533, control)
        assert reply["ok"] is False and reply["error"] == "uid 65533 may not use this socket"
        assert tf.count("control_refused", uid=65533) == 1
        assert tf.terminate()[0] == 0
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_systemd_hears_ready_after_the_taps_are_attached_then_watchdog_and_stopping(
    make_netns, forwarders, tmp_path
):
    """With NOTIFY_SOCKET and WATCHDOG_USEC=1 s: READY=1 arrives when both persistent
    TAPs already have a reader (carrier up), then WATCHDOG=1 about every 0.5 s, then
    STOPPING=1 on SIGTERM, and the exit status is 0."""
    a, b = hosts(make_netns, 2)
    for h in (a, b):  # persistent TAPs: carrier comes up only when an fd attaches
        h.ns.ip("tuntap", "add", "mode", "tap", "name", h.tap)
        h.ns.ip("link", "set", h.tap, "up")
    path = str(tmp_path / "notify")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(path)
    systemd.settimeout(20)
    try:
        tf = forwarders("--stats", "0", a.endpoint, b.endpoint,
                        env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})  # fmt: skip
        first = systemd.recv(4096).decode()
        attached = ["NO-CARRIER" not in h.ns.link(h.tap)["flags"] for h in (a, b)]
        assert first.startswith("READY=1\nSTATUS=wire of 2 endpoints"), first
        assert attached == [True, True]
        times = []
        while len(times) < 5:
            if systemd.recv(4096) == b"WATCHDOG=1":
                times.append(time.monotonic())
        gaps = [t2 - t1 for t1, t2 in itertools.pairwise(times)]
        assert 0.35 < sum(gaps) / len(gaps) < 0.8, gaps
        tf.proc.send_signal(signal.SIGTERM)
        rest = []
        while not rest or rest[-1] != "STOPPING=1\nSTATUS=stopping":
            rest.append(systemd.recv(4096).decode())
        assert tf.proc.wait(timeout=10) == 0
    finally:
        systemd.close()
    for h in (a, b):  # what it found, it leaves: persistent, no reader now
        assert "NO-CARRIER" in h.ns.link(h.tap)["flags"]

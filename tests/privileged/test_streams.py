"""Stream endpoints (QEMU's framing over unix and TCP) between real TAPs in namespaces:
two tap-forward processes joined by a stream, a listener peers join and leave, hostile
peers, the socket file's life.  The QEMU guests are in tests/vm."""

import os
import socket
import stat
import subprocess

import pytest

from tests.privileged.topology import Host, iperf3, wait_until


def ping(host, ip, count=5, interval="0.1"):
    return host.ns.exec("ping", "-c", str(count), "-i", interval, "-W", "2", ip, check=False,
                        timeout=60)  # fmt: skip


@pytest.fixture
def sites(make_netns, forwarders, tmp_path):
    """Two hosts, each behind its own tap-forward: A listens on a stream endpoint,
    B connects to it.  ``sites(listen, connect)`` starts them; returns (a, b, tf_a, tf_b)."""

    def start(listen, connect, *extra):
        a, b = Host(make_netns(), 0), Host(make_netns(), 1)
        tf_a = forwarders("--stats", "0", *extra, a.endpoint, listen)
        opened = tf_a.wait_for("forwarding")
        tf_b = forwarders("--stats", "0", *extra, b.endpoint, connect)
        tf_b.wait_for("peer_connected")
        tf_a.wait_for("endpoint_joined")
        for h in (a, b):
            h.configure()
        return a, b, tf_a, tf_b, opened

    return start


def test_two_sites_joined_by_a_unix_stream(sites, tmp_path):
    """tap-forward listening on unix:PATH?listen and another connecting to unix:PATH,
    each with a TAP in its own namespace: ping with 0% loss and a TCP transfer; the
    listener turns the connection into a port of its own and says so."""
    path = tmp_path / "wire.sock"
    a, b, tf_a, tf_b, _ = sites(f"unix:{path}?listen", f"unix:{path}")
    result = ping(a, b.ip)
    assert " 0% packet loss" in result.stdout, result.stdout
    tcp = iperf3(a, b)
    assert tcp["end"]["sum_received"]["bytes"] > 1_000_000
    joined = tf_a.wait_for("endpoint_joined")
    assert joined["endpoint"] == f"unix:{path}#1" and joined["kind"] == "unix"
    stats = tf_b.final_stats()
    line = stats[f"unix:{path}"]
    assert line["rx_packets"] > 100 and line["tx_packets"] > 100 and line["connects"] == 1


def test_two_sites_joined_by_tcp(sites):
    """tcp://:0?listen picks a loopback port and logs it; tcp://127.0.0.1:PORT connects:
    ping and TCP cross, and SIGTERM stops both with status 0."""
    port = _free_port()
    a, b, tf_a, tf_b, _ = sites(f"tcp://127.0.0.1:{port}?listen", f"tcp://127.0.0.1:{port}")
    result = ping(a, b.ip)
    assert " 0% packet loss" in result.stdout, result.stdout
    tcp = iperf3(a, b)
    assert tcp["end"]["sum_received"]["bytes"] > 1_000_000
    assert tf_b.terminate(timeout=2)[0] == 0
    tf_a.wait_for("endpoint_left", endpoint=f"tcp://127.0.0.1:{port}#1")
    assert tf_a.terminate(timeout=2)[0] == 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_client_reconnects_when_the_listener_comes_back(sites, forwarders, tmp_path):
    """When the listening tap-forward dies, the connecting one says so once and keeps
    trying; a new listener on the same path (the stale socket file replaced) gets it
    back within the backoff, and ping works again."""
    path = tmp_path / "re.sock"
    a, b, tf_a, tf_b, _ = sites(f"unix:{path}?listen", f"unix:{path}")
    tf_a.proc.kill()  # a crash: the socket file stays behind
    tf_a.proc.wait()
    tf_b.wait_for("peer_disconnected")
    assert path.exists()
    tf_a2 = forwarders("--stats", "0", a.endpoint, f"unix:{path}?listen")
    tf_a2.wait_for("endpoint_joined", timeout=15)
    a.configure()  # the TAP was made again by the new forwarder
    result = ping(a, b.ip)
    assert " 0% packet loss" in result.stdout, result.stdout
    # Each outage is told once, however many attempts it took (a connection may
    # still slip into the dying listener's queue: then it is two outages).
    outages = tf_b.count("peer_disconnected")
    assert 1 <= outages <= 2 and tf_b.count("peer_unreachable") <= outages
    assert tf_b.count("peer_connected") == outages + 1


HOSTILE = """
import os, socket, struct, sys, time
path, kind = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
if kind == "huge":
    s.sendall(struct.pack("!I", 1 << 30) + bytes(1000))
elif kind == "garbage":
    s.sendall(os.urandom(65536))
# "deaf": never reads; the others wait to be closed
s.settimeout(30)
try:
    while s.recv(1 << 16) if kind != "deaf" else time.sleep(30):
        pass
except OSError:
    pass
"""


def test_hostile_peers_are_cut_off_while_a_ping_through_others_loses_nothing(sites, tmp_path):
    """While 100 pings cross a listener (A) to a connected site (B): a peer announcing
    a 1 GiB frame and one sending random bytes are disconnected, each with one log
    line and counted; one that never reads only costs drops on its own port.  The
    ping loses nothing and the forwarder keeps running."""
    import sys

    path = tmp_path / "h.sock"
    a, b, tf_a, _, _ = sites(f"unix:{path}?listen", f"unix:{path}")
    pinger = a.ns.popen("ping", "-c", "100", "-i", "0.02", "-W", "2", b.ip,
                        stdout=subprocess.PIPE, text=True)  # fmt: skip
    peers = [
        subprocess.Popen([sys.executable, "-c", HOSTILE, str(path), kind])
        for kind in ("huge", "garbage", "deaf")
    ]
    try:
        out, _ = pinger.communicate(timeout=60)
        assert " 0% packet loss" in out, out
        # Which connection is which depends on who connected first.
        wait_until(lambda: tf_a.count("endpoint_left") >= 2, what="two peers cut off")
        reasons = [e["reason"] for e in tf_a.events() if e["event"] == "endpoint_left"]
        assert len(reasons) == 2 and all("the peer announced a frame of" in r for r in reasons)
        assert any("1073741824 bytes" in r for r in reasons), reasons
        assert tf_a.proc.poll() is None
    finally:
        for p in peers:
            p.kill()
            p.wait()
    stats = tf_a.final_stats()
    listener = stats[f"unix:{path}?listen"]
    assert listener["drops"].get("rx_bad_length", 0) >= 1
    assert listener["departures"]["broken_framing"] == 2
    assert listener["accepted"] == 4


def test_the_socket_file_is_private_unless_told_and_removed_at_exit(forwarders, make_netns,
                                                                    tmp_path):  # fmt: skip
    """unix:PATH?listen&mode=0660&group=G makes the socket with those permissions and
    group, and SIGTERM removes it; a second tap-forward on a path something listens
    on exits 4 with one line naming it, and a path that is not a socket is left alone."""
    a = Host(make_netns(), 0)
    path = tmp_path / "m.sock"
    tf = forwarders("--stats", "0", a.endpoint, f"unix:{path}?listen&mode=0660&group=nogroup")
    tf.wait_for("forwarding")
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == _gid("nogroup")
    again = subprocess.run(
        [*_command(), "--stats", "0", f"unix:{path}?listen"], capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert again.returncode == 4, again.stderr
    assert again.stderr.count("\n") == 1 and "something already listens" in again.stderr
    assert tf.terminate(timeout=2)[0] == 0
    assert not path.exists()
    plain = tmp_path / "plain"
    plain.write_text("keep me")
    refused = subprocess.run([*_command(), f"unix:{plain}?listen"], capture_output=True,
                             text=True, timeout=30)  # fmt: skip
    assert refused.returncode == 4 and "is not a socket" in refused.stderr
    assert plain.read_text() == "keep me"


def _gid(name):
    import grp

    return grp.getgrnam(name).gr_gid


def _command():
    import sys

    from tests.privileged.topology import SCRIPT

    return [sys.executable, SCRIPT]


def test_a_thousand_connections_leave_no_fd_or_memory_behind(tmp_path):
    """benchmarks/cycles.py: 1,000 peers connecting, sending a frame and leaving, one
    after another (after 2,000 more as a warm-up): the forwarder holds the same fds
    afterwards, its RSS grows by less than 5%, and it exits 0.  Its report is printed."""
    import json
    import sys

    from tests.privileged.conftest import python_env
    from tests.privileged.topology import ROOT

    script, out = os.path.join(ROOT, "benchmarks", "cycles.py"), tmp_path / "cycles.json"
    proc = subprocess.run([sys.executable, script, "--json", str(out)], capture_output=True,
                          text=True, timeout=180, env=python_env())  # fmt: skip
    print(proc.stdout)
    assert out.exists(), proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert [c["check"] for c in report["checks"] if not c["passed"]] == [], report
    assert proc.returncode == 0 and report["cycles"] == 1000

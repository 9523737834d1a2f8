"""systemd's notify protocol against a test NOTIFY_SOCKET (a datagram socket we bind)."""

import os
import socket
import time

import gevent
import pytest
import structlog.testing

from greentap.app import startup
from greentap.app.daemon import Daemon
from greentap.app.forwarder import Forwarder
from greentap.app.notify import Notifier
from greentap.core.endpoints import parse_endpoint
from greentap.ports import open_ports


@pytest.fixture
def systemd(tmp_path):
    """A socket standing in for systemd's: (path, a function returning what it got)."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)

    def received():
        out = []
        while True:
            try:
                out.append(sock.recv(4096).decode())
            except BlockingIOError:
                return out

    yield path, received
    sock.close()


def test_the_environment_is_read_and_taken_away():
    """NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are removed (workers must not
    inherit them); the watchdog interval is half of WatchdogSec; a WATCHDOG_PID of
    another process, a relative path or no socket mean no watchdog or no notifier."""
    log = structlog.testing.CapturingLogger()
    env = {"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid()),
           "PATH": "/bin"}  # fmt: skip
    n = Notifier.from_environment(log, env)
    assert n is not None and n.watchdog_interval == 1.5
    assert env == {"PATH": "/bin"}
    n.close()
    n.close()  # harmless twice
    other = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}
    n = Notifier.from_environment(log, other)
    assert n is not None and n.watchdog_interval is None
    n.close()
    assert Notifier.from_environment(log, {"NOTIFY_SOCKET": "relative"}) is None
    assert Notifier.from_environment(log, {}) is None


def test_messages_arrive_and_a_missing_socket_is_logged_once(systemd, tmp_path):
    """ready, status, reloading (with MONOTONIC_USEC), stopping and watchdog arrive as
    sd_notify datagrams; a socket that went away fails quietly, logged once."""
    path, received = systemd
    log = structlog.testing.CapturingLogger()
    n = Notifier(path, None, log)
    assert n.ready("up") and n.status("s") and n.reloading() and n.stopping() and n.watchdog()
    got = received()
    assert got[:2] == ["READY=1\nSTATUS=up", "STATUS=s"]
    assert got[2].startswith("RELOADING=1\nMONOTONIC_USEC=")
    usec = int(got[2].split("MONOTONIC_USEC=")[1].split("\n")[0])
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 10_000_000
    assert got[3:] == ["STOPPING=1\nSTATUS=stopping", "WATCHDOG=1"]
    gone = Notifier(str(tmp_path / "gone"), None, log)
    assert not gone.watchdog() and not gone.watchdog()
    assert [c.args[0] for c in log.calls] == ["notify_failed"]
    for x in (n, gone):
        x.close()


def udp_pair():
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    a, b, c, d = (s.getsockname()[1] for s in socks)
    for s in socks:
        s.close()
    return [f"udp://127.0.0.1:{b}?local=127.0.0.1:{a}", f"udp://127.0.0.1:{d}?local=127.0.0.1:{c}"]


def test_a_service_is_ready_after_its_start_pings_the_watchdog_and_says_stopping(
    systemd, monkeypatch
):
    """Through Daemon: nothing before start(); READY=1 with a status line after it;
    WATCHDOG=1 at half of WATCHDOG_USEC (0.4 s: 5 in 1.1 s); STOPPING=1 when the
    stop begins, before the ports close."""
    path, received = systemd
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    log = structlog.testing.CapturingLogger()
    ports = open_ports([parse_endpoint(t) for t in udp_pair()])
    fwd = Forwarder(ports, keep_warm=None, monitor_interval=0)
    daemon = Daemon(fwd, startup.Options(), log, None)
    assert "NOTIFY_SOCKET" not in os.environ
    fwd.start()
    assert received() == []
    daemon.start()
    assert received() == ["READY=1\nSTATUS=wire of 2 endpoints; 0 frames in, 0 out"]
    gevent.sleep(1.1)
    pings = received()
    assert 3 <= pings.count("WATCHDOG=1") <= 6, pings  # every 0.2 s, not faster
    closed_at_stop = []
    fwd.stop_hooks.append(lambda: closed_at_stop.append(ports[0]._io.closed))
    fwd.stop()
    daemon.close()
    assert received()[-1] == "STOPPING=1\nSTATUS=stopping"
    assert closed_at_stop == [False]


def test_with_workers_ready_waits_until_every_worker_reported(systemd, monkeypatch):
    """A service with forwarding() (the workers' supervisor): READY=1 only once it says
    every worker forwards, not at its start."""
    from greentap.app.service import Service

    path, received = systemd
    monkeypatch.setenv("NOTIFY_SOCKET", path)

    class Supervised(Service):
        reported = False

        def forwarding(self):
            return self.reported

        def stats(self):
            return {"mode": "wire", "ports": []}

    service = Supervised(logger=structlog.testing.CapturingLogger())
    daemon = Daemon(service, startup.Options(), service.log, None)
    service.start()
    daemon.start()
    gevent.sleep(0.2)
    assert received() == []
    service.reported = True
    gevent.sleep(0.2)
    assert received() == ["READY=1\nSTATUS=wire of 0 endpoints; 0 frames in, 0 out"]
    service.stop()
    daemon.close()

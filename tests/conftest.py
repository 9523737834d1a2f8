"""Shared pytest fixtures for greentap's unit tests (no privileges needed)."""

import os
import socket

import gevent
import pytest

from greentap.green import relay, streams
from greentap.green.polled import Tap


def must_run():
    """True where every test must run and a skip is a failure: in CI (``CI=true``)
    and under scripts/run-tests (``GREENTAP_REQUIRE_PRIVILEGED=1``)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or any(
        os.environ.get(name) for name in ("GREENTAP_REQUIRE_PRIVILEGED", "GREENTAP_REQUIRE_C")
    )


def settle(predicate, timeout=2, interval=0.001):
    """Let the hub run until ``predicate()`` is true; AssertionError after ``timeout`` s."""
    with gevent.Timeout(timeout, AssertionError("condition not reached")):
        while not predicate():
            gevent.sleep(interval)


def drain(sock):
    """Every datagram or frame waiting on the non-blocking ``sock``, in order."""
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


def open_fds():
    """Return the set of fds open in this process."""
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(params=["c", "python"])
def relay_loop(request, monkeypatch):
    """Run a forwarding test over each relay loop, the C one and the pure-Python one.

    For "python", this process's relay runs its Python loop and the tap-forward
    processes a test starts inherit ``GREENTAP_PURE_PYTHON=1``.  Where the C loop
    must run (CI, scripts/run-tests) its absence fails the "c" half.
    """
    if request.param == "python":
        monkeypatch.setenv("GREENTAP_PURE_PYTHON", "1")
        monkeypatch.setattr(relay, "_relay_batch", None)
        monkeypatch.setattr(relay, "ring_batch", None)
        monkeypatch.setattr(relay, "_relay_batch_to_socket", None)
        monkeypatch.setattr(relay, "_relay_batch_to_udp", None)
        monkeypatch.setattr(relay, "relay_batch_to_ring", None)
        monkeypatch.setattr(relay, "recv_datagrams", None)
        monkeypatch.setattr(relay, "write_frames", None)
        monkeypatch.setattr(streams, "gather_for_stream", streams.python_gather_for_stream)
        monkeypatch.setattr(streams, "write_stream_frames", streams.python_write_stream_frames)
        monkeypatch.setattr(relay, "LOOP", "python")
        monkeypatch.setattr(relay, "LOOP_REASON", "GREENTAP_PURE_PYTHON is set")
    elif relay._relay_batch is None:
        if must_run():
            pytest.fail(f"the C relay loop must run here but is missing: {relay.LOOP_REASON}")
        pytest.skip(f"the C relay loop is missing: {relay.LOOP_REASON}")
    return request.param


@pytest.fixture
def seqpacket():
    """A PolledTap over one end of an AF_UNIX SOCK_SEQPACKET pair, and the peer.

    SEQPACKET keeps message boundaries exactly as a TAP keeps frame
    boundaries, so the cooperative read/write/close logic runs for real
    without root.
    """
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    polled = Tap._adopt(ours.detach(), "sp0").polled()
    peer.setblocking(False)
    yield polled, peer
    polled.close()
    peer.close()


@pytest.fixture
def closing():
    """``closing(thing)``: ``thing.close()`` after the test, whatever happens."""
    things = []
    yield things.append
    for t in things:
        t.close()

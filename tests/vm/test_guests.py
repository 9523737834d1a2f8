"""Real QEMU guests (TCG) on tap-forward's listening stream endpoints, next to a TAP in a
namespace: QEMU's ``-netdev stream`` (unix and inet) and ``-netdev socket,connect=``
against ``unix:PATH?listen`` and ``tcp://127.0.0.1:PORT?listen``.

QEMU 7.2 connects once and never retries, so each test waits for tap-forward's
``forwarding`` event before a guest starts.  Guests boot in parallel where a test has
several (start() returns once the NIC is connected; the boot follows).
"""

import pytest

from tests.privileged.topology import Host

pytestmark = pytest.mark.vm

#: Bounds of the waits: a TCG boot takes ~5-7 s alone, longer with guests in parallel.
BOOT = 180
JOIN = 15


def listening_forwarder(make_netns, forwarders, listen, net):
    """A TAP host 198.18.NET.1/24 in a fresh namespace and a tap-forward joining it to
    the listening endpoint ``listen``; returns (host, tap_forward) once it forwards."""
    host = Host(make_netns(), 0)
    host.ip = f"198.18.{net}.1"
    tf = forwarders("--stats", "0", host.endpoint, listen)
    tf.wait_for("forwarding")
    host.configure()  # the forwarder made the TAP
    return host, tf


def ns_ping(host, ip, count=5):
    """Ping ``ip`` from the host's namespace; return ping's stdout."""
    result = host.ns.exec("ping", "-c", str(count), "-i", "0.2", "-W", "2", ip, check=False,
                          timeout=60)  # fmt: skip
    return result.stdout + result.stderr


def test_a_guest_on_a_unix_listener_reaches_a_tap(make_netns, forwarders, guests, sock_dir):
    """A guest whose NIC is ``-netdev stream`` on tap-forward's ``unix:PATH?listen``
    joins as the port ``unix:PATH#1`` (kind unix); it pings the TAP's host 198.18.60.1
    with every ping answered, and the host pings the guest 198.18.60.2 with 0% loss."""
    path = f"{sock_dir}/vm.sock"
    host, tf = listening_forwarder(make_netns, forwarders, f"unix:{path}?listen", 60)
    guest = guests(path, "198.18.60.2/24", ping=host.ip, count=5, name="vm-unix")
    joined = tf.wait_for("endpoint_joined", timeout=JOIN, endpoint=f"unix:{path}#1")
    assert joined["kind"] == "unix" and joined["ports"] == 2, joined
    assert guest.ping_result(timeout=BOOT) == (0, 5, 5), guest.output
    out = ns_ping(host, "198.18.60.2")
    assert " 0% packet loss" in out, out
    stats = tf.final_stats()  # SIGTERM: exit status 0 with the guest still connected
    conn = stats[f"unix:{path}#1"]
    assert conn["rx_packets"] >= 10 and conn["tx_packets"] >= 10, conn


def test_two_guests_on_one_unix_listener_make_a_switch(make_netns, forwarders, guests, sock_dir):
    """Two guests connected to one ``unix:PATH?listen`` plus the TAP make three ports:
    tap-forward turns into a switch (``mode_changed`` to switch, ``endpoint_joined``
    with ports=3), each guest pings the other with every ping answered, and the TAP's
    host pings both with 0% loss."""
    path = f"{sock_dir}/vm.sock"
    host, tf = listening_forwarder(make_netns, forwarders, f"unix:{path}?listen", 61)
    a = guests(path, "198.18.61.2/24", ping="198.18.61.3", count=5, name="vm-a")
    b = guests(path, "198.18.61.3/24", ping="198.18.61.2", count=5, name="vm-b")
    joined = tf.wait_for("endpoint_joined", timeout=JOIN, endpoint=f"unix:{path}#2")
    assert joined["ports"] == 3 and joined["kind"] == "unix", joined
    changed = tf.wait_for("mode_changed", timeout=JOIN, mode="switch")
    assert changed["ports"] == 3, changed
    assert a.ping_result(timeout=BOOT) == (0, 5, 5), a.output
    assert b.ping_result(timeout=BOOT) == (0, 5, 5), b.output
    for ip in ("198.18.61.2", "198.18.61.3"):
        out = ns_ping(host, ip)
        assert " 0% packet loss" in out, out
    assert [e["mode"] for e in tf.events() if e["event"] == "mode_changed"][-1] == "switch"


def test_a_killed_guest_rejoins(make_netns, forwarders, guests, sock_dir):
    """A guest whose QEMU is SIGKILLed leaves: tap-forward logs ``endpoint_left`` for
    ``unix:PATH#1`` with the frames it carried.  The same guest started again joins
    as ``unix:PATH#2``, pings the host with every ping answered, and the host's ping
    to it is back at 0% loss."""
    path = f"{sock_dir}/vm.sock"
    host, tf = listening_forwarder(make_netns, forwarders, f"unix:{path}?listen", 63)
    first = guests(path, "198.18.63.2/24", ping=host.ip, count=3, name="vm-first")
    tf.wait_for("endpoint_joined", timeout=JOIN, endpoint=f"unix:{path}#1")
    assert first.ping_result(timeout=BOOT) == (0, 3, 3), first.output
    first.kill()
    left = tf.wait_for("endpoint_left", timeout=JOIN, endpoint=f"unix:{path}#1")
    assert left["kind"] == "unix" and left["ports"] == 1, left
    assert left["rx_packets"] >= 3 and left["tx_packets"] >= 3, left
    out = ns_ping(host, "198.18.63.2", count=2)
    assert " 100% packet loss" in out, out  # nobody there now
    again = guests(path, "198.18.63.2/24", ping=host.ip, count=3, name="vm-again")
    joined = tf.wait_for("endpoint_joined", timeout=JOIN, endpoint=f"unix:{path}#2")
    assert joined["kind"] == "unix" and joined["ports"] == 2, joined
    assert again.ping_result(timeout=BOOT) == (0, 3, 3), again.output
    out = ns_ping(host, "198.18.63.2")
    assert " 0% packet loss" in out, out
    assert tf.count("endpoint_left") == 1 and tf.proc.poll() is None


def test_guests_on_a_tcp_listener(make_netns, forwarders, guests, free_port):
    """tap-forward listening on ``tcp://127.0.0.1:PORT?listen`` takes a guest with
    ``-netdev stream`` (addr.type=inet) and one with the older ``-netdev
    socket,connect=``: both join (kind tcp) and ping the TAP's host with every ping
    answered."""
    listen = f"tcp://127.0.0.1:{free_port}?listen"
    host, tf = listening_forwarder(make_netns, forwarders, listen, 62)
    inet = guests(None, "198.18.62.2/24", ping=host.ip, count=5, name="vm-inet",
                  netdev="stream-inet", port=free_port)  # fmt: skip
    sock = guests(None, "198.18.62.3/24", ping=host.ip, count=5, name="vm-socket",
                  netdev="socket-connect", port=free_port)  # fmt: skip
    for n in (1, 2):
        joined = tf.wait_for("endpoint_joined", timeout=JOIN,
                             endpoint=f"tcp://127.0.0.1:{free_port}#{n}")  # fmt: skip
        assert joined["kind"] == "tcp", joined
    assert inet.ping_result(timeout=BOOT) == (0, 5, 5), inet.output
    assert sock.ping_result(timeout=BOOT) == (0, 5, 5), sock.output

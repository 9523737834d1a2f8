"""Stream ports over real unix and TCP sockets (no root): framing, backpressure,
hostile peers, reconnection, listeners."""

import os
import socket
import stat
import struct

import gevent
import pytest

from greentap.core import streamframe as sf
from greentap.core.endpoints import parse_endpoint
from greentap.errors import EndpointClosed, EndpointUnavailable, PeerBrokeFraming, PeerGone
from greentap.ports import open_port
from greentap.ports.client import StreamClient
from greentap.ports.stream import StreamConnection
from tests.conftest import open_fds, settle


def frame(i, size=60):
    return bytes([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0]) + bytes([i % 256]) * (size - 14)


def stream(*frames):
    return b"".join(sf.frame_header(len(f)) + f for f in frames)


@pytest.fixture
def pair():
    """A StreamConnection over one end of a unix stream pair; the other end plays QEMU."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = StreamConnection(ours, "s0", kind="unix")
    yield conn, peer
    conn.close()
    peer.close()


def recv_all(conn, count, timeout=2):
    buf = bytearray(conn.max_frame_size)
    out = []
    with gevent.Timeout(timeout):
        for _ in range(count):
            n = conn.recv_into(buf)
            out.append(bytes(buf[:n]))
    return out


def test_frames_come_out_whole_however_the_stream_is_cut(pair):
    """Frames written a byte at a time, or many in one write, come out whole and
    in order; a runt between them is skipped and counted."""
    conn, peer = pair
    frames = [frame(i, 60 + i * 100) for i in range(10)]
    data = stream(*frames[:5]) + sf.frame_header(3) + b"abc" + stream(*frames[5:])

    def trickle():
        peer.setblocking(False)
        i = 0
        while i < len(data):
            try:
                i += peer.send(data[i : i + 1])
            except BlockingIOError:
                gevent.sleep(0.001)  # the reader's turn

    g = gevent.spawn(trickle)
    assert recv_all(conn, 10) == frames
    g.join()
    assert conn.counters.rx_packets == 10 and conn.counters.rx_errors == 1
    assert conn.drops["rx_runt"] == 1


def test_sends_leave_behind_their_lengths_in_one_write_per_turn(pair):
    """send() queues each frame behind its 4-byte big-endian length; what was queued
    in one turn of the hub reaches the peer, in order, without the caller waiting."""
    conn, peer = pair
    frames = [frame(i, 100 + i) for i in range(50)]
    assert all(conn.send(f) for f in frames)
    assert conn.queued == sum(4 + len(f) for f in frames)  # nothing left yet: one flush later
    settle(lambda: conn.queued == 0)
    got = peer.recv(1 << 20)
    assert got == stream(*frames)
    assert conn.counters.tx_packets == 50


def test_a_peer_that_never_reads_costs_drops_not_a_stall(pair):
    """Once the socket and the bounded send buffer are full, frames are dropped and
    counted as backpressure; send() never blocks, and the hub keeps running."""
    conn, peer = pair
    conn.send_buffer = 64 * 1024
    big = frame(1, 1500)
    sent = 0
    with gevent.Timeout(5):
        for _ in range(2000):
            sent += conn.send(big)
            gevent.sleep(0)
    assert conn.drops["tx_backpressure"] > 0
    assert conn.counters.tx_dropped == conn.drops["tx_backpressure"] == 2000 - sent
    assert conn.queued <= 64 * 1024
    # Once the peer reads, what was queued arrives whole.
    peer.setblocking(False)
    got = bytearray()
    with gevent.Timeout(5):
        while len(got) < sent * (4 + 1500):
            try:
                got += peer.recv(1 << 20)
            except BlockingIOError:
                gevent.sleep(0.001)
    assert bytes(got[:1504]) == stream(big)


def test_a_frame_over_the_largest_is_refused_on_the_way_out(pair):
    """A frame longer than QEMU takes (it would close the connection) is dropped and
    counted as too big, never sent."""
    conn, _ = pair
    assert conn.send(bytes(sf.MAX_FRAME + 1)) is False
    assert conn.drops["tx_too_big"] == 1 and conn.queued == 0


def test_a_peer_announcing_a_1gib_frame_is_disconnected(pair):
    """A length of 1 GiB: the frames before it are delivered, then the connection
    ends with PeerBrokeFraming naming the length, and is closed."""
    conn, peer = pair
    peer.send(stream(frame(1)) + struct.pack("!I", 1 << 30) + bytes(64))
    assert recv_all(conn, 1) == [frame(1)]
    with pytest.raises(PeerBrokeFraming, match="1073741824 bytes"), gevent.Timeout(2):
        recv_all(conn, 1)
    assert conn.closed and conn.drops["rx_bad_length"] == 1


def test_random_bytes_end_the_connection_without_harm(pair):
    """Garbage (random bytes) is disconnected as broken framing, or yields only
    frames of sane length; nothing else escapes."""
    conn, peer = pair
    peer.send(os.urandom(4096))
    peer.close()
    with pytest.raises((PeerBrokeFraming, PeerGone)), gevent.Timeout(2):
        recv_all(conn, 100)
    assert conn.closed


def test_end_of_file_and_half_close_are_a_departure(pair):
    """A peer that shuts down its side (a half-close) or closes: PeerGone, and the
    connection is closed at once, partial frame or not."""
    conn, peer = pair
    peer.send(sf.frame_header(60) + bytes(10))
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(PeerGone, match="closed the connection"), gevent.Timeout(2):
        recv_all(conn, 1)
    assert conn.closed
    assert conn.send(frame(1)) is False  # counted, not raised
    assert conn.counters.tx_errors == 1


def test_close_wakes_a_reader_and_twice_is_harmless(pair):
    """close() wakes a greenlet waiting for a frame with EndpointClosed; a second
    close does nothing; the departed hook runs once."""
    conn, _ = pair
    calls = []
    conn.departed = calls.append
    g = gevent.spawn(recv_all, conn, 1)
    gevent.sleep(0.01)
    conn.close()
    conn.close()
    with pytest.raises(EndpointClosed):
        g.get(timeout=2)
    assert calls == [conn]


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "sw.sock")


def listening(path):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    server.setblocking(False)
    return server


def accept(server, timeout=3):
    """Accept without blocking the hub (the port under test connects meanwhile)."""
    with gevent.Timeout(timeout):
        while True:
            try:
                peer, _ = server.accept()
            except BlockingIOError:
                gevent.sleep(0.005)
                continue
            peer.setblocking(True)
            return peer


def test_a_client_connects_and_reconnects_when_the_peer_comes_back(sock_path):
    """unix:PATH reads frames from the peer it connected to; when the peer goes
    away it is told once, frames sent meanwhile count as link down, and once
    a peer listens again it connects again by itself (with backoff)."""
    events = []
    client = open_port(parse_endpoint(f"unix:{sock_path}"))
    assert isinstance(client, StreamClient)
    client.notify = lambda event, level="warning", **f: events.append(event)
    buf = bytearray(client.max_frame_size)
    reader = gevent.spawn(client.recv_into, buf)
    settle(lambda: "peer_unreachable" in events)  # nothing listens yet
    server = listening(sock_path)
    peer = accept(server)
    peer.send(stream(frame(7)))
    assert reader.get(timeout=3) == 60 and bytes(buf[:60]) == frame(7)
    assert client.connected
    peer.close()
    reader = gevent.spawn(client.recv_into, buf)
    settle(lambda: "peer_disconnected" in events)
    peer2 = accept(server)  # it came back by itself
    peer2.send(stream(frame(9)))
    assert reader.get(timeout=3) == 60 and bytes(buf[:60]) == frame(9)
    info = client.describe()
    assert (info["connects"], info["disconnects"]) == (2, 1)
    assert events.count("peer_unreachable") == 1  # logged once per change, not per try
    client.close()
    peer2.close()
    server.close()


def test_a_client_closed_while_waiting_to_reconnect_ends_at_once(sock_path):
    """close() during the backoff wait ends the reader with EndpointClosed, and
    frames sent with no connection are counted as link down."""
    client = StreamClient("c", kind="unix", target=sock_path)
    reader = gevent.spawn(client.recv_into, bytearray(client.max_frame_size))
    settle(lambda: client.events["connect_failures"] >= 1)
    assert client.send(frame(1)) is False and client.counters.tx_link_down == 1
    client.close()
    with pytest.raises(EndpointClosed):
        reader.get(timeout=1)


def test_a_tcp_host_that_does_not_resolve_is_a_clear_error():
    """tcp://HOST:PORT with a name that does not resolve fails when opened, naming it."""
    with pytest.raises(EndpointUnavailable, match=r"cannot resolve 'no-such-host\.invalid'"):
        open_port(parse_endpoint("tcp://no-such-host.invalid:5555"))


def test_a_unix_listener_makes_a_private_socket_and_removes_it(sock_path):
    """unix:PATH?listen creates the socket 0600, accepts a connection as a port named
    after it, and removes the file when closed."""
    listener = open_port(parse_endpoint(f"unix:{sock_path}?listen"))
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(sock_path)
    conn = listener.accept()
    assert conn.name == f"unix:{sock_path}#1" and listener.active == 1
    conn.send(frame(3))
    settle(lambda: conn.queued == 0)
    assert client.recv(100) == stream(frame(3))
    conn.close()
    assert listener.active == 0 and listener.counters.tx_packets == 1  # handed over
    listener.close()
    assert not os.path.exists(sock_path)
    client.close()


def test_a_listener_mode_and_group_are_applied(sock_path):
    """mode= sets the socket's permissions; group= its group (by name or number)."""
    gid = os.getgid()
    listener = open_port(parse_endpoint(f"unix:{sock_path}?listen&mode=0660&group={gid}"))
    st = os.stat(sock_path)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid
    listener.close()


def test_a_stale_socket_is_replaced_but_a_live_one_or_a_file_is_not(sock_path, tmp_path):
    """A socket file nobody listens on (a crash) is replaced; one something listens
    on is refused, as is a path that is not a socket; nothing is left open."""
    stale = listening(sock_path)
    stale.close()  # the file stays, nobody listens
    listener = open_port(parse_endpoint(f"unix:{sock_path}?listen"))
    before = open_fds()
    with pytest.raises(EndpointUnavailable, match="something already listens"):
        open_port(parse_endpoint(f"unix:{sock_path}?listen"))
    assert open_fds() == before
    listener.close()
    plain = tmp_path / "file"
    plain.write_text("precious")
    with pytest.raises(EndpointUnavailable, match="is not a socket"):
        open_port(parse_endpoint(f"unix:{plain}?listen"))
    assert plain.read_text() == "precious"


def test_connections_over_max_are_closed_at_once_and_counted(sock_path):
    """With max=2 a third connection is accepted and closed at once (the peer sees
    end of file), counted and reported; the two keep working."""
    events = []
    listener = open_port(parse_endpoint(f"unix:{sock_path}?listen&max=2"))
    listener.notify = lambda event, level="warning", **f: events.append(event)
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    for c in clients:
        c.connect(sock_path)
    conns = [listener.accept(), listener.accept()]
    g = gevent.spawn(listener.accept)
    settle(lambda: listener.refused == 1)
    clients[2].settimeout(2)
    assert clients[2].recv(10) == b""  # closed by the listener
    assert events == ["connection_refused"]
    g.kill()
    for c in [*conns, listener]:
        c.close()
    for c in clients:
        c.close()


def test_a_tcp_listener_on_port_0_says_where_it_listens():
    """tcp://:0?listen binds loopback on a free port and names it; a TCP peer's
    connection carries frames both ways."""
    listener = open_port(parse_endpoint("tcp://:0?listen"))
    host, port = listener.address[:2]
    assert host == "127.0.0.1" and port > 0
    assert listener.describe()["listening"] == f"tcp://127.0.0.1:{port}"
    client = socket.create_connection((host, port))
    conn = listener.accept()
    client.sendall(stream(frame(5)))
    assert recv_all(conn, 1) == [frame(5)]
    assert conn.peer.startswith("127.0.0.1:")
    conn.close()
    listener.close()
    client.close()


def test_a_client_backs_off_from_a_peer_that_drops_it_at_once(sock_path):
    """A peer that accepts and closes at once (a listener at its max=) is not hammered:
    the client waits, the delay doubling, so a second brings only a handful of
    attempts, and each drop is counted."""
    server = listening(sock_path)
    client = StreamClient("c", kind="unix", target=sock_path)
    reader = gevent.spawn(client.recv_into, bytearray(client.max_frame_size))

    def drop_all():
        while True:
            try:
                server.accept()[0].close()
            except BlockingIOError:
                gevent.sleep(0.005)

    dropper = gevent.spawn(drop_all)
    gevent.sleep(1.0)  # the load bound: how many attempts one second brings
    attempts = client.events["connects"]
    assert 2 <= attempts <= 6, attempts
    assert client.events["disconnects"] >= attempts - 1
    for g in (reader, dropper):
        g.kill()
    client.close()
    server.close()


def test_a_client_with_offloads_takes_the_largest_frame_whole(sock_path):
    """With offloads a client's frames carry a vnet header: its buffer size says so,
    and the largest frame QEMU may send arrives whole behind a zero header."""
    server = listening(sock_path)
    client = open_port(parse_endpoint(f"unix:{sock_path}"), offload=True)
    assert client.max_frame_size == 10 + sf.MAX_FRAME
    buf = bytearray(client.max_frame_size)
    reader = gevent.spawn(client.recv_into, buf)
    peer = accept(server)
    big = frame(1, sf.MAX_FRAME)
    peer.sendall(stream(big))
    assert reader.get(timeout=3) == 10 + sf.MAX_FRAME
    assert bytes(buf[:10]) == bytes(10) and bytes(buf[10 : 10 + sf.MAX_FRAME]) == big
    client.close()
    peer.close()
    server.close()

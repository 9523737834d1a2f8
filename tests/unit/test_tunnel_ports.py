"""UDP and VXLAN ports over loopback: formats, filtering, learning, drops by reason."""

import errno
import os
import socket

import gevent
import pytest

from greentap.core import vxlan
from greentap.errors import EndpointSyntaxError, EndpointUnavailable, TapClosed
from greentap.ports.tunnel import UdpPort, VxlanPort

BCAST = b"\xff" * 6
A, B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def frame(dst, src, tag=0):
    return dst + src + b"\x08\x00" + bytes([tag]) * 46


def peer(host="127.0.0.1"):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(2)
    return s


def recv_frame(port, timeout=2):
    buf = bytearray(port.max_frame_size)
    with gevent.Timeout(timeout, AssertionError("no frame")):
        n = port.recv_into(buf)
    return bytes(buf[:n])


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_udp_port_carries_one_raw_frame_per_datagram(host, closing):
    """udp://: a datagram is exactly one Ethernet frame, both ways (IPv4 and IPv6)."""
    qemu = peer(host)
    closing(qemu)
    port = UdpPort("udp", qemu.getsockname()[:2], (host, 0))
    closing(port)
    qemu.sendto(frame(BCAST, A, 1), port.local)
    assert recv_frame(port) == frame(BCAST, A, 1)
    assert port.send(frame(A, B, 2)) is True
    data, addr = qemu.recvfrom(2000)
    assert data == frame(A, B, 2) and addr[:2] == port.local
    assert port.counters.as_dict()["rx_packets"] == 1
    assert port.counters.tx_packets == 1


def test_udp_port_drops_other_senders_and_runts(closing):
    """Datagrams from anyone but the peer, or shorter than a frame header,
    are counted, not passed."""
    qemu, stranger = peer(), peer()
    closing(qemu)
    closing(stranger)
    port = UdpPort("udp", qemu.getsockname(), ("127.0.0.1", 0))
    closing(port)
    stranger.sendto(frame(BCAST, A), port.local)
    qemu.sendto(b"\x00" * 13, port.local)
    qemu.sendto(frame(BCAST, B), port.local)
    assert recv_frame(port) == frame(BCAST, B)
    assert port.drops == {"rx_unknown_sender": 1, "rx_runt": 1}
    assert port.counters.rx_errors == 2


def vteps(n, closing):
    """n fake remote VTEPs on distinct loopback addresses."""
    out = []
    for i in range(n):
        s = peer(f"127.0.0.{i + 2}")
        closing(s)
        out.append(s)
    return out


def test_vxlan_port_encapsulates_per_rfc_7348(closing):
    """Frames go out with the 8-byte header (I flag, VNI) and come in without it."""
    (r,) = vteps(1, closing)
    port = VxlanPort("vx", [r.getsockname()], 42, ("127.0.0.1", 0))
    closing(port)
    assert port.send(frame(BCAST, A)) is True
    data, _ = r.recvfrom(2000)
    assert data == vxlan.header(42) + frame(BCAST, A)
    r.sendto(vxlan.encode(42, frame(A, B)), port.local)
    assert recv_frame(port) == frame(A, B)


@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
def test_vxlan_head_end_replication_and_learning(closing, offload):
    """Broadcast and unknown unicast go to every remote; a learned MAC to its remote
    only; the same with offloads (frames behind a vnet header, learned per read)."""
    r1, r2 = vteps(2, closing)
    port = VxlanPort(
        "vx", [r1.getsockname(), r2.getsockname()], 7, ("127.0.0.1", 0), offload=offload
    )
    closing(port)
    vnet = bytes(port.header_size)
    port.send(vnet + frame(BCAST, A))
    assert r1.recv(2000) == r2.recv(2000) == vxlan.encode(7, frame(BCAST, A))
    port.send(vnet + frame(B, A))  # B unknown: both
    assert r1.recv(2000) == r2.recv(2000)
    r2.sendto(b"\0" * 30, port.local)  # no I flag: nothing learned from it
    r2.sendto(vxlan.encode(7, frame(A, B)), port.local)  # B lives behind r2
    assert recv_frame(port) == vnet + frame(A, B)
    port.send(vnet + frame(B, A, 9))
    assert r2.recv(2000) == vxlan.encode(7, frame(B, A, 9))
    r1.settimeout(0.05)
    with pytest.raises(TimeoutError):
        r1.recv(2000)
    assert [(mac, remote) for mac, remote, _ in port.mac_table()] == [
        ("02:00:00:00:00:02", f"127.0.0.3:{r2.getsockname()[1]}")
    ]


def test_vxlan_accepts_any_source_port_of_a_remote(closing):
    """The kernel's VXLAN picks source ports from a range: only the address is checked."""
    (r,) = vteps(1, closing)
    other_port = peer("127.0.0.2")
    closing(other_port)
    port = VxlanPort("vx", [r.getsockname()], 7, ("127.0.0.1", 0))
    closing(port)
    other_port.sendto(vxlan.encode(7, frame(BCAST, A)), port.local)
    assert recv_frame(port) == frame(BCAST, A)


def test_vxlan_garbage_is_counted_by_reason_and_never_passed(closing):
    """Short, flagless, wrong-VNI and unlisted-sender datagrams are dropped and counted;
    the valid frame after them still arrives, and other greenlets run meanwhile."""
    (r,) = vteps(1, closing)
    stranger = peer("127.0.0.9")
    closing(stranger)
    port = VxlanPort("vx", [r.getsockname()], 7, ("127.0.0.1", 0))
    closing(port)
    for _ in range(100):
        r.sendto(os.urandom(5), port.local)  # short
        r.sendto(b"\x00" * 8 + frame(BCAST, A), port.local)  # no I flag
        r.sendto(vxlan.encode(8, frame(BCAST, A)), port.local)  # wrong VNI
        stranger.sendto(vxlan.encode(7, frame(BCAST, A)), port.local)  # unlisted
        r.sendto(vxlan.header(7) + b"\x01" * 13, port.local)  # runt inner frame
    r.sendto(vxlan.encode(7, frame(BCAST, B)), port.local)
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(1) or gevent.sleep(0) for _ in range(10**6)])
    assert recv_frame(port) == frame(BCAST, B)
    ticker.kill()
    assert port.drops == {
        "rx_short": 200,
        "rx_no_i_flag": 100,
        "rx_wrong_vni": 100,
        "rx_unknown_sender": 100,
    }
    assert port.counters.rx_errors == 500 and port.counters.rx_packets == 1
    assert len(ticks) >= 500 // 50 - 1  # the budget yielded during the garbage


def test_too_big_for_the_path_is_a_counted_drop(closing):
    """A frame that cannot fit one datagram is refused by the kernel (EMSGSIZE) and counted."""
    (r,) = vteps(1, closing)
    port = VxlanPort("vx", [r.getsockname()], 7, ("127.0.0.1", 0))
    closing(port)
    assert port.send(frame(BCAST, A) + bytes(65500)) is False
    assert port.drops == {"tx_too_big": 1}
    assert port.counters.tx_errors == 1 and port.counters.tx_packets == 0


def test_backpressure_drops_and_counts(closing, monkeypatch):
    """EAGAIN on send (simulated: loopback never fills on demand) drops and counts."""
    (r,) = vteps(1, closing)
    port = UdpPort("udp", r.getsockname(), ("127.0.0.1", 0))
    closing(port)

    class Full:
        def __init__(self, sock):
            self._sock = sock

        def sendmsg(self, *args):
            raise BlockingIOError(errno.EAGAIN, "full")

        def __getattr__(self, name):
            return getattr(self._sock, name)

    monkeypatch.setattr(port._io.holder, "handle", Full(port._io.holder.handle))
    assert port.send(frame(BCAST, A)) is False
    assert port.counters.tx_dropped == 1 and port.drops == {"tx_backpressure": 1}


def test_close_wakes_a_blocked_reader(closing):
    """close() makes a blocked recv_into raise TapClosed at once."""
    (r,) = vteps(1, closing)
    port = VxlanPort("vx", [r.getsockname()], 7, ("127.0.0.1", 0))
    reader = gevent.spawn(recv_frame, port, 5)
    gevent.sleep(0.01)
    port.close()
    with pytest.raises(TapClosed):
        reader.get(timeout=0.5)
    port.close()


def test_address_in_use_is_a_clear_error(closing):
    """Binding a port someone else holds says so."""
    holder = peer()
    closing(holder)
    with pytest.raises(EndpointUnavailable, match="address in use"):
        UdpPort("udp", ("127.0.0.1", 9), holder.getsockname())


def test_mixed_families_are_refused():
    """IPv4 remotes with an IPv6 local address cannot work: refused up front, as the
    caller's mistake."""
    with pytest.raises(EndpointSyntaxError, match="mix IPv4 and IPv6"):
        VxlanPort("vx", [("127.0.0.1", 4789)], 7, ("::1", 0))


def test_vxlan_over_ipv6(closing):
    """vxlan:// with IPv6 remotes and local address: encapsulation both ways, sender checked."""
    r = peer("::1")
    closing(r)
    port = VxlanPort("vx6", [r.getsockname()[:2]], 99, ("::1", 0))
    closing(port)
    assert port.send(frame(BCAST, A)) is True
    assert r.recv(2000) == vxlan.encode(99, frame(BCAST, A))
    r.sendto(vxlan.encode(99, frame(A, B)), port.local)
    assert recv_frame(port) == frame(A, B)
    assert port.describe()["local"].startswith("[::1]:")


def test_the_vxlan_remote_table_is_bounded_and_ages(closing):
    """The MAC -> remote table holds at most max_entries (a new MAC is refused, not
    evicting a live one) and forgets a MAC after `aging`: its frames are flooded again."""
    r1, r2 = vteps(2, closing)
    port = VxlanPort(
        "vx", [r1.getsockname(), r2.getsockname()], 7, ("127.0.0.1", 0),
        aging=0.2, max_entries=2,
    )  # fmt: skip
    closing(port)
    macs = [bytes.fromhex(f"0200000000a{i}") for i in range(3)]
    for mac in macs:  # three MACs behind r2; the table keeps two
        r2.sendto(vxlan.encode(7, frame(BCAST, mac)), port.local)
        recv_frame(port)
    assert len(port.mac_table()) == 2
    assert port._table.refused == 1  # the third was refused, the first two kept
    port.send(frame(macs[0], A))  # known: to r2 only
    assert r2.recv(2000) == vxlan.encode(7, frame(macs[0], A))
    r1.settimeout(0.05)
    with pytest.raises(TimeoutError):
        r1.recv(2000)
    port.send(frame(macs[2], A))  # refused, so unknown: flooded to both
    assert r1.recv(2000) == r2.recv(2000) == vxlan.encode(7, frame(macs[2], A))
    gevent.sleep(0.3)  # past the aging time: the table's clock is the hub's
    port.send(frame(macs[0], A))  # forgotten: flooded to both again
    assert r1.recv(2000) == r2.recv(2000) == vxlan.encode(7, frame(macs[0], A))
    assert port.mac_table() == []


def test_a_datagram_larger_than_any_frame_is_truncated_and_counted(closing):
    """Over IPv6 a UDP payload may be 65,527 bytes, more than the port reads
    (65,507): such a datagram arrives truncated, is dropped as rx_truncated and
    counted; the next one passes."""
    r = peer("::1")
    closing(r)
    port = UdpPort("udp", r.getsockname()[:2], ("::1", 0))
    closing(port)
    r.sendto(frame(BCAST, A) + bytes(65527 - 60), port.local)
    r.sendto(frame(BCAST, B), port.local)
    assert recv_frame(port) == frame(BCAST, B)
    assert port.drops == {"rx_truncated": 1} and port.counters.rx_errors == 1


def free_udp_port(host):
    """A UDP port on ``host`` that nothing listens on (bound, noted, closed)."""
    s = peer(host)
    port = s.getsockname()[:2]
    s.close()
    return port


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_peer_that_does_not_listen_is_noticed(host, closing):
    """udp:// to a port nothing listens on (a stopped VM): the ICMP port unreachable
    its host answers with is read from the error queue: peer_unreachable once,
    tx_unreachable counted, the socket not left readable (the reader sleeps); once the
    peer sends, peer_reachable once."""
    gone = free_udp_port(host)
    port = UdpPort("udp", gone, (host, 0))
    closing(port)
    events = []
    port.notify = lambda event, level="warning", **fields: events.append((event, fields))
    reader = gevent.spawn(recv_frame, port, 30)
    for i in range(5):
        port.send(frame(BCAST, A, i))
        gevent.sleep(0.01)  # the ICMP error arrives; the reader takes it
    assert [e for e, _ in events] == ["peer_unreachable"]
    assert events[0][1]["remote"] == (f"[{host}]" if ":" in host else host) + f":{gone[1]}"
    assert port.drops["tx_unreachable"] >= 1
    cpu = os.times()
    gevent.sleep(0.3)  # a readable socket would have the reader spin all this time
    spent = sum(os.times()[:2]) - sum(cpu[:2])
    assert spent < 0.15, f"the reader spun for {spent:.2f} s of CPU in 0.3 s"
    vm = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    closing(vm)
    vm.bind(gone)  # the VM is back
    vm.sendto(frame(A, B, 9), port.local)
    assert reader.get(timeout=5) == frame(A, B, 9)
    assert [e for e, _ in events] == ["peer_unreachable", "peer_reachable"]

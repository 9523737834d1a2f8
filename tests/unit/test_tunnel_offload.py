"""Tunnel ports with offloads over loopback: super-frames cut with UDP GSO, merged after
UDP GRO, the fallbacks without either, bad super-frames counted (no root)."""

import socket
import struct

import gevent
import pytest

from greentap.core import kernel_constants as kc
from greentap.core import segment as seg
from greentap.core import vxlan
from greentap.core.checksum import ones_complement_sum
from greentap.core.coalesce import PLAIN_HEADER
from greentap.ports.tunnel import UdpPort, VxlanPort
from tests.unit.test_segment import super_frame

VNET = struct.Struct("=BBHHHH")
PAYLOAD = bytes(range(256)) * 200  # 51,200 bytes: 37 segments of 1400


def pair(kind, host, closing, **kw):
    """Two ports of ``kind`` with offloads, each the other's remote, on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(2)]
    for s in probe:
        s.bind((host, 0))
    a_addr, b_addr = (s.getsockname()[:2] for s in probe)
    for s in probe:
        s.close()
    if kind == "vxlan":
        a = VxlanPort("a", [b_addr], 5, a_addr, offload=True, **kw)
        b = VxlanPort("b", [a_addr], 5, b_addr, offload=True, **kw)
    else:
        a = UdpPort("a", b_addr, a_addr, offload=True, **kw)
        b = UdpPort("b", a_addr, b_addr, offload=True, **kw)
    closing(a)
    closing(b)
    return a, b


def read_until(port, segments, timeout=3):
    """Frames read from ``port`` until they hold ``segments`` segments in all."""
    buf, out, count = bytearray(port.max_frame_size), [], 0
    with gevent.Timeout(timeout, AssertionError(f"only {count} of {segments} segments")):
        while count < segments:
            n = port.recv_into(buf)
            frame = bytes(buf[:n])
            out.append(frame)
            count += len(seg.segment(frame)) if frame[1] else 1
    return out


def cut(frames):
    """Every frame read, as the segments a NIC would put on the wire."""
    return [bytes(p) for f in frames for p in (seg.segment(f) if f[1] else [f[10:]])]


@pytest.mark.parametrize("kind", ["vxlan", "udp"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_super_frame_crosses_as_segments_and_is_merged_again(kind, host, closing):
    """A TCP super-frame sent by one port leaves as 37 datagrams (UDP GSO: one send)
    and the other port, reading them with UDP GRO, merges them into super-frames
    whose segments are the original segments byte for byte."""
    a, b = pair(kind, host, closing)
    assert a.gso and b.gro
    frame, _ = super_frame(PAYLOAD, 1400, flags=0x10, v6=":" in host)
    original = [bytes(p) for p in seg.segment(frame)]
    assert a.send(frame) is True
    assert a.counters.tx_packets == len(original) == 37
    got = read_until(b, len(original))
    assert cut(got) == original
    assert len(got) < len(original)  # merged: fewer, larger frames
    assert b.counters.rx_packets == 37
    assert a.describe()["offload"] == {"gso": True, "gro": True}


@pytest.mark.parametrize("kind", ["vxlan", "udp"])
def test_without_gso_and_without_gro_the_same_segments_arrive(kind, closing):
    """The fallbacks: a sender without UDP GSO sends the segments one by one, a
    receiver without UDP_GRO reads them one by one; merged all the same."""
    a, b = pair(kind, "127.0.0.1", closing)
    a.gso = False
    b._io.holder.handle.setsockopt(kc.SOL_UDP, kc.UDP_GRO, 0)
    frame, _ = super_frame(PAYLOAD, 1000, flags=0x10)
    original = [bytes(p) for p in seg.segment(frame)]
    assert a.send(frame) is True
    got = read_until(b, len(original))
    assert cut(got) == original


def test_a_plain_receiver_gets_finished_datagrams(closing):
    """What a peer without offloads (QEMU's dgram, a kernel vxlan) receives from a
    super-frame: one datagram per segment, each under the segment size, each with
    a TCP checksum that verifies; a NEEDS_CSUM frame arrives with its checksum done."""
    qemu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    qemu.bind(("127.0.0.1", 0))
    qemu.settimeout(2)
    closing(qemu)
    port = UdpPort("u", qemu.getsockname(), ("127.0.0.1", 0), offload=True)
    closing(port)
    frame, csum_start = super_frame(PAYLOAD[:5000], 1400, flags=0x10)
    assert port.send(frame) is True
    sizes = []
    for piece in seg.segment(frame):
        data = qemu.recv(70000)
        assert data == bytes(piece)
        sizes.append(len(data))
    assert max(sizes) == csum_start + 20 + 1400
    # One segment's worth: no GSO, only the checksum to finish.
    small, _ = super_frame(b"x" * 100, 1400, flags=0x18)
    plain = bytearray(small)
    plain[1] = 0  # GSO_NONE, still NEEDS_CSUM: the field holds the pseudo-header's sum
    tcp_length = len(plain) - 10 - csum_start
    partial = ones_complement_sum(bytes(plain[36:44]) + struct.pack("!HH", 6, tcp_length))
    struct.pack_into("!H", plain, 10 + csum_start + 16, partial)
    assert port.send(plain) is True
    data = qemu.recv(70000)
    pseudo = data[26:34] + struct.pack("!HH", 6, len(data) - csum_start)
    assert ones_complement_sum(pseudo + data[csum_start:]) == 0xFFFF


def test_frames_that_need_nothing_pass_behind_a_zero_header(closing):
    """A frame with an all-zero vnet header is sent as it is; an ARP frame read is
    handed on behind an all-zero header."""
    a, b = pair("vxlan", "127.0.0.1", closing)
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    assert a.send(PLAIN_HEADER + arp) is True
    (got,) = read_until(b, 1)
    assert got == PLAIN_HEADER + arp


def test_bad_super_frames_and_runts_are_counted_never_sent(closing):
    """A super-frame whose headers do not add up, a checksum offset outside the frame
    and a runt are each dropped and counted by reason; nothing is sent."""
    a, _ = pair("vxlan", "127.0.0.1", closing)
    frame, _ = super_frame(PAYLOAD[:3000], 1000)
    broken = bytearray(frame)
    broken[10 + 23] = 17  # the IPv4 protocol says UDP under a TCP GSO type
    assert a.send(broken) is False
    outside = bytearray(VNET.pack(1, 0, 0, 0, 60, 16)) + frame[10:70]
    assert a.send(outside) is False
    assert a.send(PLAIN_HEADER + b"\x01" * 5) is False
    assert dict(a.drops) == {"tx_bad_super_frame": 1, "tx_bad_vnet_header": 1, "tx_runt": 1}
    assert a.counters.tx_errors == 3 and a.counters.tx_packets == 0


def test_vxlan_header_of_each_segment(closing):
    """With UDP GSO each datagram on the wire is a VXLAN header, then one segment."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(2)
    closing(peer)
    port = VxlanPort("v", [peer.getsockname()], 77, ("127.0.0.1", 0), offload=True)
    closing(port)
    frame, _ = super_frame(PAYLOAD[:4500], 1000, flags=0x10)
    assert port.send(frame) is True
    for piece in seg.segment(frame):
        data = peer.recv(70000)
        assert data[:8] == vxlan.header(77) and data[8:] == bytes(piece)


class RefusesGso:
    """A socket whose UDP_SEGMENT sends fail with EIO, as an older kernel's do when the
    way out lacks checksum offload (this kernel finishes the checksums itself: no
    real device here can show the EIO, hence this stand-in)."""

    def __init__(self, real):
        self.real = real

    def sendmsg(self, buffers, ancillary=(), flags=0, address=None):
        if ancillary:
            raise OSError(5, "Input/output error")
        return self.real.sendmsg(buffers, ancillary, flags, address)


def test_gso_refused_with_eio_is_turned_off_once_and_the_segments_still_leave(closing):
    """An EIO from a UDP_SEGMENT send turns GSO off for the port, reported once
    (udp_gso_off) and counted (tx_gso_off); the super-frame's segments still leave,
    one by one, and the next super-frame does not try GSO again."""
    a, b = pair("vxlan", "127.0.0.1", closing)
    events = []
    a.notify = lambda event, level="warning", **fields: events.append(event)
    holder = a._io.holder
    real = holder.handle
    holder.handle = RefusesGso(real)
    try:
        frame, _ = super_frame(PAYLOAD[:10000], 1000, flags=0x10)
        original = [bytes(p) for p in seg.segment(frame)]
        for _ in range(2):
            assert a.send(frame) is True
    finally:
        holder.handle = real
    assert a.gso is False and events == ["udp_gso_off"]
    assert dict(a.drops) == {"tx_gso_off": 1}
    assert a.counters.tx_packets == 2 * len(original)
    assert cut(read_until(b, 2 * len(original))) == original * 2


def udp_frame(sport, dport=53, src="198.18.0.1", dst="198.18.0.2"):
    """An Ethernet/IPv4/UDP frame of one flow (checksums do not matter here)."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + 4, 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return (
        bytes.fromhex("020000000002020000000001")
        + b"\x08\x00"
        + ip
        + struct.pack("!HHHH", sport, dport, 12, 0)
        + b"abcd"
    )


@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
def test_srcport_spreads_flows_over_the_range_and_keeps_each_flow_on_one(closing, offload):
    """&srcport=MIN-MAX: each inner flow leaves from one source port inside the range
    (RFC 7348 section 5), always the same one; 64 flows use several ports; receiving
    stays on the bound port, and the remote's replies still arrive there."""
    remote = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    remote.bind(("127.0.0.1", 0))
    remote.settimeout(2)
    closing(remote)
    # Below the ephemeral range (32768-60999): no socket bound to port 0, ours
    # included, can take one of the 16 ports the range is spread over.
    port = VxlanPort("v", [remote.getsockname()], 9, ("127.0.0.1", 0), offload=offload,
                     srcport=(20100, 20400))  # fmt: skip
    closing(port)
    vnet = bytes(port.header_size)
    used = {}
    for flow in range(64):
        for _ in range(2):
            assert port.send(vnet + udp_frame(1000 + flow)) is True
            data, (_, sport) = remote.recvfrom(2000)
            assert data == vxlan.header(9) + udp_frame(1000 + flow)
            assert 20100 <= sport <= 20400
            assert used.setdefault(flow, sport) == sport  # the same flow, the same port
    assert len(set(used.values())) >= 8
    assert set(used.values()) <= set(port.describe()["source_ports"])
    assert len(port.describe()["source_ports"]) == 16
    remote.sendto(vxlan.header(9) + udp_frame(7), port.local)
    buf = bytearray(port.max_frame_size)
    with gevent.Timeout(2):
        n = port.recv_into(buf)
    assert bytes(buf[port.header_size : n]) == udp_frame(7)


def test_srcport_skips_ports_in_use_and_refuses_a_range_with_none_free(closing):
    """A port of the range already bound elsewhere is skipped; a range whose every
    port is taken is a clear error naming the range, and nothing stays open."""
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    closing(taken)
    busy = taken.getsockname()[1]
    remote = ("127.0.0.1", 9)
    port = VxlanPort("v", [remote], 9, ("127.0.0.1", 0), srcport=(busy, busy + 1))
    closing(port)
    assert port.describe()["source_ports"] == [busy + 1]
    from greentap.errors import EndpointUnavailable

    with pytest.raises(EndpointUnavailable, match=f"no source port of {busy}-{busy}"):
        VxlanPort("w", [remote], 9, ("127.0.0.1", 0), srcport=(busy, busy))


def test_flow_hash_follows_addresses_and_ports_not_payload():
    """The hash behind the source port: the same for one flow whatever the payload,
    different for other ports or addresses (these ones), stable across calls."""
    a = vxlan.flow_hash(udp_frame(1000))
    assert a == vxlan.flow_hash(udp_frame(1000)[:-4] + b"zzzz")
    assert a != vxlan.flow_hash(udp_frame(1001))
    assert a != vxlan.flow_hash(udp_frame(1000, src="198.18.0.9"))
    for junk in (b"", b"\x01" * 13, udp_frame(1)[:20]):
        assert isinstance(vxlan.flow_hash(junk), int)


@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
def test_udp_mtu_cuts_super_frames_to_fit_and_refuses_larger_frames(closing, offload):
    """udp://?mtu=N (a guest's MTU): a super-frame is cut into segments whose IP
    packets are at most N bytes (here 576, from a TAP's 1400-byte segments), a plain
    frame carrying N bytes passes, one carrying N + 1 is dropped as tx_too_big."""
    qemu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    qemu.bind(("127.0.0.1", 0))
    qemu.settimeout(2)
    closing(qemu)
    port = UdpPort("u", qemu.getsockname(), ("127.0.0.1", 0), offload=offload, mtu=576)
    closing(port)
    vnet = bytes(port.header_size)
    if offload:
        frame, csum_start = super_frame(PAYLOAD[:6000], 1400, flags=0x10)
        assert port.send(frame) is True
        got = []
        while sum(len(d) - csum_start - 20 for d in got) < 6000:
            got.append(qemu.recv(70000))
        assert max(len(d) - 14 for d in got) == 576  # 20 + 20 + 536 of payload
        assert b"".join(d[csum_start + 20 :] for d in got) == PAYLOAD[:6000]
    fits = bytes(12) + b"\x08\x00" + bytes(576)
    assert port.send(vnet + fits) is True
    assert qemu.recv(70000) == fits
    assert port.send(vnet + fits + b"x") is False
    assert port.drops["tx_too_big"] == 1

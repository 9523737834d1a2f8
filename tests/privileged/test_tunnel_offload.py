"""Tunnels with offloads, against real kernels: TCP byte-exact through two tap-forward
sites and between the kernel's vxlan and tap-forward, with loss on the underlay, with
a way out that has no checksum offload (UDP GSO turned off), IPv4 and IPv6 inside."""

import re
import sys

import pytest

from tests.privileged.test_offload import transfer_between as transfer
from tests.privileged.topology import Host, TapForward, underlay

# Every test here runs with the C offloads and with their pure-Python references
# (GREENTAP_PURE_PYTHON=1 in the forwarders: tests/conftest.py's relay_loop).
pytestmark = pytest.mark.usefixtures("relay_loop")


class Sites:
    """Two tap-forward sites joined by vxlan:// over a veth underlay (198.18.4.0/24),
    each with a TAP host (198.18.5.1 and .2)."""

    def __init__(self, make_netns, tmp_path, *extra, vni=7):
        self.s1, self.s2 = make_netns(), make_netns()
        self.u1, self.u2 = underlay(self.s1, self.s2, "198.18.4.1", "198.18.4.2")
        self.h1, self.h2 = Host(make_netns(), 0), Host(make_netns(), 1)
        self.h1.ip, self.h2.ip = "198.18.5.1", "198.18.5.2"
        self.tunnels = (
            f"vxlan://198.18.4.2?vni={vni}&local=198.18.4.1:4789",
            f"vxlan://198.18.4.1?vni={vni}&local=198.18.4.2:4789",
        )
        self.forwarders = []
        self.extra, self.tmp_path = extra, tmp_path

    def start(self):
        for site, host, tunnel in ((self.s1, self.h1, self.tunnels[0]),
                                   (self.s2, self.h2, self.tunnels[1])):  # fmt: skip
            tf = TapForward("--stats", "0", "--mtu", "1450", *self.extra, host.endpoint, tunnel,
                            tmp_path=self.tmp_path, netns=site.name)  # fmt: skip
            self.forwarders.append(tf)
            tf.wait_for("forwarding")
        for h in (self.h1, self.h2):
            h.ns.ip("addr", "add", f"{h.ip}/24", "dev", h.tap)
            h.ns.ip("link", "set", h.tap, "up")
        return self

    def stop(self):
        for tf in self.forwarders:
            tf.stop()


@pytest.fixture
def sites(make_netns, tmp_path):
    made = []

    def make(*extra):
        s = Sites(make_netns, tmp_path, *extra)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def both_ways(a, b):
    for src, dst in ((a, b), (b, a)):
        sent, received = transfer(src.ns, dst.ns, dst.ip)
        assert sent == received


def test_tcp_through_two_sites_is_byte_exact_with_super_frames(sites):
    """64 MiB of TCP each way through two tap-forward sites arrive byte for byte; the
    tunnels were opened with offloads, the TAPs were handed super-frames (merged
    from the tunnel's segments) and the tunnels sent many datagrams per super-frame."""
    s = sites().start()
    opened = s.forwarders[0].wait_for("endpoint_opened", endpoint=s.tunnels[0])
    assert opened["offload"] == {"gso": True, "gro": True}
    both_ways(s.h1, s.h2)
    stats = [tf.final_stats(timeout=8) for tf in s.forwarders]
    for st, host in zip(stats, (s.h1, s.h2), strict=True):
        tap = st[host.tap]
        assert tap["tx_bytes"] / tap["tx_packets"] > 3000, "no merged super-frame reached the TAP"
    for st, tunnel in zip(stats, s.tunnels, strict=True):
        assert st[tunnel]["drops"] == {}
        # Datagrams, not super-frames: a transfer's data one way, the other's ACKs.
        assert st[tunnel]["tx_packets"] > (64 << 20) // 1450


def test_ipv6_inside_the_tunnel_is_byte_exact(sites):
    """TCP over IPv6 (link-local addresses on the TAPs) through two sites: 64 MiB byte
    for byte, cut into TCPv6 segments and merged again."""
    s = sites().start()
    for host, address in ((s.h1, "fe80::198:18:5:1"), (s.h2, "fe80::198:18:5:2")):
        host.ns.exec("sysctl", "-qw", f"net.ipv6.conf.{host.tap}.disable_ipv6=0")
        host.ns.ip("addr", "add", f"{address}/64", "dev", host.tap, "nodad")
    sent, received = transfer(s.h1.ns, s.h2.ns, f"fe80::198:18:5:2%{s.h1.tap}", bind="::")
    assert sent == received


def test_one_percent_loss_on_the_underlay_stays_byte_exact(sites):
    """nftables drops 1% of the VXLAN datagrams arriving at each site (numgen random;
    this kernel has no netem): TCP retransmits through the merged and cut segments
    and 64 MiB still arrive byte for byte each way."""
    s = sites().start()
    for site in (s.s1, s.s2):
        rules = (
            "add table inet gtloss\n"
            "add chain inet gtloss in { type filter hook input priority 0; }\n"
            "add rule inet gtloss in udp dport 4789 numgen random mod 100 0 counter drop\n"
        )
        site.exec("nft", "-f", "-", input=rules)
    both_ways(s.h1, s.h2)
    dropped = s.s2.exec("nft", "list", "chain", "inet", "gtloss", "in").stdout
    assert "packets 0 " not in dropped, dropped  # the rule did drop


def test_a_way_out_without_checksum_offload_is_byte_exact(sites):
    """The underlay veth's checksum offload off: this kernel then finishes the UDP
    checksums of GSO sends itself (older ones refuse with EIO: the unit tests cover
    that fallback); 64 MiB still arrive byte for byte, and nothing is dropped."""
    s = sites()
    s.s1.exec("ethtool", "-K", s.u1, "tx", "off")
    s.start()
    sent, received = transfer(s.h1.ns, s.h2.ns, s.h2.ip)
    assert sent == received
    stats = s.forwarders[0].final_stats(timeout=8)
    assert set(stats[s.tunnels[0]]["drops"]) <= {"tx_gso_off"}


def test_the_kernel_vxlan_and_tap_forward_are_byte_exact_both_ways(kernel_vtep):
    """A kernel vxlan device on one side, tap-forward with a TAP on the other: 64 MiB
    of TCP each way, byte for byte, through GRO-merged and GSO-cut segments."""
    k, b, tf, endpoint, _ = kernel_vtep
    client = Host(k, 0)
    client.ip = "198.18.3.1"
    both_ways(client, b)
    stats = tf.final_stats(timeout=8)
    assert stats[endpoint]["drops"] == {}
    assert stats[b.tap]["tx_bytes"] / stats[b.tap]["tx_packets"] > 3000


SEND_FOR_A_WHILE = (
    "import socket, sys\n"
    "s = socket.create_connection((sys.argv[1], 5001), timeout=5)\n"
    "s.settimeout(1)\n"
    "try:\n"
    "    s.sendall(bytes(1 << 20))\n"
    "except OSError:\n"
    "    pass\n"
)
LISTEN = (
    "import socket, sys\n"
    "srv = socket.create_server((sys.argv[1], 5001))\n"
    "print('ready', flush=True)\n"
    "c, _ = srv.accept()\n"
    "c.settimeout(3)\n"
    "try:\n"
    "    while c.recv(1 << 20):\n"
    "        pass\n"
    "except OSError:\n"
    "    pass\n"
)


def test_segments_over_the_path_mtu_are_counted_too_big_and_gso_stays_on(sites):
    """TAPs at MTU 1500 over an underlay of 1500: the TCP segments cut from a
    super-frame do not fit with the VXLAN headers. The kernel refuses the GSO send;
    each segment is then tried alone and counted as tx_too_big (never fragmented);
    GSO is not turned off for it, and the handshake's small frames still cross."""
    s = sites()
    s.extra = ("--mtu", "1500")  # the later --mtu wins
    s.start()
    server = s.h2.ns.popen(sys.executable, "-c", LISTEN, s.h2.ip, stdout=-1, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        s.h1.ns.exec(sys.executable, "-c", SEND_FOR_A_WHILE, s.h2.ip, timeout=30)
    finally:
        server.kill()
        server.wait()
    tf = s.forwarders[0]
    stats = tf.final_stats(timeout=8)[s.tunnels[0]]
    assert stats["drops"]["tx_too_big"] > 0
    assert set(stats["drops"]) == {"tx_too_big"}
    assert tf.count("udp_gso_off") == 0
    assert stats["tx_packets"] >= 3  # the handshake and ACKs did cross


def test_srcport_range_interoperates_with_the_kernel_vxlan(make_netns, forwarder_in):
    """&srcport=50000-50999 towards a kernel vxlan device: ping crosses both ways
    and a TCP transfer is byte-exact; nftables on the kernel's side counts every
    VXLAN datagram from tap-forward with a source port inside the range, none
    outside it."""
    k, f, b_ns = make_netns(), make_netns(), make_netns()
    uk, _ = underlay(k, f, "198.18.2.1", "198.18.2.2")
    k.ip("link", "add", "vx42", "type", "vxlan", "id", "42", "remote", "198.18.2.2",
         "local", "198.18.2.1", "dstport", "4789", "dev", uk)  # fmt: skip
    k.ip("addr", "add", "198.18.3.1/24", "dev", "vx42")
    k.ip("link", "set", "vx42", "up")
    k.exec("ethtool", "-K", "vx42", "tx", "off")
    rules = (
        "add table inet gtsp\n"
        "add chain inet gtsp in { type filter hook input priority 0; }\n"
        "add rule inet gtsp in udp dport 4789 udp sport 50000-50999 counter\n"
        "add rule inet gtsp in udp dport 4789 udp sport != 50000-50999 counter\n"
    )
    k.exec("nft", "-f", "-", input=rules)
    b = Host(b_ns, 1)
    b.ip = "198.18.3.2"
    endpoint = "vxlan://198.18.2.1?vni=42&local=198.18.2.2:4789&srcport=50000-50999"
    tf = forwarder_in(f, "--stats", "0", "--mtu", "1450", endpoint, b.endpoint)
    b.ns.ip("addr", "add", f"{b.ip}/24", "dev", b.tap)
    opened = tf.wait_for("endpoint_opened", endpoint=endpoint)
    assert len(opened["source_ports"]) == 16
    assert all(50000 <= p <= 50999 for p in opened["source_ports"])
    for ns, to in ((k, b.ip), (b.ns, "198.18.3.1")):
        out = ns.exec("ping", "-c", "3", "-i", "0.1", "-W", "2", to, check=False, timeout=30)
        assert " 0% packet loss" in out.stdout, out.stdout
    sent, received = transfer(b.ns, k, "198.18.3.1")
    assert sent == received
    listing = k.exec("nft", "list", "chain", "inet", "gtsp", "in").stdout
    inside, outside = [int(n) for n in re.findall(r"counter packets (\d+)", listing)]
    assert inside > 1000 and outside == 0, listing


REORDER = """
import select, socket, sys, time
# A VXLAN relay that reorders: of every 8 datagrams one is held back and sent
# after the next two (or after 5 ms), in each direction.  Bounded: it exits when
# its stdin closes.
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("198.18.4.1", 4790))
out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out.bind(("198.18.4.1", 0))
to = {"198.18.4.2": ("198.18.4.1", 4789), "198.18.4.1": ("198.18.4.2", 4789)}
held, count, swapped = {}, 0, 0
print("ready", flush=True)
while True:
    ready, _, _ = select.select([s, sys.stdin], [], [], 0.005)
    if sys.stdin in ready:
        break
    if not ready:
        for dest, (data, _) in list(held.items()):
            out.sendto(data, dest)
        held.clear()
        continue
    data, (host, _) = s.recvfrom(70000)
    dest = to[host]
    count += 1
    if dest in held:
        data0, after = held[dest]
        out.sendto(data, dest)
        if after <= 1:
            out.sendto(data0, dest)
            del held[dest]
            swapped += 1
        else:
            held[dest] = (data0, after - 1)
    elif count % 8 == 0:
        held[dest] = (data, 2)
    else:
        out.sendto(data, dest)
print(swapped, flush=True)
"""


def test_reordering_on_the_underlay_stays_byte_exact(make_netns, tmp_path):
    """A relay on the underlay delays one VXLAN datagram in eight behind the next two,
    both ways (this kernel has no netem): merging never joins segments out of order,
    and 64 MiB of TCP arrive byte for byte each way."""
    s1, s2 = make_netns(), make_netns()
    underlay(s1, s2, "198.18.4.1", "198.18.4.2")
    h1, h2 = Host(make_netns(), 0), Host(make_netns(), 1)
    h1.ip, h2.ip = "198.18.5.1", "198.18.5.2"
    relay = s1.popen(sys.executable, "-c", REORDER, stdin=-1, stdout=-1, text=True)
    forwarders = []
    try:
        assert relay.stdout.readline().strip() == "ready"
        for site, host, local in ((s1, h1, "198.18.4.1"), (s2, h2, "198.18.4.2")):
            tf = TapForward("--stats", "0", "--mtu", "1450", host.endpoint,
                            f"vxlan://198.18.4.1:4790?vni=7&local={local}:4789",
                            tmp_path=tmp_path, netns=site.name)  # fmt: skip
            forwarders.append(tf)
            tf.wait_for("forwarding")
        for h in (h1, h2):
            h.ns.ip("addr", "add", f"{h.ip}/24", "dev", h.tap)
        both_ways(h1, h2)
        relay.stdin.close()
        swapped = int(relay.stdout.readline())
        assert swapped > 1000  # the reordering did happen
    finally:
        for tf in forwarders:
            tf.stop()
        if relay.poll() is None:
            relay.kill()
        relay.wait()


UDP_GSO_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(17, 103, 1000)  # UDP_SEGMENT: 30 datagrams of 1000 bytes per send
for i in range(20):
    s.sendto(bytes([i]) * 30000, (sys.argv[1], 5002))
"""
UDP_RECEIVE = """
import collections, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], 5002))
s.settimeout(3)
print("ready", flush=True)
sizes = collections.Counter()
try:
    while sum(sizes.values()) < 600:
        data = s.recv(70000)
        assert data == data[:1] * len(data), "a datagram mixed two sends"
        sizes[len(data)] += 1
except socket.timeout:
    pass
print(dict(sizes), flush=True)
"""


def test_a_udp_stream_sent_with_gso_crosses_as_datagrams(sites):
    """The TAP host sends UDP with UDP_SEGMENT (the TAP negotiated USO, so it hands
    tap-forward GSO_UDP_L4 super-frames of 30 KB): the far host receives all 600
    datagrams of 1000 bytes, each whole, none merged or lost."""
    s = sites().start()
    opened = s.forwarders[0].wait_for("endpoint_opened", endpoint=s.h1.tap)
    assert " 0% packet loss" in s.h1.ping(s.h2).stdout  # ARP resolved before the stream
    receiver = s.h2.ns.popen(sys.executable, "-c", UDP_RECEIVE, s.h2.ip, stdout=-1, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        s.h1.ns.exec(sys.executable, "-c", UDP_GSO_SEND, s.h2.ip, timeout=30)
        sizes = receiver.stdout.readline().strip()
        receiver.wait(timeout=10)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    stats = s.forwarders[0].final_stats(timeout=8)
    assert sizes == "{1000: 600}", stats
    if opened["offload"] & 0x20:  # TUN_F_USO4: the super-frames reached tap-forward whole
        assert stats[s.h1.tap]["rx_packets"] < 600

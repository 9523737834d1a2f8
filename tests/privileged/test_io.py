"""Frames through real TAPs: what the kernel emits, what it receives, and
how PolledTap behaves around close, deletion and load."""

import os
import subprocess
import sys
import textwrap

import gevent
import gevent.event
import pytest

import greentap
from greentap.green.fdio import DEFAULT_BUDGET
from tests import frames
from tests.privileged.conftest import unique

HOST_IP = "198.18.0.1"  # the namespace's address on the TAP
PEER_IP = "198.18.0.2"  # the address greentap answers for
PEER_MAC = frames.mac("02:00:5e:00:00:02")


def configured(netns, tap):
    """Give the TAP's kernel side an address and bring it up; return the PolledTap."""
    netns.ip("addr", "add", f"{HOST_IP}/24", "dev", tap.name)
    tap.up()
    return tap.polled()


def recv_matching(polled, predicate, timeout=5):
    """Read frames until one satisfies `predicate`; fail after `timeout` seconds."""
    with gevent.Timeout(timeout, AssertionError("no matching frame arrived")):
        while True:
            frame = polled.recv()
            if predicate(frame):
                return frame


def test_receives_the_arp_request_a_ping_causes(netns, open_tap):
    """A ping to a neighbour makes the kernel send an ARP request out of the TAP;
    recv() returns it whole."""
    tap = open_tap()
    polled = configured(netns, tap)
    ping = netns.popen("ping", "-c", "1", "-W", "2", PEER_IP, stdout=subprocess.DEVNULL)
    try:
        frame = recv_matching(polled, lambda f: frames.parse_arp(f) is not None)
    finally:
        ping.wait(timeout=10)
    arp = frames.parse_arp(frame)
    assert arp["op"] == 1
    assert (arp["spa"], arp["tpa"]) == (HOST_IP, PEER_IP)
    assert arp["eth_dst"] == b"\xff" * 6
    assert arp["eth_src"] == frames.mac(tap.mac)
    assert len(frame) == 42  # the kernel's ARP frame, unpadded: nothing merged or cut
    assert polled.counters.rx_packets >= 1


def test_kernel_receives_a_frame_we_send(netns, open_tap):
    """An ARP request written to the TAP reaches the kernel, which answers it."""
    tap = open_tap()
    polled = configured(netns, tap)
    rx_before = netns.link(tap.name)["stats64"]["rx"]["packets"]
    request = frames.arp(1, PEER_MAC, PEER_IP, HOST_IP)
    assert polled.send(request) is True
    reply = recv_matching(polled, lambda f: (frames.parse_arp(f) or {}).get("op") == 2)
    arp = frames.parse_arp(reply)
    assert arp["eth_dst"] == PEER_MAC
    assert (arp["spa"], arp["tpa"]) == (HOST_IP, PEER_IP)
    assert netns.link(tap.name)["stats64"]["rx"]["packets"] == rx_before + 1
    assert polled.counters.tx_packets == 1


def test_ping_round_trip_through_greentap(netns, open_tap):
    """greentap answering ARP and ICMP by hand: the namespace's ping gets 0% loss."""
    tap = open_tap()
    polled = configured(netns, tap)
    peer_mac = PEER_MAC

    def responder():
        for frame in polled:
            arp = frames.parse_arp(frame)
            if arp and arp["op"] == 1 and arp["tpa"] == PEER_IP:
                polled.send(frames.arp(2, peer_mac, PEER_IP, arp["spa"], arp["sha"]))
            elif frame[12:14] == b"\x08\x00" and frame[23] == 1 and frame[34] == 8:
                polled.send(frames.icmp_echo_reply(frame, peer_mac))

    g = gevent.spawn(responder)
    try:
        ping = netns.popen(
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            PEER_IP,
            stdout=subprocess.PIPE,
            text=True,
        )
        # Wait cooperatively so the responder greenlet keeps running.
        with gevent.Timeout(15):
            while ping.poll() is None:
                gevent.sleep(0.05)
        out = ping.stdout.read()
    finally:
        polled.close()
        g.join(timeout=2)
    assert ping.returncode == 0, out
    assert " 0% packet loss" in out


def test_send_to_a_down_link_is_dropped_and_counted(netns, open_tap):
    """EIO from a TAP whose link is down: send() returns False and counts tx_link_down."""
    tap = open_tap()
    polled = tap.polled()
    assert not tap.is_up
    assert polled.send(frames.arp(1, PEER_MAC, PEER_IP, HOST_IP)) is False
    assert polled.counters.tx_link_down == 1
    assert polled.counters.tx_dropped == 0
    assert polled.counters.tx_packets == 0


def test_runt_on_a_real_tap_is_refused(netns, open_tap):
    """A 13-byte frame raises FrameRejected; the kernel never sees it."""
    tap = open_tap()
    polled = configured(netns, tap)
    rx_before = netns.link(tap.name)["stats64"]["rx"]
    with pytest.raises(greentap.FrameRejected):
        polled.send(b"\xff" * 13)
    assert netns.link(tap.name)["stats64"]["rx"] == rx_before
    assert polled.counters.tx_errors == 1


def test_close_wakes_a_blocked_reader_within_100ms(netns, open_tap):
    """A greenlet blocked in recv() on a real, idle TAP wakes within 100 ms of close()."""
    polled = configured(netns, open_tap())
    woke = gevent.event.Event()
    outcome = []

    def reader():
        try:
            outcome.append(polled.recv())
        except greentap.TapClosed as exc:
            outcome.append(exc)
        woke.set()

    gevent.spawn(reader)
    gevent.sleep(0.05)
    assert not woke.is_set()  # really blocked: the TAP is idle
    polled.close()
    assert woke.wait(timeout=0.1), "reader still blocked 100 ms after close()"
    assert isinstance(outcome[0], greentap.TapClosed)


def test_deleted_interface_wakes_reader_with_tap_vanished(netns, open_tap):
    """`ip link del` under a blocked reader raises TapVanished instead of hanging."""
    tap = open_tap()
    polled = configured(netns, tap)
    reader = gevent.spawn(polled.recv)
    gevent.sleep(0.05)
    netns.ip("link", "del", tap.name)
    with pytest.raises(greentap.TapVanished, match="deleted"):
        reader.get(timeout=5)
    with pytest.raises(greentap.TapVanished):
        polled.send(frames.arp(1, PEER_MAC, PEER_IP, HOST_IP))


def test_tun_mode_reads_ip_packets(netns, open_tap):
    """A TUN device yields bare IPv4 packets (no Ethernet header, no ARP)."""
    tun = open_tap(mode="tun")
    polled = configured(netns, tun)
    ping = netns.popen("ping", "-c", "1", "-W", "1", PEER_IP, stdout=subprocess.DEVNULL)
    try:
        packet = recv_matching(polled, lambda p: p[0] >> 4 == 4)
    finally:
        ping.wait(timeout=10)
    assert packet[9] == 1  # ICMP
    assert packet[16:20] == frames.ip4(PEER_IP)


def test_vnet_hdr_frames_carry_the_header(netns, open_tap):
    """With vnet_hdr each frame starts with a virtio-net header before the Ethernet header."""
    tap = open_tap(vnet_hdr=True)
    polled = configured(netns, tap)
    ping = netns.popen("ping", "-c", "1", "-W", "1", PEER_IP, stdout=subprocess.DEVNULL)
    try:
        frame = recv_matching(polled, lambda f: frames.parse_arp(f[10:]) is not None)
    finally:
        ping.wait(timeout=10)
    assert frame[:10] == bytes(10)  # no GSO, no checksum offload on an ARP frame
    assert len(frame) == 10 + 42


def test_no_fd_leaked_after_1000_open_close_cycles(netns):
    """1000 attach/poll/close cycles (and 20 create/close) leave the fd table unchanged."""
    name = unique()
    netns.ip("tuntap", "add", "dev", name, "mode", "tap")
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(1000):
        greentap.Tap(name, netns=netns.name).polled().close()
    for _ in range(20):
        with greentap.Tap(unique(), netns=netns.name) as tap:
            tap.polled().close()
    assert set(os.listdir("/proc/self/fd")) == before
    assert netns.links() == ["lo", name]


SENDER = textwrap.dedent(
    """
    import socket, sys
    count = int(sys.argv[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"x" * 18
    for i in range(count):
        s.sendto(payload, (sys.argv[2], 9))
    print(count)
    """
)


def test_other_greenlets_keep_ticking_while_100k_frames_are_read(netns, open_tap):
    """100,000 frames queued in the kernel are all read while a ticker greenlet keeps running.

    The frames are queued before reading starts, so the device never runs
    dry: only the batch budget lets the ticker run.
    """
    count = 100_000
    tap = open_tap()
    tap.txqueuelen = count + 1000  # the TAP's own queue holds them all
    polled = configured(netns, tap)
    netns.ip("neigh", "add", PEER_IP, "lladdr", "02:00:5e:00:00:02", "dev", tap.name)
    sent = netns.exec(sys.executable, "-c", SENDER, str(count), PEER_IP, timeout=120)
    assert int(sent.stdout) == count
    assert netns.link(tap.name)["stats64"]["tx"]["dropped"] == 0

    ticks = []
    reading = gevent.event.Event()

    def ticker():
        reading.wait()
        while polled.counters.rx_packets < count:
            ticks.append(polled.counters.rx_packets)
            gevent.sleep(0)  # runs whenever the reader yields, however fast it reads

    def reader():
        buf = bytearray(polled.max_frame_size)
        reading.set()
        for _ in range(count):
            polled.recv_into(buf)

    t = gevent.spawn(ticker)
    gevent.spawn(reader).get(timeout=120)
    t.join(timeout=5)
    assert polled.counters.rx_packets == count
    assert polled.counters.rx_bytes == count * (14 + 20 + 8 + 18)
    during = [n for n in ticks if 0 < n < count]
    # The reader yields once per budget (50 frames): about count / 50 chances.
    # (A 1 ms timer here made the count depend on how fast the machine reads.)
    yields = count // DEFAULT_BUDGET
    assert len(during) >= yields // 2, f"ticker ran {len(during)} times during {yields} yields"

"""Checksum/segmentation offload passthrough between TAPs: correct bytes, not just speed."""

import sys
import textwrap

import pytest

from greentap.app import exits
from tests.privileged.topology import Host, TapForward, hosts, underlay

# Every test here runs over each relay loop, C and pure Python (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("relay_loop")

TRANSFER = 64 << 20  # bytes

RECEIVER = textwrap.dedent(
    """
    import hashlib, socket, sys
    srv = socket.create_server((sys.argv[1], 5001), family=socket.getaddrinfo(sys.argv[1], 0)[0][0])
    print("ready", flush=True)
    conn, _ = srv.accept()
    digest, total = hashlib.sha256(), 0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        digest.update(data)
        total += len(data)
    print(total, digest.hexdigest(), flush=True)
    """
)

SENDER = textwrap.dedent(
    """
    import hashlib, random, socket, sys
    rng = random.Random(7)
    digest, left = hashlib.sha256(), int(sys.argv[2])
    with socket.create_connection((sys.argv[1], 5001), timeout=30) as s:
        while left:
            block = rng.randbytes(min(left, 1 << 20))
            s.sendall(block)
            digest.update(block)
            left -= len(block)
    print(digest.hexdigest())
    """
)


def transfer(a, b):
    """Send TRANSFER pseudo-random bytes from a to b over TCP; return both digests."""
    return transfer_between(a.ns, b.ns, b.ip)


def transfer_between(src_ns, dst_ns, address, bind=None):
    """Send TRANSFER pseudo-random bytes over TCP from ``src_ns`` to ``address`` in
    ``dst_ns`` (whose receiver listens on ``bind``, default ``address``); return the
    sender's and the receiver's SHA-256."""
    receiver = dst_ns.popen(sys.executable, "-c", RECEIVER, bind or address, stdout=-1, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        sent = src_ns.exec(sys.executable, "-c", SENDER, address, str(TRANSFER), timeout=120)
        total, received = receiver.stdout.readline().split()
        receiver.wait(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert int(total) == TRANSFER
    return sent.stdout.strip(), received


@pytest.mark.parametrize(
    ("mode", "extra"),
    [("auto", ()), ("off", ()), ("auto", ("--workers", "2"))],
    ids=["offload", "no-offload", "offload-2-workers"],
)
def test_tcp_through_the_forwarder_is_byte_exact(make_netns, tmp_path, mode, extra):
    """64 MiB over TCP arrive byte for byte (SHA-256), with offloads passed through
    (64 KiB super-frames and their virtio-net headers) and without, and through
    two worker processes over multi-queue TAPs."""
    a, b = hosts(make_netns, 2)
    tf = TapForward(
        "--stats", "0", "--offload", mode, *extra, a.endpoint, b.endpoint, tmp_path=tmp_path
    )
    try:
        opened = [tf.wait_for("endpoint_opened", endpoint=h.tap) for h in (a, b)]
        a.configure()
        b.configure()
        sent, received = transfer(a, b)
        assert sent == received
        status, _ = tf.terminate(timeout=8)
        assert status == 0
        stats = {
            e["endpoint"]: e for e in tf.events() if e["event"] == "stats" and "worker" not in e
        }
    finally:
        tf.stop()
    average = stats[a.tap]["rx_bytes"] / stats[a.tap]["rx_packets"]
    if mode == "auto":
        assert all(e["offload"] for e in opened)
        assert average > 4000, "no super-frames: offloads did not pass through"
    else:
        assert not any(e["offload"] for e in opened)
        assert average < 1515


def test_offload_is_on_with_a_tunnel_and_refused_when_forced_with_fd(make_netns, tmp_path):
    """auto turns offloads on beside a tunnel (which cuts and merges super-frames);
    'on' with an fd: endpoint (plain frames only) is a usage error."""
    (a,) = hosts(make_netns, 1)
    vxlan = "vxlan://127.0.0.1:47890?vni=5&local=127.0.0.1:47891"
    tf = TapForward("--stats", "0", "--offload", "auto", a.endpoint, vxlan, tmp_path=tmp_path)
    try:
        assert tf.wait_for("endpoint_opened", endpoint=a.tap)["offload"] != 0
        assert tf.wait_for("endpoint_opened", endpoint=vxlan)["offload"]["gso"] is True
    finally:
        tf.stop()
    forced = TapForward("--offload", "on", a.endpoint, "fd:5", tmp_path=tmp_path)
    try:
        assert forced.proc.wait(timeout=20) == exits.EXIT_USAGE
        line = forced.log_path.read_text().strip()
        assert "--offload on needs every forwarding endpoint to be a TAP" in line
    finally:
        forced.stop()


def test_tcp_is_byte_exact_where_offloads_are_off(make_netns, tmp_path):
    """The fallback: with --offload off a TAP joined to a VXLAN tunnel gets no
    offloads, so each kernel sends finished, MTU-sized frames; two sites over VXLAN
    carry 64 MiB of TCP byte for byte (SHA-256)."""
    s1, s2 = make_netns(), make_netns()
    underlay(s1, s2, "198.18.4.1", "198.18.4.2")
    h1, h2 = Host(make_netns(), 0), Host(make_netns(), 1)
    h1.ip, h2.ip = "198.18.5.1", "198.18.5.2"
    sites = [
        TapForward("--stats", "0", "--mtu", "1450", "--offload", "off", h.endpoint,
                   f"vxlan://{peer}?vni=7&local={local}:4789", tmp_path=tmp_path, netns=s.name)
        for h, s, local, peer in ((h1, s1, "198.18.4.1", "198.18.4.2"),
                                  (h2, s2, "198.18.4.2", "198.18.4.1"))
    ]  # fmt: skip
    try:
        for site, h in zip(sites, (h1, h2), strict=True):
            assert site.wait_for("endpoint_opened", endpoint=h.tap)["offload"] == 0
            h.ns.ip("addr", "add", f"{h.ip}/24", "dev", h.tap)
        sent, received = transfer(h1, h2)
        assert sent == received
        stats = sites[0].final_stats(timeout=5)
    finally:
        for site in sites:
            site.stop()
    assert stats[h1.tap]["rx_bytes"] / stats[h1.tap]["rx_packets"] < 1465  # MTU-sized

"""Hostile datagrams at the tunnel ports' receive paths, not only at the decoder.

Hypothesis builds datagrams that pass each earlier check in turn (a listed
sender, the I flag, our VNI, an inner frame of any length) and sends them,
over real loopback sockets, to a VxlanPort and a UdpPort.  A model says what
each datagram must become: a frame handed on unchanged, or a drop counted by
its reason.  Nothing a datagram contains may raise out of the port.
"""

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greentap.core import vxlan
from greentap.core.coalesce import PLAIN_HEADER
from greentap.core.kernel_constants import ETH_HLEN
from greentap.green import relay
from greentap.ports.tunnel import UdpPort, VxlanPort

VNI = 4242
SENTINEL = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x99" + b"\x88\xb5" + b"end-of-batch".ljust(46)


def endpoint(host):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    return s


# Each rig runs without and with offloads (the batched GRO path, whose frames come
# behind a vnet header: all zeros for a frame handed on as it came), reading its
# batches with C's recvmmsg and with the Python twin's loop.
RIGS = {"plain": (False, True), "offload": (True, True), "offload-python": (True, False)}


def opened(make, kind):
    """A port without offloads, or with them reading batches with recvmmsg (C) or
    with one recvmsg_into per datagram (the Python twin)."""
    offload, c_reads = RIGS[kind]
    with pytest.MonkeyPatch.context() as mp:
        if not c_reads:
            mp.setattr(relay, "recv_datagrams", None)
        return make(offload)


@pytest.fixture(scope="module", params=list(RIGS))
def vxlan_rig(request):
    remote, stranger = endpoint("127.0.0.2"), endpoint("127.0.0.9")
    port = opened(
        lambda o: VxlanPort("vx", [remote.getsockname()], VNI, ("127.0.0.1", 0), offload=o),
        request.param,
    )
    yield port, {"remote": remote, "stranger": stranger}
    port.close()
    remote.close()
    stranger.close()


@pytest.fixture(scope="module", params=list(RIGS))
def udp_rig(request):
    peer, stranger = endpoint("127.0.0.2"), endpoint("127.0.0.9")
    port = opened(
        lambda o: UdpPort("udp", peer.getsockname(), ("127.0.0.1", 0), offload=o), request.param
    )
    yield port, {"remote": peer, "stranger": stranger}
    port.close()
    peer.close()
    stranger.close()


inner = st.binary(max_size=1600)
vxlan_datagram = st.one_of(
    st.binary(max_size=40),  # anything, mostly short
    st.builds(  # a header with any flags and VNI
        lambda flags, vni, rest, body: bytes([flags]) + rest + struct.pack("!I", vni << 8) + body,
        st.integers(0, 255),
        st.integers(0, vxlan.MAX_VNI),
        st.binary(min_size=3, max_size=3),
        inner,
    ),
    st.builds(lambda body: vxlan.header(VNI) + body, inner),  # passes every header check
    st.builds(lambda body: vxlan.header(VNI ^ 1) + body, inner),  # the VNI next door
)
senders = st.sampled_from(["remote", "remote", "remote", "stranger"])


def vxlan_model(sender, data):
    """What the port must make of one datagram: ("frame", bytes) or ("drop", reason)."""
    if sender != "remote":
        return "drop", "rx_unknown_sender"
    if len(data) < vxlan.HEADER_SIZE + ETH_HLEN:
        return "drop", "rx_short"
    reason = vxlan.check_header(data[: vxlan.HEADER_SIZE], VNI)
    if reason is not None:
        return "drop", f"rx_{reason}"
    return "frame", data[vxlan.HEADER_SIZE :]


def udp_model(sender, data):
    if sender != "remote":
        return "drop", "rx_unknown_sender"
    if len(data) < ETH_HLEN:
        return "drop", "rx_runt"
    return "frame", data


def run_batch(port, socks, batch, model, wrap):
    """Send the batch and a sentinel frame; read until the sentinel; compare with the model."""
    drops_before = dict(port.drops)
    errors_before = port.counters.rx_errors
    for sender, data in batch:
        socks[sender].sendto(data, port.local)
    socks["remote"].sendto(wrap(SENTINEL), port.local)
    buf = bytearray(port.max_frame_size)
    got = []
    while True:
        n = port.recv_into(buf)  # nothing a datagram contains may raise here
        assert bytes(buf[: port.header_size]) == PLAIN_HEADER[: port.header_size]
        frame = bytes(buf[port.header_size : n])
        if frame == SENTINEL:
            break
        got.append(frame)
    expected = [model(s, d) for s, d in batch]
    assert got == [value for kind, value in expected if kind == "frame"]
    drops = {k: v - drops_before.get(k, 0) for k, v in port.drops.items()}
    want = {}
    for kind, reason in expected:
        if kind == "drop":
            want[reason] = want.get(reason, 0) + 1
    assert {k: v for k, v in drops.items() if v} == want
    assert port.counters.rx_errors - errors_before == sum(want.values())


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(st.lists(st.tuples(senders, vxlan_datagram), max_size=20))
def test_vxlan_port_receive_path(vxlan_rig, batch):
    """Every datagram at a VxlanPort becomes exactly what the model says: the inner
    frame, whole and unchanged, or a drop counted by its reason; none raises."""
    port, socks = vxlan_rig
    run_batch(port, socks, batch, vxlan_model, lambda f: vxlan.header(VNI) + f)


@FUZZ
@given(st.lists(st.tuples(senders, st.binary(max_size=1600)), max_size=20))
def test_udp_port_receive_path(udp_rig, batch):
    """Every datagram at a UdpPort is a frame from the peer (14 bytes or more) or a
    counted drop (another sender, a runt); none raises."""
    port, socks = udp_rig
    run_batch(port, socks, batch, udp_model, lambda f: f)

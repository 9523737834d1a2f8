"""802.1Q with real kernels: access ports and a trunk between two tap-forward switches."""

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.privileged.conftest import python_env
from tests.privileged.topology import SCRIPT, hosts, iperf3

pytestmark = pytest.mark.privileged


def free_udp_ports(n):
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def stats_of(control):
    out = subprocess.run([sys.executable, SCRIPT, "--control", control, "--command", "stats"],
                         capture_output=True, text=True, timeout=30, env=python_env())  # fmt: skip
    return json.loads(out.stdout)["stats"]


INJECT = textwrap.dedent("""
    import socket, struct, sys
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((sys.argv[1], 0))
    frame = b"\\xff" * 6 + bytes.fromhex("020000000099") + struct.pack("!HH", 0x8100, 10)
    s.send(frame + b"\\x08\\x06" + bytes(46))
""")


def test_hosts_reach_their_vlan_across_a_trunk_and_never_another(make_netns, forwarders, tmp_path):
    """Two tap-forward switches, each with an access port of VLAN 10 and one of VLAN 20,
    joined by a udp:// trunk carrying both: hosts of one VLAN ping each other and carry
    TCP (offloads on: tagged super-frames) across the trunk; across VLANs ping (and ARP)
    fail though all share one subnet; a tagged frame sent into an access port goes
    nowhere and is counted."""
    a10, c20, d10, e20 = hosts(make_netns, 4)
    p1, p2 = free_udp_ports(2)
    ctl1, ctl2 = str(tmp_path / "s1.sock"), str(tmp_path / "s2.sock")
    s1 = forwarders("--stats", "0", "--control", ctl1, f"{a10.endpoint}&vlan=10",
                    f"{c20.endpoint}&vlan=20",
                    f"udp://127.0.0.1:{p2}?local=127.0.0.1:{p1}&trunk=10,20")  # fmt: skip
    s2 = forwarders("--stats", "0", "--control", ctl2, f"{d10.endpoint}&vlan=10",
                    f"{e20.endpoint}&vlan=20",
                    f"udp://127.0.0.1:{p1}?local=127.0.0.1:{p2}&trunk=10,20")  # fmt: skip
    for s in (s1, s2):
        s.wait_for("forwarding", mode="switch")
    for h in (a10, c20, d10, e20):
        h.configure()
    ok = a10.ping(d10, count=3)
    assert ok.returncode == 0 and " 0% packet loss" in ok.stdout, ok.stdout
    ok = e20.ping(c20, count=3)
    assert ok.returncode == 0 and " 0% packet loss" in ok.stdout, ok.stdout
    # TCP with offloads: super-frames tagged (the vnet header moved), cut for the trunk.
    result = iperf3(a10, d10, seconds=1)
    assert result["end"]["sum_received"]["bytes"] > 1_000_000
    for src, dst in ((a10, c20), (a10, e20), (d10, c20)):
        out = src.ping(dst, count=2, interval="0.2")
        assert out.returncode != 0 and "100% packet loss" in out.stdout, (src.ip, dst.ip)
        neigh = src.ns.ip("neigh", "show", dst.ip).stdout
        assert "lladdr" not in neigh, neigh  # ARP never answered across VLANs
    a10.ns.exec(sys.executable, "-c", INJECT, a10.tap)
    stats = stats_of(ctl1)
    port = next(p for p in stats["ports"] if p["endpoint"] == a10.tap)
    assert port["vlan"] == 10 and port["drops"].get("rx_vlan_tagged_on_access") == 1
    trunk = next(p for p in stats["ports"] if p["kind"] == "udp")
    assert trunk["trunk"] == "10,20"
    assert int(stats["switch"]["vlans"]["10"]) > 0 and int(stats["switch"]["vlans"]["20"]) > 0
    for s in (s1, s2):
        assert s.terminate()[0] == 0

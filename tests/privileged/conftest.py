"""Fixtures for tests that need root: real TAPs in throw-away network namespaces.

Every test gets its own namespace (unique name, IPv6 off so router
solicitations and DAD do not add frames to the count) and unique interface
names; both are removed when the test ends, also when it fails.

Outside CI these tests skip when the machine cannot run them.  In CI
(``CI=true``) or with ``GREENTAP_REQUIRE_PRIVILEGED=1`` a missing privilege is
a failure: the privileged tests must run there.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

import greentap
from tests.conftest import must_run

HERE = os.path.dirname(os.path.abspath(__file__))
#: The real peers the privileged tests run (Debian: iproute2, iputils-ping,
#: util-linux, tcpdump, tshark, iperf3, ethtool).
TOOLS = ("ip", "ping", "setpriv", "tcpdump", "tshark", "iperf3", "ethtool")


def _missing():
    if os.geteuid() != 0:
        return "not running as root"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (modprobe tun)"
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        return f"not installed: {', '.join(absent)}"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.fspath).startswith(HERE):
            item.add_marker(pytest.mark.privileged)


@pytest.fixture(autouse=True)
def _privileges():
    why = _missing()
    if why:
        if must_run():
            pytest.fail(f"privileged test must run here but cannot: {why}")
        pytest.skip(f"{why}; scripts/run-tests (as root) installs what these tests need")


def unique(prefix="gt"):
    """A fresh interface name of 12 bytes."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def sh(*argv, ns=None, check=True, timeout=20, **kw):
    """Run a command (optionally inside netns `ns`), returning CompletedProcess."""
    if ns is not None:
        argv = ("ip", "netns", "exec", ns, *argv)
    return subprocess.run(argv, check=check, timeout=timeout, capture_output=True, text=True, **kw)


class Netns:
    """A throw-away network namespace and helpers to look inside it."""

    def __init__(self, name):
        self.name = name

    def __str__(self):
        return self.name

    def ip(self, *args, check=True):
        return sh("ip", "-n", self.name, *args, check=check)

    def link(self, dev):
        """`ip -d -s link show dev` as a dict, or None if the device is absent."""
        out = sh("ip", "-n", self.name, "-j", "-d", "-s", "link", "show", "dev", dev, check=False)
        if out.returncode != 0:
            return None
        return json.loads(out.stdout)[0]

    def links(self):
        return [d["ifname"] for d in json.loads(self.ip("-j", "link", "show").stdout)]

    def exec(self, *argv, **kw):
        return sh(*argv, ns=self.name, **kw)

    def popen(self, *argv, **kw):
        return subprocess.Popen(("ip", "netns", "exec", self.name, *argv), **kw)


def _new_netns():
    ns = Netns(f"gt-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    sh("ip", "netns", "add", ns.name)
    try:
        ns.ip("link", "set", "lo", "up")
        ns.exec(
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        )
    except BaseException:
        sh("ip", "netns", "del", ns.name, check=False)
        raise
    return ns


@pytest.fixture
def make_netns():
    """Make fresh namespaces (lo up, IPv6 off); all are deleted after the test."""
    made = []

    def make():
        ns = _new_netns()
        made.append(ns)
        return ns

    yield make
    for ns in made:
        sh("ip", "netns", "del", ns.name, check=False)


@pytest.fixture
def netns(make_netns):
    """A fresh namespace with lo up and IPv6 off; deleted after the test."""
    return make_netns()


@pytest.fixture
def open_tap(netns):
    """Open Taps inside the test's namespace; all are closed after the test."""
    opened = []

    def _open(name=None, **kw):
        kw.setdefault("netns", netns.name)
        tap = greentap.Tap(name or unique(), **kw)
        opened.append(tap)
        return tap

    yield _open
    for tap in opened:
        tap.close()


@pytest.fixture
def forwarders(tmp_path):
    """Start `tap-forward` processes (see :class:`topology.TapForward`); all are
    killed after the test if still running."""
    from tests.privileged.topology import TapForward  # it imports this module

    started = []

    def start(*args, netns=None, env=None):
        tf = TapForward(*args, tmp_path=tmp_path, netns=netns, env=env)
        started.append(tf)
        return tf

    yield start
    for tf in started:
        tf.stop()


def python_env():
    """Environment for a child Python that must import the greentap under test."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def capless_python(ns, code):
    """Run Python code in `ns` as root but with every capability dropped.

    Returns the CompletedProcess; the child prints what it wants checked.
    """
    return sh(
        "setpriv",
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--",
        sys.executable,
        "-c",
        code,
        ns=ns.name,
        check=False,
        env=python_env(),
    )


@pytest.fixture
def forwarder_in(tmp_path):
    """Start tap-forward inside a namespace (as `ip netns exec NS tap-forward ...`)."""
    from tests.privileged.topology import TapForward  # it imports this module

    started = []

    def start(ns, *args):
        tf = TapForward(*args, tmp_path=tmp_path, netns=ns.name)
        started.append(tf)
        tf.wait_for("forwarding")
        return tf

    yield start
    for tf in started:
        tf.stop()


VNI = 42


@pytest.fixture
def kernel_vtep(make_netns, forwarder_in):
    """Namespace K with a kernel vxlan device; tap-forward in F bridges it to a TAP in B."""
    from tests.privileged.topology import Host, underlay  # they import this module

    k, f, b_ns = make_netns(), make_netns(), make_netns()
    uk, _ = underlay(k, f, "198.18.2.1", "198.18.2.2")
    k.ip(
        "link", "add", "vx42", "type", "vxlan", "id", str(VNI), "remote", "198.18.2.2",
        "local", "198.18.2.1", "dstport", "4789", "dev", uk,
    )  # fmt: skip
    k.ip("addr", "add", "198.18.3.1/24", "dev", "vx42")
    k.ip("link", "set", "vx42", "up")
    # On one host the kernel hands its TCP checksum offload over the veth
    # unfinished (a real NIC would complete it); a UDP socket cannot see that.
    k.exec("ethtool", "-K", "vx42", "tx", "off")
    b = Host(b_ns, 1)
    b.ip = "198.18.3.2"
    endpoint = f"vxlan://198.18.2.1?vni={VNI}&local=198.18.2.2:4789"
    tf = forwarder_in(f, "--stats", "0", "--mtu", "1450", endpoint, b.endpoint)
    b.ns.ip("addr", "add", f"{b.ip}/24", "dev", b.tap)
    return k, b, tf, endpoint, uk

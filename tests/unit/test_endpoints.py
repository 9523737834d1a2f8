"""Endpoint descriptions: NAME, tap:NAME, options."""

import pytest

from greentap.core.endpoints import parse_endpoint
from greentap.errors import EndpointSyntaxError, TapNameTooLong


def test_bare_name_is_a_tap():
    """A bare name means a TAP of that name."""
    spec = parse_endpoint("tap0")
    assert (spec.kind, spec.name, spec.options) == ("tap", "tap0", {})


def test_tap_scheme_with_namespace():
    """tap:NAME?netns=NS opens the TAP inside NS."""
    spec = parse_endpoint("tap:vm1?netns=blue")
    assert (spec.kind, spec.name, spec.options) == ("tap", "vm1", {"netns": "blue"})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("foo:bar", "unknown endpoint type 'foo'"),
        ("tap:", "names no interface"),
        ("tap:x?mtu=9000", "unknown option 'mtu'"),
        ("tap:x?netns=a&netns=b", "given twice"),
        ("tap:x?garbage", "unknown option 'garbage'"),
        ("tap:x?rate=0", "rate '0': expected a number above 0 to 1e"),
        ("tap:x?rate=-5", "rate '-5': expected a number above 0"),
        ("tap:x?rate=fast", "rate 'fast': expected a number above 0"),
        ("tap:x?rate=inf", "rate 'inf': expected a number above 0"),
        ("tap:x?rate=10&burst=0.5", "burst '0.5': expected a number from 1 to"),
        ("tap:x?burst=10", "burst= needs rate="),
        ("pcap:/tmp/x?rate=10", "unknown option 'rate'"),
        ("fd:3?netns=x", "unknown option 'netns'"),
        ("packet:", "names no interface"),
        ("vxlan://198.18.0.2?vni=1&srcport=5000", "srcport '5000': expected MIN-MAX"),
        ("vxlan://198.18.0.2?vni=1&srcport=6000-5000", "srcport '6000-5000': 6000 is above"),
        ("vxlan://198.18.0.2?vni=1&srcport=0-10", "srcport '0': expected a whole number"),
        ("vxlan://198.18.0.2?vni=1&srcport=1-70000", "srcport '70000'"),
        ("udp://198.18.0.2:9?srcport=1-2", "unknown option 'srcport'"),
        ("udp://198.18.0.2:9?mtu=67", "mtu '67': expected a whole number from 68"),
        ("vxlan://198.18.0.2?vni=1&mtu=1400", "unknown option 'mtu'"),
        ("packet:eth0?qdisc=fast", "qdisc 'fast': expected bypass or use"),
        ("packet:eth0?vni=3", "unknown option 'vni'"),
        ("packet:eth0?netns=..", "netns '..'"),
        ("packet:eth0?burst=3", "burst= needs rate="),
    ],
)
def test_bad_syntax_is_explained(text, match):
    """Bad endpoints raise EndpointSyntaxError saying what is wrong and what is expected."""
    with pytest.raises(EndpointSyntaxError, match=match):
        parse_endpoint(text)


def test_bad_name_is_refused_at_parse_time():
    """Names are validated before anything is opened."""
    with pytest.raises(TapNameTooLong):
        parse_endpoint("tap:" + "x" * 16)


@pytest.mark.parametrize(
    ("text", "rate", "burst"),
    [
        ("tap0?rate=1000", 1000.0, None),
        ("tap:tap0?netns=blue&rate=2.5&burst=4", 2.5, 4.0),
        ("vxlan://198.18.0.9?vni=7&rate=100", 100.0, None),
        ("udp://127.0.0.1:5555?rate=50&burst=50", 50.0, 50.0),
        ("fd:5?rate=10", 10.0, None),
    ],
)
def test_every_carrying_endpoint_takes_a_rate_limit(text, rate, burst):
    """?rate=PPS[&burst=N] parses to numbers on TAP, tunnel and fd endpoints."""
    spec = parse_endpoint(text)
    assert spec.options["rate"] == rate
    assert spec.options.get("burst") == burst


def test_packet_endpoint_with_its_options():
    """packet:IFNAME takes netns, qdisc and a rate limit."""
    spec = parse_endpoint("packet:eth0?netns=blue&qdisc=use&rate=100")
    assert (spec.kind, spec.name) == ("packet", "eth0")
    assert spec.options == {"netns": "blue", "qdisc": "use", "rate": 100.0}
    assert parse_endpoint("packet:bond0").options == {}


def test_a_packet_interface_name_is_checked():
    """An interface name too long for Linux is refused, never truncated."""
    with pytest.raises(TapNameTooLong):
        parse_endpoint("packet:" + "x" * 16)


def test_vxlan_srcport_range():
    """&srcport=MIN-MAX on vxlan:// gives the range of outer source ports."""
    spec = parse_endpoint("vxlan://198.18.0.2?vni=5&srcport=49152-65535")
    assert spec.options["srcport"] == (49152, 65535)
    assert "srcport" not in parse_endpoint("vxlan://198.18.0.2?vni=5").options


def test_udp_mtu():
    """udp://...?mtu=N gives the peer's MTU."""
    assert parse_endpoint("udp://198.18.0.2:9?mtu=1500").options["mtu"] == 1500

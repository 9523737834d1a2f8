"""Endpoint descriptions: NAME, tap:NAME, options."""

import pytest

from greentap.endpoints import parse_endpoint
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

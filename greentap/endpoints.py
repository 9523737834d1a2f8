"""Parsing endpoint descriptions such as ``tap0`` or ``tap:tap0?netns=blue``.

Pure code, no I/O: the result says what to open, :func:`greentap.ports.open_port`
opens it.
"""

import dataclasses
import urllib.parse

from greentap.errors import EndpointSyntaxError
from greentap.names import encode_ifname

#: Options each endpoint kind accepts in its ``?key=value`` part.
OPTIONS = {
    "tap": {"netns"},
}
SYNTAX = "NAME or tap:NAME[?netns=NS]"


@dataclasses.dataclass(frozen=True)
class EndpointSpec:
    """What an endpoint description asks for.

    Attributes:
        kind: ``"tap"``.
        name: the interface name (or template).
        options: the ``?key=value`` options as a dict of str.
        text: the description as given.
    """

    kind: str
    name: str
    options: dict
    text: str


def parse_endpoint(text):
    """Parse one endpoint description.

    Args:
        text: ``NAME`` or ``tap:NAME``, optionally followed by ``?netns=NS``.

    Returns:
        An :class:`EndpointSpec`.

    Raises:
        EndpointSyntaxError: unknown kind, unknown or repeated option.
        TapNameError: the interface name is not valid.
    """
    rest = text
    kind = "tap"
    scheme, sep, after = text.partition(":")
    if sep:
        if scheme not in OPTIONS:
            raise EndpointSyntaxError(
                None, f"unknown endpoint type {scheme!r} in {text!r}; expected {SYNTAX}"
            )
        kind, rest = scheme, after
    name, _, query = rest.partition("?")
    if not name:
        raise EndpointSyntaxError(None, f"endpoint {text!r} names no interface; expected {SYNTAX}")
    options = {}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in OPTIONS[kind]:
            known = ", ".join(sorted(OPTIONS[kind])) or "none"
            raise EndpointSyntaxError(None, f"unknown option {key!r} in {text!r} (known: {known})")
        if key in options:
            raise EndpointSyntaxError(None, f"option {key!r} given twice in {text!r}")
        options[key] = value
    if query and not options:
        raise EndpointSyntaxError(None, f"cannot parse options {query!r} in {text!r}")
    encode_ifname(name)
    return EndpointSpec(kind, name, options, text)

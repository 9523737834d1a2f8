"""Parsing endpoint descriptions such as ``tap0``, ``tap:tap0?netns=blue``,
``vxlan://198.18.0.2?vni=42`` or ``udp://[::1]:5555?local=[::1]:5556``.

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
    "vxlan": {"vni", "remote", "local"},
    "udp": {"local"},
}
#: Options that may be given more than once.
REPEATABLE = {"remote"}
SYNTAX = (
    "NAME, tap:NAME[?netns=NS], vxlan://REMOTE[:PORT]?vni=N[&remote=HOST[:PORT]...]"
    "[&local=ADDR:PORT] or udp://REMOTE:PORT[?local=ADDR:PORT]"
)


@dataclasses.dataclass(frozen=True)
class EndpointSpec:
    """What an endpoint description asks for.

    Attributes:
        kind: ``"tap"``, ``"vxlan"`` or ``"udp"``.
        name: the interface name (or template); for tunnels the description.
        options: for a TAP the ``?key=value`` options as str; for a tunnel
            ``remotes`` (a list of ``(host, port)``), ``local`` (``(host,
            port)``, optional) and, for VXLAN, ``vni`` (int).
        text: the description as given.
    """

    kind: str
    name: str
    options: dict
    text: str


def parse_hostport(text, default_port=None, *, what="address"):
    """Split ``HOST[:PORT]`` (IPv6 in brackets: ``[::1]:4789``).

    Args:
        text: the address.
        default_port: the port when none is given, or None to require one.
        what: how to call it in errors.

    Returns:
        ``(host, port)`` with the brackets removed.

    Raises:
        EndpointSyntaxError: malformed, or a missing/invalid port.
    """
    host, port = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise EndpointSyntaxError(None, f"{what} {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise EndpointSyntaxError(None, f"{what} {text!r}: expected ':PORT' after ']'")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text:
        raise EndpointSyntaxError(None, f"{what} {text!r}: put an IPv6 address in brackets")
    if not host:
        raise EndpointSyntaxError(None, f"{what} {text!r} has no host")
    if port is None:
        if default_port is None:
            raise EndpointSyntaxError(None, f"{what} {text!r} needs a port")
        return host, default_port
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise EndpointSyntaxError(None, f"{what} {text!r}: invalid port {port!r}")
    return host, int(port)


def _parse_query(kind, query, text):
    options = {}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if key not in OPTIONS[kind]:
            known = ", ".join(sorted(OPTIONS[kind]))
            raise EndpointSyntaxError(None, f"unknown option {key!r} in {text!r} (known: {known})")
        if key in REPEATABLE:
            options.setdefault(key, []).append(value)
        elif key in options:
            raise EndpointSyntaxError(None, f"option {key!r} given twice in {text!r}")
        else:
            options[key] = value
    if query and not options:
        raise EndpointSyntaxError(None, f"cannot parse options {query!r} in {text!r}")
    return options


def _parse_tunnel(kind, text):
    from greentap.vxlan import MAX_VNI, VXLAN_PORT

    parts = urllib.parse.urlsplit(text)
    if parts.path or parts.fragment:
        raise EndpointSyntaxError(None, f"unexpected path in {text!r}; expected {SYNTAX}")
    options = _parse_query(kind, parts.query, text)
    default_port = VXLAN_PORT if kind == "vxlan" else None
    remotes = [parse_hostport(parts.netloc, default_port, what="remote")]
    remotes += [parse_hostport(r, default_port, what="remote") for r in options.pop("remote", [])]
    parsed = {"remotes": remotes}
    if "local" in options:
        parsed["local"] = parse_hostport(options.pop("local"), default_port, what="local address")
    if kind == "vxlan":
        vni = options.pop("vni", None)
        if vni is None:
            raise EndpointSyntaxError(None, f"{text!r} needs ?vni=N (0 to {MAX_VNI})")
        if not vni.isdigit() or int(vni) > MAX_VNI:
            raise EndpointSyntaxError(None, f"vni {vni!r} in {text!r}: expected 0 to {MAX_VNI}")
        parsed["vni"] = int(vni)
    if len(set(remotes)) != len(remotes):
        raise EndpointSyntaxError(None, f"a remote is listed twice in {text!r}")
    return EndpointSpec(kind, text, parsed, text)


def parse_endpoint(text):
    """Parse one endpoint description.

    Args:
        text: ``NAME`` or ``tap:NAME`` (optionally ``?netns=NS``),
            ``vxlan://REMOTE[:PORT]?vni=N[&remote=...][&local=ADDR:PORT]`` or
            ``udp://REMOTE:PORT[?local=ADDR:PORT]``.

    Returns:
        An :class:`EndpointSpec`.

    Raises:
        EndpointSyntaxError: unknown kind, unknown or repeated option, bad
            address, port or VNI.
        TapNameError: the interface name is not valid.
    """
    for kind in ("vxlan", "udp"):
        if text.startswith(f"{kind}://"):
            return _parse_tunnel(kind, text)
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
    options = _parse_query(kind, query, text)
    encode_ifname(name)
    return EndpointSpec(kind, name, options, text)

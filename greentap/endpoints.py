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
_POLICING = {"rate", "burst"}  # an ingress rate limit, on every port that reads
OPTIONS = {
    "tap": {"netns"} | _POLICING,
    "vxlan": {"vni", "remote", "local"} | _POLICING,
    "udp": {"local"} | _POLICING,
    "pcap": {"snaplen", "rotate", "keep"},
    "fd": set(_POLICING),
}
#: Options that may be given more than once.
REPEATABLE = {"remote"}
SYNTAX = (
    "NAME, tap:NAME[?netns=NS], vxlan://REMOTE[:PORT]?vni=N[&remote=HOST[:PORT]...]"
    "[&local=ADDR:PORT], udp://REMOTE:PORT[?local=ADDR:PORT] or "
    "pcap:PATH|-[?snaplen=N&rotate=SIZE&keep=N] or fd:N; "
    "any but pcap also takes [&]rate=PPS[&burst=N]"
)
_SIZE_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclasses.dataclass(frozen=True)
class EndpointSpec:
    """What an endpoint description asks for.

    Attributes:
        kind: ``"tap"``, ``"vxlan"``, ``"udp"``, ``"pcap"`` or ``"fd"``.
        name: the interface name (or template); for tunnels the description.
        options: ``rate`` (frames/s, float) and ``burst`` (frames) when an
            ingress rate limit is asked for; for a TAP the other
            ``?key=value`` options as str; for a tunnel
            ``remotes`` (a list of ``(host, port)``), ``local`` (``(host,
            port)``, optional) and, for VXLAN, ``vni`` (int); for pcap
            ``snaplen``, ``rotate`` (bytes) and ``keep`` when given.
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
    return _parse_policing(options, text)


def _parse_policing(options, text):
    """Turn ``rate`` and ``burst`` into numbers, in place; return ``options``."""
    for key, low in (("rate", 0.0), ("burst", 1.0)):
        if key not in options:
            continue
        value = options[key]
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not number >= low or number == float("inf") or (key == "rate" and number == 0):
            what = "frames per second > 0" if key == "rate" else "a number of frames >= 1"
            raise EndpointSyntaxError(None, f"{key} {value!r} in {text!r}: expected {what}")
        options[key] = number
    if "burst" in options and "rate" not in options:
        raise EndpointSyntaxError(None, f"burst= needs rate= in {text!r}")
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
    for key in _POLICING & options.keys():
        parsed[key] = options.pop(key)
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


def parse_size(text, what):
    """Parse ``10M``, ``512k``, ``1G`` or a plain number of bytes.

    Raises:
        EndpointSyntaxError: not a positive size.
    """
    number, suffix = text, ""
    if text and text[-1].lower() in "kmg":
        number, suffix = text[:-1], text[-1].lower()
    if not number.isdigit() or int(number) < 1:
        raise EndpointSyntaxError(None, f"{what} {text!r}: expected a size such as 100M")
    return int(number) * _SIZE_SUFFIXES[suffix]


def _parse_pcap(text):
    path, _, query = text[len("pcap:") :].partition("?")
    if not path:
        raise EndpointSyntaxError(None, f"{text!r} names no file (use pcap:- for stdout)")
    options = _parse_query("pcap", query, text)
    parsed = {}
    for key in ("snaplen", "keep"):
        if key in options:
            value = options[key]
            if not value.isdigit() or int(value) < 1:
                raise EndpointSyntaxError(None, f"{key} {value!r} in {text!r}: expected N >= 1")
            parsed[key] = int(value)
    if "rotate" in options:
        parsed["rotate"] = parse_size(options["rotate"], f"rotate in {text!r}")
    if "keep" in parsed and "rotate" not in parsed:
        raise EndpointSyntaxError(None, f"keep= needs rotate= in {text!r}")
    if "rotate" in parsed and path == "-":
        raise EndpointSyntaxError(None, f"pcap:- is a stream and cannot rotate: {text!r}")
    return EndpointSpec("pcap", path, parsed, text)


def parse_endpoint(text):
    """Parse one endpoint description.

    Args:
        text: ``NAME`` or ``tap:NAME`` (optionally ``?netns=NS``),
            ``vxlan://REMOTE[:PORT]?vni=N[&remote=...][&local=ADDR:PORT]`` or
            ``udp://REMOTE:PORT[?local=ADDR:PORT]``,
            ``pcap:PATH`` or ``pcap:-`` (``?snaplen=N&rotate=SIZE&keep=N``),
            or ``fd:N``: an inherited ``/dev/net/tun`` fd already attached
            to a TAP (from a privileged helper).  Every kind but pcap also
            takes ``rate=PPS`` and ``burst=N``: an ingress rate limit.

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
    if text.startswith("pcap:"):
        return _parse_pcap(text)
    if text.startswith("fd:"):
        number, _, query = text[3:].partition("?")
        if not number.isdigit():
            raise EndpointSyntaxError(None, f"{text!r}: expected fd:N with N a file descriptor")
        return EndpointSpec(
            "fd", number, {**_parse_query("fd", query, text), "fd": int(number)}, text
        )
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

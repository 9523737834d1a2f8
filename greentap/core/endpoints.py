"""Parsing endpoint descriptions such as ``tap0``, ``tap:tap0?netns=blue``,
``vxlan://198.18.0.2?vni=42`` or ``udp://[::1]:5555?local=[::1]:5556``.  Pure.

The result says what to open; :func:`greentap.ports.open_port` opens it.
Everything is checked here, before anything is opened: kinds, option names,
numbers (ASCII digits, in range: see :mod:`greentap.core.numbers`), host
syntax and interface names.  Every failure is an
:class:`~greentap.errors.EndpointSyntaxError` (or an interface-name error)
naming the endpoint and saying what was expected.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

from greentap.core.names import encode_ifname
from greentap.core.numbers import parse_decimal, parse_int, parse_size
from greentap.core.pcap import DEFAULT_SNAPLEN, MIN_ROTATE
from greentap.core.vlan import MAX_VID, parse_vlan_list
from greentap.core.vxlan import MAX_VNI, VXLAN_PORT
from greentap.errors import EndpointSyntaxError

__all__ = ["OPTIONS", "SYNTAX", "EndpointSpec", "identity", "parse_endpoint", "parse_hostport"]

_POLICING = frozenset({"rate", "burst"})  # an ingress rate limit, on every port that reads
_VLANS = frozenset({"vlan", "trunk", "native"})  # 802.1Q: an access port or a trunk
#: Options each endpoint kind accepts in its ``?key=value`` part.
OPTIONS: dict[str, frozenset[str]] = {
    "tap": frozenset({"netns"}) | _POLICING | _VLANS,
    "vxlan": frozenset({"vni", "remote", "local", "srcport"}) | _POLICING | _VLANS,
    "udp": frozenset({"local", "mtu"}) | _POLICING | _VLANS,
    "pcap": frozenset({"snaplen", "rotate", "keep"}),
    "fd": _POLICING | _VLANS,
    "packet": frozenset({"netns", "qdisc"}) | _POLICING | _VLANS,
    "unix": frozenset({"listen", "mode", "group", "max"}) | _POLICING | _VLANS,
    "tcp": frozenset({"listen", "max"}) | _POLICING | _VLANS,
}
#: Options that may be given more than once.
REPEATABLE = frozenset({"remote"})
#: Options that take no value.
FLAGS = frozenset({"listen"})
#: Connections a listening endpoint takes at once unless ``max=`` says otherwise.
DEFAULT_MAX_CONNECTIONS = 64
MAX_CONNECTIONS = 65536
# sun_path holds 108 bytes, the terminating NUL included.
_MAX_UNIX_PATH = 107
SYNTAX = (
    "NAME, tap:NAME[?netns=NS], vxlan://REMOTE[:PORT]?vni=N[&remote=HOST[:PORT]...]"
    "[&local=ADDR:PORT][&srcport=MIN-MAX], udp://REMOTE:PORT[?local=ADDR:PORT&mtu=N] or "
    "pcap:PATH|-[?snaplen=N&rotate=SIZE&keep=N], packet:IFNAME[?netns=NS&qdisc=bypass|use] "
    "fd:N, unix:PATH[?listen[&mode=0660&group=G&max=N]] or "
    "tcp://HOST:PORT[?listen[&max=N]]; "
    "any but pcap also takes [&]rate=PPS[&burst=N] and [&]vlan=N or [&]trunk=LIST[&native=N]"
)
MAX_RATE = 1e9  # frames per second: far beyond any link, short of nonsense
MAX_FD = (1 << 31) - 1
MAX_KEEP = 10_000
# A host name or IPv4 address: letters, digits, dots, hyphens (underscores
# appear in real-world names).  Anything else must be an IPv6 literal in [].
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclasses.dataclass(frozen=True)
class EndpointSpec:
    """What an endpoint description asks for.

    Attributes:
        kind: ``"tap"``, ``"vxlan"``, ``"udp"``, ``"pcap"`` or ``"fd"``.
        name: the interface name (or template); for tunnels the description;
            for pcap the path; for fd the number as text.
        options: ``rate`` (frames/s, float) and ``burst`` (frames) when an
            ingress rate limit is asked for; for a TAP ``netns``; for a
            tunnel ``remotes`` (a list of ``(host, port)``), ``local``
            (``(host, port)``, optional) and, for VXLAN, ``vni`` (int); for
            pcap ``snaplen``, ``rotate`` (bytes) and ``keep`` when given;
            for fd ``fd`` (int); for packet ``netns`` and ``qdisc``
            (``"bypass"`` or ``"use"``) when given; for unix and tcp
            ``listen`` (bool), with it ``max`` (int) and, for unix, ``mode``
            (int) and ``group`` when given; for tcp ``address``
            (``(host, port)``).  A unix endpoint's name is its path.
        text: the description as given.
    """

    kind: str
    name: str
    options: dict[str, Any]
    text: str


def _error(text: str, reason: str) -> EndpointSyntaxError:
    return EndpointSyntaxError(reason, endpoint=text)


def parse_hostport(
    text: str,
    default_port: int | None = None,
    *,
    what: str = "address",
    endpoint: str | None = None,
    any_port: bool = False,
) -> tuple[str, int]:
    """Split ``HOST[:PORT]`` (IPv6 in brackets: ``[::1]:4789``).

    Args:
        text: the address.
        default_port: the port when none is given, or None to require one.
        what: how to call it in errors.
        endpoint: the endpoint it belongs to, for errors.
        any_port: accept port 0 ("any", for a local address to bind).

    Returns:
        ``(host, port)`` with the brackets removed.

    Raises:
        EndpointSyntaxError: malformed, or a missing or invalid port.
    """

    def error(reason: str) -> EndpointSyntaxError:
        return EndpointSyntaxError(f"{what} {text!r}: {reason}", endpoint=endpoint)

    port: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise error("missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise error(f"{host!r} in brackets is not an IPv6 address") from None
        if rest:
            if not rest.startswith(":"):
                raise error("expected ':PORT' after ']'")
            port = rest[1:]
    else:
        host = text
        if text.count(":") == 1:
            host, port = text.split(":")
        elif ":" in text:
            raise error("put an IPv6 address in brackets: [ADDR]:PORT")
        if not host:
            raise error("no host")
        if not _HOSTNAME.fullmatch(host):
            raise error("expected an IPv4 address, a host name or [IPv6]")
    if port is None:
        if default_port is None:
            raise error("needs a port")
        return host, default_port
    try:
        return host, parse_int(port, 0 if any_port else 1, 65535)
    except ValueError as exc:
        raise error(f"port {port!r}: expected {exc}") from None


def _parse_query(kind: str, query: str, text: str) -> dict[str, Any]:
    """Split ``key=value&...`` into a dict (lists for repeatable keys); check the keys."""
    options: dict[str, Any] = {}
    if not query:
        return options
    for item in query.split("&"):
        key, sep, value = item.partition("=")
        key, value = urllib.parse.unquote(key), urllib.parse.unquote(value)
        if key not in OPTIONS[kind]:
            known = ", ".join(sorted(OPTIONS[kind]))
            raise _error(text, f"unknown option {key!r} (known: {known})")
        if key in FLAGS:
            if sep:
                raise _error(text, f"option {key!r} takes no value")
            value = "1"
        elif not sep or not value:
            raise _error(text, f"option {key!r} needs a value: {key}=...")
        if key in REPEATABLE:
            options.setdefault(key, []).append(value)
        elif key in options:
            raise _error(text, f"option {key!r} given twice")
        else:
            options[key] = value
    return options


def _number(text: str, key: str, value: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(value)
    except ValueError as exc:
        raise _error(text, f"{key} {value!r}: expected {exc}") from None


def _policing(options: dict[str, Any], text: str) -> dict[str, Any]:
    """Take ``rate``, ``burst`` and ``vlan``, ``trunk``, ``native`` out of ``options``."""
    parsed = _vlans(options, text)
    if "rate" in options:
        parsed["rate"] = _number(
            text, "rate", options.pop("rate"),
            lambda v: parse_decimal(v, 0, MAX_RATE, low_open=True),
        )  # fmt: skip
    if "burst" in options:
        if "rate" not in parsed:
            raise _error(text, "burst= needs rate=")
        parsed["burst"] = _number(
            text, "burst", options.pop("burst"), lambda v: parse_decimal(v, 1, MAX_RATE)
        )
    return parsed


def _vlans(options: dict[str, Any], text: str) -> dict[str, Any]:
    """``vlan=N`` (an access port), or ``trunk=N,M,A-B`` with ``native=N`` (a trunk)."""
    parsed: dict[str, Any] = {}
    if "vlan" in options:
        if "trunk" in options or "native" in options:
            raise _error(text, "vlan= makes an access port: no trunk= or native= with it")
        parsed["vlan"] = _number(text, "vlan", options.pop("vlan"),
                                 lambda v: parse_int(v, 1, MAX_VID))  # fmt: skip
    if "native" in options and "trunk" not in options:
        raise _error(text, "native= needs trunk=")
    if "trunk" in options:
        parsed["trunk"] = _number(text, "trunk", options.pop("trunk"), parse_vlan_list)
    if "native" in options:
        parsed["native"] = _number(text, "native", options.pop("native"),
                                   lambda v: parse_int(v, 1, MAX_VID))  # fmt: skip
    return parsed


def _parse_tunnel(kind: str, text: str) -> EndpointSpec:
    rest = text[len(kind) + 3 :]
    netloc, _, query = rest.partition("?")
    if "/" in netloc or "#" in netloc:
        raise _error(text, f"unexpected path or fragment; expected {SYNTAX}")
    if not netloc:
        raise _error(text, "names no remote")
    options = _parse_query(kind, query, text)
    default_port = VXLAN_PORT if kind == "vxlan" else None
    remotes = [
        parse_hostport(r, default_port, what="remote", endpoint=text)
        for r in [netloc, *options.pop("remote", [])]
    ]
    if len(set(remotes)) != len(remotes):
        raise _error(text, "a remote is listed twice")
    parsed: dict[str, Any] = {"remotes": remotes, **_policing(options, text)}
    if "local" in options:
        parsed["local"] = parse_hostport(
            options.pop("local"), default_port, what="local address", endpoint=text,
            any_port=True,
        )  # fmt: skip
    if kind == "vxlan":
        if "vni" not in options:
            raise _error(text, f"needs ?vni=N (0 to {MAX_VNI})")
        parsed["vni"] = _number(text, "vni", options.pop("vni"), lambda v: parse_int(v, 0, MAX_VNI))
        if "srcport" in options:
            parsed["srcport"] = _port_range(text, options.pop("srcport"))
    if "mtu" in options:
        parsed["mtu"] = _number(text, "mtu", options.pop("mtu"), lambda v: parse_int(v, 68, 65535))
    return EndpointSpec(kind, text, parsed, text)


def _port_range(text: str, value: str) -> tuple[int, int]:
    """``MIN-MAX``: UDP ports, 1 to 65535, MIN not above MAX."""
    low, dash, high = value.partition("-")
    if not dash:
        raise _error(text, f"srcport {value!r}: expected MIN-MAX, e.g. 49152-65535")
    first = _number(text, "srcport", low, lambda v: parse_int(v, 1, 65535))
    last = _number(text, "srcport", high, lambda v: parse_int(v, 1, 65535))
    if first > last:
        raise _error(text, f"srcport {value!r}: {first} is above {last}")
    return first, last


def _parse_pcap(text: str) -> EndpointSpec:
    path, _, query = text[len("pcap:") :].partition("?")
    if not path:
        raise _error(text, "names no file (use pcap:- for standard output)")
    if "\0" in path:
        raise _error(text, "the path contains a NUL byte")
    options = _parse_query("pcap", query, text)
    parsed: dict[str, Any] = {}
    if "snaplen" in options:
        parsed["snaplen"] = _number(
            text, "snaplen", options["snaplen"], lambda v: parse_int(v, 1, DEFAULT_SNAPLEN)
        )
    if "keep" in options:
        parsed["keep"] = _number(text, "keep", options["keep"], lambda v: parse_int(v, 1, MAX_KEEP))
    if "rotate" in options:
        parsed["rotate"] = _number(text, "rotate", options["rotate"], parse_size)
        if parsed["rotate"] < MIN_ROTATE:
            raise _error(text, f"rotate={options['rotate']} is too small for one frame "
                               f"(at least {MIN_ROTATE} bytes; sizes such as 100M)")  # fmt: skip
    if "keep" in parsed and "rotate" not in parsed:
        raise _error(text, "keep= needs rotate=")
    if "rotate" in parsed and path == "-":
        raise _error(text, "pcap:- is a stream and cannot rotate")
    return EndpointSpec("pcap", path, parsed, text)


def _parse_fd(text: str) -> EndpointSpec:
    number, _, query = text[len("fd:") :].partition("?")
    try:
        fd = parse_int(number, 0, MAX_FD)
    except ValueError:
        raise _error(text, "expected fd:N, N the number of an open file descriptor") from None
    options = _parse_query("fd", query, text)
    return EndpointSpec("fd", number, {**_policing(options, text), "fd": fd}, text)


def _netns(text: str, netns: str) -> str:
    if "\0" in netns or netns in (".", ".."):
        raise _error(text, f"netns {netns!r}: expected an `ip netns` name or a path")
    return netns


def _parse_packet(text: str) -> EndpointSpec:
    name, _, query = text[len("packet:") :].partition("?")
    if not name:
        raise _error(text, "names no interface; expected packet:IFNAME[?netns=NS]")
    options = _parse_query("packet", query, text)
    parsed = _policing(options, text)
    if "netns" in options:
        parsed["netns"] = _netns(text, options["netns"])
    if "qdisc" in options:
        if options["qdisc"] not in ("bypass", "use"):
            raise _error(text, f"qdisc {options['qdisc']!r}: expected bypass or use")
        parsed["qdisc"] = options["qdisc"]
    encode_ifname(name)
    return EndpointSpec("packet", name, parsed, text)


def _listening(kind: str, text: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options of a stream endpoint that only a listening one takes."""
    parsed: dict[str, Any] = {"listen": "listen" in options}
    for key in ("mode", "group", "max"):
        if key in options and not parsed["listen"]:
            raise _error(text, f"{key}= needs listen (only a listening {kind}: endpoint takes it)")
    if parsed["listen"]:
        parsed["max"] = DEFAULT_MAX_CONNECTIONS
    if "max" in options:
        parsed["max"] = _number(
            text, "max", options["max"], lambda v: parse_int(v, 1, MAX_CONNECTIONS)
        )
    if "mode" in options:
        mode = options["mode"]
        if not (mode.isascii() and mode.isdigit() and set(mode) <= set("01234567")):
            raise _error(text, f"mode {mode!r}: expected octal permissions such as 0660")
        parsed["mode"] = int(mode, 8)
        if parsed["mode"] > 0o777:
            raise _error(text, f"mode {mode!r}: expected permissions up to 0777")
    if "group" in options:
        parsed["group"] = options["group"]
    return parsed


def _parse_unix(text: str) -> EndpointSpec:
    path, _, query = text[len("unix:") :].partition("?")
    if not path:
        raise _error(text, "names no socket path; expected unix:PATH")
    if "\0" in path:
        raise _error(text, "the path contains a NUL byte")
    if len(path.encode("utf-8", "surrogateescape")) > _MAX_UNIX_PATH:
        raise _error(text, f"the socket path is longer than {_MAX_UNIX_PATH} bytes")
    options = _parse_query("unix", query, text)
    parsed = {**_policing(options, text), **_listening("unix", text, options)}
    return EndpointSpec("unix", path, parsed, text)


def _parse_tcp(text: str) -> EndpointSpec:
    netloc, _, query = text[len("tcp://") :].partition("?")
    if "/" in netloc or "#" in netloc:
        raise _error(text, "unexpected path or fragment; expected tcp://HOST:PORT")
    options = _parse_query("tcp", query, text)
    parsed = {**_policing(options, text), **_listening("tcp", text, options)}
    listen = parsed["listen"]
    if listen and netloc.startswith(":"):
        netloc = "127.0.0.1" + netloc  # listen on loopback unless told otherwise
    what = "listening address" if listen else "address"
    parsed["address"] = parse_hostport(netloc, None, what=what, endpoint=text, any_port=listen)
    return EndpointSpec("tcp", text, parsed, text)


def _parse_tap(text: str) -> EndpointSpec:
    rest = text
    scheme, sep, after = text.partition(":")
    if sep:
        if scheme not in OPTIONS:
            raise _error(text, f"unknown endpoint type {scheme!r}; expected {SYNTAX}")
        if scheme != "tap":
            raise _error(text, f"expected {scheme}://...; endpoints are {SYNTAX}")
        rest = after
    name, _, query = rest.partition("?")
    if not name:
        raise _error(text, f"names no interface; expected {SYNTAX}")
    options = _parse_query("tap", query, text)
    parsed = _policing(options, text)
    if "netns" in options:
        parsed["netns"] = _netns(text, options["netns"])
    encode_ifname(name)
    return EndpointSpec("tap", name, parsed, text)


def parse_endpoint(text: str) -> EndpointSpec:
    """Parse one endpoint description.

    Args:
        text: ``NAME`` or ``tap:NAME`` (optionally ``?netns=NS``),
            ``vxlan://REMOTE[:PORT]?vni=N[&remote=...][&local=ADDR:PORT]``,
            ``udp://REMOTE:PORT[?local=ADDR:PORT]``,
            ``pcap:PATH`` or ``pcap:-`` (``?snaplen=N&rotate=SIZE&keep=N``),
            ``fd:N``: an inherited ``/dev/net/tun`` fd already attached
            to a TAP (from a privileged helper), or ``packet:IFNAME``: an
            existing Ethernet interface (``?netns=NS``, ``qdisc=use`` to
            keep its queueing discipline), ``unix:PATH`` or
            ``tcp://HOST:PORT``: a stream socket carrying QEMU's framing,
            connected to, or listened on with ``?listen`` (``max=N``, and
            for unix ``mode=0660&group=G``).  Every kind but pcap also
            takes ``rate=PPS`` and ``burst=N``: an ingress rate limit.

    Returns:
        An :class:`EndpointSpec`.

    Raises:
        EndpointSyntaxError: unknown kind, unknown, empty or repeated option,
            bad address, port, number or VNI.
        InterfaceNameError: the interface name is not valid.
    """
    for kind in ("vxlan", "udp"):
        if text.startswith(f"{kind}://"):
            return _parse_tunnel(kind, text)
    if text.startswith("pcap:"):
        return _parse_pcap(text)
    if text.startswith("fd:"):
        return _parse_fd(text)
    if text.startswith("packet:"):
        return _parse_packet(text)
    if text.startswith("unix:"):
        return _parse_unix(text)
    if text.startswith("tcp://"):
        return _parse_tcp(text)
    return _parse_tap(text)


def identity(spec: EndpointSpec) -> tuple[str, Any, Any]:
    """What makes two endpoints the same thing to open (a TAP and its namespace,
    a file's absolute path, an address), however they are written."""
    if spec.kind == "tap":
        return ("tap", spec.name, spec.options.get("netns"))
    if spec.kind == "fd":
        return ("fd", spec.options["fd"], None)
    if spec.kind == "pcap":
        return ("pcap", os.path.abspath(spec.name) if spec.name != "-" else "-", None)
    if spec.kind == "unix":
        return ("unix", os.path.abspath(spec.name), None)
    if spec.kind == "tcp":
        return ("tcp", spec.options["address"], spec.options["listen"])
    return (spec.kind, spec.text, None)

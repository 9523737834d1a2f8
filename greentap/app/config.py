"""``tap-forward --config FILE``: options and named endpoints from a TOML file.

A file sets any option by its long name without dashes (``max-macs = 4096``)
and lists endpoints as ``[[endpoint]]`` tables: a ``name``, then either a
``url`` (what the command line takes) or a ``kind`` with its options as
keys (``kind = "vxlan"``, ``remote = "198.18.0.2"``, ``vni = 42``).  See
``examples/tap-forward.toml``.

The whole file is checked before anything opens: TOML syntax, every key,
every value's type and range, every endpoint (by the same parser as the
command line), names and endpoints given twice.  Every error is a
:class:`~greentap.errors.ConfigError` naming the file, the line and the
key.  Nothing here opens anything.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import urllib.parse
from collections.abc import Mapping
from typing import Any

from greentap.app.privileges import resolve
from greentap.app.settings import SETTINGS
from greentap.core.endpoints import OPTIONS, EndpointSpec, identity, parse_endpoint
from greentap.errors import ConfigError, GreentapError, InterfaceNameError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["NAME_RULE", "TARGETS", "Config", "NamedEndpoint", "load", "parse", "valid_name"]

#: The key naming what each endpoint kind opens (a TAP's ``device`` defaults to its name).
TARGETS = {
    "tap": "device",
    "fd": "fd",
    "packet": "interface",
    "vxlan": "remote",
    "udp": "remote",
    "unix": "path",
    "tcp": "address",
    "pcap": "path",
}
_PREFIX = {"tap": "tap:", "fd": "fd:", "packet": "packet:", "vxlan": "vxlan://",
           "udp": "udp://", "unix": "unix:", "tcp": "tcp://", "pcap": "pcap:"}  # fmt: skip
# The TOML type each endpoint option takes: numbers as numbers, names as strings.
_NUMBERS = frozenset({"vni", "mtu", "snaplen", "keep", "max", "fd", "rate", "burst", "vlan",
                      "native"})  # fmt: skip
_EITHER = frozenset({"rotate", "mode"})  # 100M or 104857600; "0660" or 0o660
_FLAGS = frozenset({"listen"})
_MAX_NAME = 64
_NAME = re.compile(r"[A-Za-z0-9_.:@+-]+")
#: What an endpoint's name may be.
NAME_RULE = f"expected 1 to {_MAX_NAME} letters, digits or _.:@+-"
_MAX_NUMBER = 1 << 62  # beyond any option's range; Python's int-to-text limit is far above
# Where keys are: a table header, or a key at the start of a line.
_ARRAY_HEADER = re.compile(r"""\s*\[\[\s*([A-Za-z0-9_-]+|"[^"]*"|'[^']*')\s*\]\]""")
_TABLE_HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_.\"' -]+?)\s*\]")
# A dotted key (mtu.x = 3) is found by its first part: that is the key at fault.
_KEY = re.compile(r"""\s*([A-Za-z0-9_-]+|"[^"]*"|'[^']*')\s*[.=]""")
_TOML_LINE = re.compile(r"at line (\d+)")
_TOML_WHERE = re.compile(r"\(at line \d+, column (\d+)\)")


@dataclasses.dataclass(frozen=True)
class NamedEndpoint:
    """One ``[[endpoint]]`` table.

    Attributes:
        name: its name (what the control socket and reloads know it by).
        text: the endpoint as the command line would give it.
        spec: the parsed endpoint.
        line: where its table starts.
    """

    name: str
    text: str
    spec: EndpointSpec
    line: int | None


@dataclasses.dataclass(frozen=True)
class Config:
    """A configuration file, checked.

    Attributes:
        path: the file.
        options: :class:`~greentap.app.startup.Options` field -> value, for
            the options the file sets.
        endpoints: its endpoints, in the file's order.
    """

    path: str
    options: Mapping[str, Any]
    endpoints: tuple[NamedEndpoint, ...]


def valid_name(name: object) -> bool:
    """Whether ``name`` can name an endpoint (see :data:`NAME_RULE`)."""
    return isinstance(name, str) and len(name) <= _MAX_NAME and bool(_NAME.fullmatch(name))


def load(path: str) -> Config:
    """Read and check a configuration file.

    Raises:
        ConfigError: the file cannot be read, or anything in it is wrong.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read it: {exc.strerror}", path=path, errno=exc.errno) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("not UTF-8 text", path=path, line=line) from None
    return parse(text, path)


def parse(text: str, path: str = "<config>") -> Config:
    """Check a configuration file's text (see :func:`load`).

    Raises:
        ConfigError: anything in it is wrong.
    """
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_LINE.search(str(exc))
        reason = _TOML_WHERE.sub(r"(column \1)", str(exc))
        raise ConfigError(
            f"not valid TOML: {reason}", path=path, line=int(found[1]) if found else None
        ) from None
    except (ValueError, RecursionError) as exc:  # a number of 5,000 digits, nesting
        raise ConfigError(f"not valid TOML: {type(exc).__name__}: {str(exc)[:200]}",
                          path=path) from None  # fmt: skip
    lines = _Lines(text, path)
    options: dict[str, Any] = {}
    endpoints: list[NamedEndpoint] = []
    for key, value in data.items():
        if key == "endpoint":
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                raise lines.error("expected [[endpoint]] tables", key=key)
            endpoints = [_endpoint(table, i, lines) for i, table in enumerate(value)]
        elif key in SETTINGS:
            options[SETTINGS[key].dest] = _option(key, value, lines)
        else:
            known = ", ".join(sorted([*SETTINGS, "endpoint"]))
            raise lines.error(f"unknown key (known: {known})", key=key)
    _no_twins(endpoints, lines)
    _coherent(options, endpoints, lines)
    return Config(path, options, tuple(endpoints))


class _Lines:
    """Where each key of a TOML text is: the line of ``key =`` in its table."""

    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.where: dict[tuple[str | None, int | None, str | None], int] = {}
        section: tuple[str | None, int | None] = (None, None)
        count: dict[str, int] = {}
        # Only \n ends a TOML line (splitlines() would also split at NEL, U+2028...).
        for number, line in enumerate(text.split("\n"), 1):
            if m := _ARRAY_HEADER.match(line):
                name = m[1].strip("\"'")
                index = count.get(name, 0)
                count[name] = index + 1
                section = (name, index)
                self.where.setdefault((name, index, None), number)
            elif m := _TABLE_HEADER.match(line):
                section = (m[1].strip("\"'"), None)
                self.where.setdefault((None, None, section[0]), number)
            elif m := _KEY.match(line):
                self.where.setdefault((*section, m[1].strip("\"'")), number)

    def line(self, key: str | None, table: int | None = None) -> int | None:
        """The line of ``key`` (top level, or in the ``table``-th ``[[endpoint]]``)."""
        if table is None:
            return self.where.get((None, None, key))
        found = self.where.get(("endpoint", table, key))
        return found if found is not None else self.where.get(("endpoint", table, None))

    def error(
        self, reason: str, *, key: str | None, table: int | None = None, name: str | None = None
    ) -> ConfigError:
        """An error naming the file, the line and the key."""
        where = f"endpoint {name!r}, " if name else ("endpoint, " if table is not None else "")
        what = f"{where}key {key!r}: {reason}" if key else f"{where}{reason}"
        return ConfigError(what, path=self.path, line=self.line(key, table), key=key)


def _kind_of(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)  # fmt: skip


def _option(key: str, value: Any, lines: _Lines) -> Any:
    setting = SETTINGS[key]
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if setting.number is True and not numeric:
        raise lines.error(f"expected a number, not {_kind_of(value)}", key=key)
    if setting.number is False and not isinstance(value, str):
        raise lines.error(f"expected a string, not {_kind_of(value)}", key=key)
    if setting.number is None and not (numeric or isinstance(value, str)):
        raise lines.error(f"expected a port number or a string, not {_kind_of(value)}", key=key)
    if numeric and abs(value) > _MAX_NUMBER:
        raise lines.error(f"{_kind_of(value)} far out of range", key=key)
    text = _number_text(value) if numeric else value
    try:
        return setting.parse(text)
    except ValueError as exc:
        raise lines.error(f"expected {exc}, not {value!r}", key=key) from None


def _number_text(value: int | float) -> str:
    return str(value) if isinstance(value, int) else repr(value)


def _endpoint(table: dict[str, Any], index: int, lines: _Lines) -> NamedEndpoint:
    name = table.get("name")
    if not isinstance(name, str):
        why = "missing" if name is None else f"expected a string, not {_kind_of(name)}"
        raise lines.error(f"every endpoint needs a name: {why}", key="name", table=index)
    if not valid_name(name):
        raise lines.error(f"{NAME_RULE}, not {name!r}", key="name", table=index)

    def error(reason: str, key: str | None) -> ConfigError:
        return lines.error(reason, key=key, table=index, name=name)

    if ("url" in table) == ("kind" in table):
        raise error('give either url = "..." or kind = "..." with its options', None)
    if "url" in table:
        extra = sorted(set(table) - {"name", "url"})
        if extra:
            raise error("a url takes no other keys (options go in the url)", extra[0])
        text = table["url"]
        if not isinstance(text, str):
            raise error(f"expected a string, not {_kind_of(text)}", "url")
        return NamedEndpoint(name, text, _parse(text, "url", error), lines.line(None, index))
    text = _build(table, name, error)
    spec = _parse(text, TARGETS[table["kind"]], error, table)
    return NamedEndpoint(name, text, spec, lines.line(None, index))


def _build(table: dict[str, Any], name: str, error: Any) -> str:
    """The endpoint text a ``kind = ...`` table describes."""
    kind = table["kind"]
    if not isinstance(kind, str) or kind not in TARGETS:
        raise error(f"expected one of {', '.join(TARGETS)}, not {kind!r}", "kind")
    target = TARGETS[kind]
    allowed = {"name", "kind", target} | OPTIONS[kind]
    for key in table:
        if key not in allowed:
            raise error(f"unknown key for a {kind} endpoint (known: "
                        f"{', '.join(sorted(allowed - {'name', 'kind'}))})", key)  # fmt: skip
    what = table.get(target, name if kind == "tap" else None)
    if what is None:
        raise error(f"a {kind} endpoint needs {target} = ...", target)
    if kind == "vxlan" and isinstance(what, list) and what:
        remotes = what
    elif kind == "fd" and isinstance(what, int) and not isinstance(what, bool):
        if not 0 <= what <= _MAX_NUMBER:
            raise error("an integer far out of range for a file descriptor", target)
        remotes = [str(what)]
    elif isinstance(what, str) and what:
        remotes = [what]
    else:
        expected = "an integer" if kind == "fd" else "a non-empty string"
        raise error(f"expected {expected}, not {what!r}", target)
    for remote in remotes:
        if not isinstance(remote, str) or not remote or any(c in remote for c in "?&#"):
            raise error(f"{remote!r} cannot name an endpoint (empty, or with ? & #)", target)
    query: list[str] = [f"remote={_quote(r)}" for r in remotes[1:]]
    for key, value in table.items():
        if key in ("name", "kind", target):
            continue
        query.extend(_query_item(key, value, error))
    return _PREFIX[kind] + remotes[0] + ("?" + "&".join(query) if query else "")


def _query_item(key: str, value: Any, error: Any) -> list[str]:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key in _FLAGS:
        if not isinstance(value, bool):
            raise error(f"expected true or false, not {_kind_of(value)}", key)
        return [key] if value else []
    if key == "trunk" and isinstance(value, int) and not isinstance(value, bool):
        value = [value]  # trunk = 10
    if key == "trunk" and isinstance(value, list):  # trunk = [10, 20] as well as "10,20-30"
        if not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 4096 for v in value
        ):
            raise error('expected VLAN ids: [10, 20] or "10,20-30"', key)
        value = ",".join(str(v) for v in value)
    if key in _NUMBERS and not numeric:
        raise error(f"expected a number, not {_kind_of(value)}", key)
    if numeric and abs(value) > _MAX_NUMBER:
        raise error(f"{_kind_of(value)} far out of range", key)
    if key == "mode" and numeric and isinstance(value, int):
        return [f"mode={value:04o}"]  # mode = 0o660 in TOML
    if key in _EITHER and numeric:
        return [f"{key}={_number_text(value)}"]
    if key not in _NUMBERS and not isinstance(value, str):
        raise error(f"expected a string, not {_kind_of(value)}", key)
    text = _number_text(value) if numeric else value
    return [f"{key}={_quote(text)}"]


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe=":[]/@,-._~")


def _parse(text: str, key: str, error: Any, table: dict[str, Any] | None = None) -> EndpointSpec:
    """Parse the endpoint; its error names the key it is about where it can tell.

    Args:
        key: the key that gave the text (``url``) or names the device (``device``).
        table: the table's options, for a ``kind = ...`` table.
    """
    try:
        return parse_endpoint(text)
    except UsageError as exc:
        reason = exc.reason
        if table is not None and not isinstance(exc, InterfaceNameError):
            # The parser's reason starts with the option it is about ("vni '5x': ...").
            first = reason.split(" ", 1)[0].rstrip("=:")
            key = first if first in table and first != "name" else key
        raise error(f"{reason} (in {text!r})", key) from None


def _no_twins(endpoints: list[NamedEndpoint], lines: _Lines) -> None:
    names: dict[str, NamedEndpoint] = {}
    opened: dict[Any, NamedEndpoint] = {}
    for index, endpoint in enumerate(endpoints):
        if endpoint.name in names:
            raise lines.error(
                f"{endpoint.name!r} is also the name of the endpoint on line "
                f"{names[endpoint.name].line}", key="name", table=index, name=endpoint.name,
            )  # fmt: skip
        names[endpoint.name] = endpoint
        same = identity(endpoint.spec)
        if same in opened:
            raise lines.error(
                f"the same endpoint as {opened[same].name!r} on line {opened[same].line}",
                key=None, table=index, name=endpoint.name,
            )  # fmt: skip
        opened[same] = endpoint


def _coherent(options: dict[str, Any], endpoints: list[NamedEndpoint], lines: _Lines) -> None:
    """What only the options and endpoints together can tell, found here with a line."""
    if "group" in options and "user" not in options:
        raise lines.error("needs user = ... (the group to run as)", key="group")
    if "user" in options:
        try:
            resolve(options["user"], options.get("group"))
        except GreentapError as exc:
            key = "group" if "group" in str(exc) and "group" in options else "user"
            raise lines.error(exc.reason, key=key) from None
    if options.get("workers", 1) > 1:
        others = [e.name for e in endpoints if e.spec.kind != "tap"]
        if others:
            raise lines.error(f"more than one needs every endpoint to be a TAP, not "
                              f"{', '.join(others)}", key="workers")  # fmt: skip

"""The options ``tap-forward`` takes, checked one way wherever they come from.

The command line (:mod:`greentap.cli`) and a configuration file
(:mod:`greentap.app.config`) give the same options; each is checked here by
one function from text to value, whose :class:`ValueError` says what was
expected (``"a whole number from 68 to 65535"``).  A file's key is the long
option without its dashes (``max-macs``), and the value lands in the
:class:`~greentap.app.startup.Options` field of the same name with
underscores (``max_macs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from greentap.core.endpoints import parse_hostport
from greentap.core.numbers import parse_decimal, parse_int
from greentap.errors import UsageError

__all__ = ["SETTINGS", "Setting", "listen_address", "socket_path"]

# sun_path holds 108 bytes, the terminating NUL included.
_MAX_UNIX_PATH = 107


def listen_address(text: str) -> tuple[str, int]:
    """``PORT`` or ``ADDR:PORT`` (``[ADDR]:PORT`` for IPv6) to listen on; address 127.0.0.1.

    Raises:
        ValueError: says what was expected.
    """
    try:
        if text.isascii() and text.isdigit():
            return "127.0.0.1", parse_int(text, 0, 65535)
        return parse_hostport(text, what="the metrics address", any_port=True)
    except UsageError as exc:
        raise ValueError(exc.reason) from None
    except ValueError as exc:
        raise ValueError(f"a port: {exc}") from None


def socket_path(text: str) -> str:
    """A unix socket's path: not empty, at most 107 bytes, no NUL.

    Raises:
        ValueError: says what was expected.
    """
    size = len(text.encode("utf-8", "surrogateescape"))
    if not text or "\0" in text or size > _MAX_UNIX_PATH:
        raise ValueError(f"a socket path of 1 to {_MAX_UNIX_PATH} bytes without NUL")
    return text


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"one of {', '.join(choices)}")
        return text.lower()

    return parse


def _text(text: str) -> str:
    if not text:
        raise ValueError("a name, not an empty string")
    return text


@dataclasses.dataclass(frozen=True)
class Setting:
    """One option.

    Attributes:
        key: the long option without dashes, and the configuration file's key.
        parse: text to value; its ValueError says what was expected.
        number: the file gives it as a TOML number (else as a string);
            ``metrics`` takes either.
    """

    key: str
    parse: Callable[[str], Any]
    number: bool | None = False

    @property
    def dest(self) -> str:
        """The :class:`~greentap.app.startup.Options` field."""
        return self.key.replace("-", "_")


#: Every option a configuration file may set, by key.
SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in (
        Setting("stats", lambda t: parse_decimal(t, 0.1, 86400, zero=True), number=True),
        Setting("log-format", _choice("console", "json")),
        Setting("log-level", _choice("debug", "info", "warning", "error", "critical")),
        Setting("mtu", lambda t: parse_int(t, 68, 65535), number=True),
        Setting("offload", _choice("auto", "on", "off")),
        Setting("metrics", listen_address, number=None),
        Setting("user", _text),
        Setting("group", _text),
        Setting("max-macs", lambda t: parse_int(t, 1, 1 << 24), number=True),
        Setting("aging", lambda t: parse_decimal(t, 0, 1e7, low_open=True), number=True),
        Setting("keep-warm", lambda t: parse_decimal(t, 0.01, 1000, zero=True), number=True),
        Setting("workers", lambda t: parse_int(t, 1, 256), number=True),
        Setting("control", socket_path),
    )
}

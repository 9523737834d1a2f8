"""Logging: the library's silent default, and the command line's structlog preset.

greentap is a library first.  Its components log through
:func:`library_logger`: a structlog logger bound to the standard library's
``greentap`` logger, which has a ``NullHandler`` — a program that embeds
greentap and configures nothing sees nothing, on stdout or anywhere; one
that configures :mod:`logging` gets greentap's events as ordinary records
(the message reads ``event key=value ...``; the fields are in the record's
``greentap`` attribute).  structlog's global configuration is left alone.

Only the command line (and the workers it starts) calls
:func:`configure_logging`: structlog's console or JSON rendering on
stderr.  :class:`RateLimitWarnings` and :class:`SafeStream` are the pieces
of that preset an embedding program may reuse in its own chain.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from greentap.core.ratelimit import EventLimiter

__all__ = [
    "RateLimitWarnings",
    "SafeStream",
    "configure_logging",
    "library_logger",
    "log_format",
    "quiet",
]

PROG = "tap-forward"

#: Levels the limiter applies to; info and debug lines are not per-frame
#: anyway (stats are periodic), and errors are too rare to be worth limiting.
_LIMITED_LEVELS = frozenset({"warning", "warn"})


class RateLimitWarnings:
    """A structlog processor: at most ``burst`` warnings per ``period`` for each
    ``(event, endpoint)``; the next one admitted carries ``suppressed=N``.

    Args:
        burst, period: see :class:`~greentap.ratelimit.EventLimiter`.
        clock: a monotonic clock in seconds.
    """

    def __init__(self, burst: int = 5, period: float = 60.0, clock: Any = time.monotonic):
        self._limiter = EventLimiter(burst, period)
        self._clock = clock

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
        if method_name not in _LIMITED_LEVELS:
            return event_dict
        key = (event_dict.get("event"), event_dict.get("endpoint"))
        suppressed = self._limiter.admit(key, self._clock())
        if suppressed is None:
            raise structlog.DropEvent
        if suppressed:
            event_dict["suppressed"] = suppressed
        return event_dict


class SafeStream:
    """A text stream that never raises: once writing fails (the reader of a
    log pipe went away, a full disk), lines are dropped and counted.

    Logging must not be what kills a forwarder: ``tap-forward ... 2>&1 | head``
    keeps forwarding after ``head`` exits.

    Args:
        stream: the stream to write to.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.lost = 0
        self.broken: BaseException | None = None  # what broke the stream, once it has

    def write(self, text: str) -> int:
        if self.broken is not None:
            self.lost += 1
            return len(text)
        try:
            return self._stream.write(text)
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            self._break(exc)
            self.lost += 1
            return len(text)

    def flush(self) -> None:
        if self.broken is not None:
            return
        try:
            self._stream.flush()
        except (OSError, ValueError) as exc:
            self._break(exc)

    def _break(self, exc: BaseException) -> None:
        self.broken = exc
        quiet(self._stream)

    def isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False


def _render_for_stdlib(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Turn an event into a standard-library record: ``event key=value ...``.

    The fields go into the record's ``greentap`` attribute rather than its
    ``__dict__``, where names such as ``created`` would clash.
    """
    event = event_dict.pop("event", "")
    fields = " ".join(f"{key}={value!r}" for key, value in event_dict.items())
    return ((f"{event} {fields}" if fields else str(event),), {"extra": {"greentap": event_dict}})


def library_logger(name: str = "greentap") -> Any:
    """A structlog logger over the standard library's ``name`` logger.

    Independent of structlog's global configuration: silent unless the
    program configures :mod:`logging` (``greentap`` has a ``NullHandler``).

    Args:
        name: a logger under ``greentap`` (``greentap.forwarder``).
    """
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[structlog.processors.format_exc_info, _render_for_stdlib],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def configure_logging(
    fmt: str | None = None, level: str = "info", stream: TextIO | None = None
) -> SafeStream:
    """Configure structlog for the command line: one event per line on ``stream``.

    Warnings are rate-limited per event and endpoint (at most 5 a minute; the
    next one says how many were held back), and a log stream that breaks (its
    reader went away) never stops the forwarder.  JSON lines carry
    ``timestamp`` (ISO 8601, UTC), ``level``, ``event`` and ``logger``, for a
    log shipper.

    Args:
        fmt: ``"console"`` or ``"json"``; None picks console on a terminal.
        level: the least severe level logged.
        stream: where logs go (default stderr, keeping stdout for data).

    Returns:
        The :class:`SafeStream` the lines go to.
    """
    safe = SafeStream(stream if stream is not None else sys.stderr)
    tail: list[Any]
    if log_format(fmt, safe) == "json":
        tail = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        tail = [structlog.dev.ConsoleRenderer(colors=safe.isatty())]
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            RateLimitWarnings(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_logger_name,
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # One write per line (print() makes two): lines of --workers' processes
        # sharing stderr never interleave.
        logger_factory=structlog.WriteLoggerFactory(safe),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    return safe


def log_format(fmt: str | None, stream: Any) -> str:
    """The log rendering asked for, or by default console on a terminal, json otherwise."""
    if fmt is not None:
        return fmt
    return "console" if stream.isatty() else "json"


def _add_logger_name(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    event_dict.setdefault("logger", PROG)
    return event_dict


def quiet(stream: Any) -> None:
    """Point a stream whose reader is gone at /dev/null.

    What is still buffered would fail again when the interpreter flushes its
    streams at exit, turning a clean exit into status 120: Python's
    documentation advises this for SIGPIPE.
    """
    try:
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        return
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)

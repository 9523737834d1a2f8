"""Pieces of a structlog set-up that a long-running forwarder needs.

Nothing here calls ``structlog.configure()``: the command line does
(:func:`greentap.cli.configure_logging`), and a program embedding greentap
may add these processors to its own chain.
"""

import os
import time

import structlog

from greentap.ratelimit import EventLimiter

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

    def __init__(self, burst=5, period=60.0, clock=time.monotonic):
        self._limiter = EventLimiter(burst, period)
        self._clock = clock

    def __call__(self, logger, method_name, event_dict):
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

    def __init__(self, stream):
        self._stream = stream
        self.lost = 0
        self.broken = None  # the error that broke the stream, once it has

    def write(self, text):
        if self.broken is not None:
            self.lost += 1
            return len(text)
        try:
            return self._stream.write(text)
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            self._break(exc)
            self.lost += 1
            return len(text)

    def flush(self):
        if self.broken is not None:
            return
        try:
            self._stream.flush()
        except (OSError, ValueError) as exc:
            self._break(exc)

    def _break(self, exc):
        self.broken = exc
        # What is still buffered would fail again when the interpreter flushes
        # its streams at exit, turning a clean exit into status 120.  Point the
        # fd at /dev/null, as Python's documentation advises for SIGPIPE.
        try:
            fd = self._stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
        except (OSError, ValueError, AttributeError):
            return
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)

    def isatty(self):
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False

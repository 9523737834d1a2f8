"""The command line's logging: rate-limited warnings, a stream that cannot kill
the process, and JSON lines a log shipper can read."""

import contextlib
import io
import json

import pytest
import structlog

from greentap.app.logs import RateLimitWarnings, SafeStream, configure_logging


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_warnings_are_limited_per_event_and_endpoint():
    """A warning repeated per frame costs 5 lines a minute; info lines pass untouched."""
    clock = Clock()
    limit = RateLimitWarnings(burst=5, period=60, clock=clock)
    kept = []
    for _ in range(100):
        with contextlib.suppress(structlog.DropEvent):
            kept.append(limit(None, "warning", {"event": "peer_unreachable", "endpoint": "vx"}))
    assert len(kept) == 5
    other = limit(None, "warning", {"event": "peer_unreachable", "endpoint": "other"})
    assert "suppressed" not in other
    for _ in range(100):
        assert limit(None, "info", {"event": "stats", "endpoint": "vx"})
    clock.now = 61
    again = limit(None, "warning", {"event": "peer_unreachable", "endpoint": "vx"})
    assert again["suppressed"] == 95


class Broken(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_broken_stream_drops_lines_instead_of_raising():
    """Once the reader of the log pipe is gone, lines are counted as lost, never raised."""
    stream = SafeStream(Broken())
    assert stream.write("x\n") == 2
    stream.flush()
    assert stream.write("y\n") == 2
    assert stream.lost == 2 and isinstance(stream.broken, BrokenPipeError)


def test_json_lines_carry_what_a_log_shipper_needs():
    """--log-format json: one JSON object per line with timestamp, level, event, logger;
    exceptions rendered as text; values that JSON cannot hold rendered, not raised."""
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    log = structlog.get_logger("t")
    log.info("stats", endpoint="tap0", rx_packets=3, where=object())
    try:
        raise ValueError("boom")
    except ValueError:
        log.error("failed", exc_info=True)
    log.debug("hidden")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert {"timestamp", "level", "event", "logger"} <= first.keys()
    assert first["level"] == "info" and first["event"] == "stats" and first["rx_packets"] == 3
    assert first["timestamp"].endswith("Z")
    assert "ValueError: boom" in second["exception"]


@pytest.fixture(autouse=True)
def _reset_structlog():
    yield
    structlog.reset_defaults()

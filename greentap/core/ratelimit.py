"""Rate limits: a token bucket for frames, and a limiter for repeated log events.

Pure code, no I/O: the caller passes the time in (seconds, any monotonic
clock), so both are deterministic under test.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any


class TokenBucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved up.

    Used as an ingress policer (``?rate=PPS`` on an endpoint): each frame
    takes one token; a frame that finds none is dropped.

    Args:
        rate: tokens added per second (> 0).
        burst: the most tokens held at once (>= 1); the bucket starts full.

    Raises:
        ValueError: a rate or burst out of range.
    """

    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate}")
        if burst is None:
            burst = default_burst(rate)
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._last: float | None = None

    def take(self, now: float) -> bool:
        """Take one token at time ``now``.

        Returns:
            True if there was one (the frame passes), False otherwise.
        """
        last, self._last = self._last, now
        tokens = self._tokens
        if last is not None and now > last:
            tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False


def default_burst(rate: float) -> float:
    """The burst a policer of ``rate`` frames/s allows by default: 100 ms worth, at least 1."""
    return max(1.0, rate / 10.0)


class EventLimiter:
    """Let at most ``burst`` events of each key through per ``period`` seconds.

    The first event after a quiet spell carries how many were held back, so
    a flapping link or a flood of bad datagrams costs a few log lines a
    minute, and nothing is hidden without a count.

    Args:
        burst: events of one key allowed per period.
        period: the length of a period in seconds.
        max_keys: the most keys remembered (oldest forgotten first), so that
            keys made from untrusted input cannot grow it without bound.
    """

    def __init__(self, burst: int = 5, period: float = 60.0, max_keys: int = 1024) -> None:
        if burst < 1 or period <= 0 or max_keys < 1:
            raise ValueError("burst and max_keys must be at least 1, period positive")
        self.burst = burst
        self.period = float(period)
        self.max_keys = max_keys
        # key -> [period start, events this period, suppressed]
        self._state: dict[Hashable, list[Any]] = {}

    def admit(self, key: Hashable, now: float) -> int | None:
        """Decide about one event of ``key`` at time ``now``.

        Returns:
            None to suppress the event, or the number of events of this key
            suppressed since the last one admitted (0 usually).
        """
        state = self._state.get(key)
        if state is None:
            if len(self._state) >= self.max_keys:
                del self._state[next(iter(self._state))]
            self._state[key] = [now, 1, 0]
            return 0
        if now - state[0] >= self.period:
            state[0], state[1] = now, 0
        if state[1] >= self.burst:
            state[2] += 1
            return None
        state[1] += 1
        suppressed, state[2] = state[2], 0
        return suppressed

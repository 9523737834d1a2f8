"""The pure rate limiters: the token bucket behind ?rate= and the log-event limiter."""

import pytest

from greentap.core.ratelimit import EventLimiter, TokenBucket, default_burst


def test_bucket_passes_a_burst_then_the_rate():
    """A full bucket lets `burst` frames through at once, then `rate` per second."""
    bucket = TokenBucket(100, burst=10)
    passed = sum(bucket.take(0.0) for _ in range(50))
    assert passed == 10
    passed = sum(bucket.take(0.5) for _ in range(100))  # 0.5 s later: 50 tokens, capped at 10
    assert passed == 10
    passed = sum(bucket.take(0.55) for _ in range(100))  # 50 ms later: 5 tokens
    assert passed == 5


def test_bucket_over_a_long_run_keeps_to_the_rate():
    """Offered 10x its rate for 10 s, it passes rate * 10 + burst frames."""
    bucket = TokenBucket(1000, burst=100)
    passed = 0
    for step in range(10_000):  # 1 ms steps, 10 frames offered each
        now = step / 1000
        passed += sum(bucket.take(now) for _ in range(10))
    assert 10_000 - 10 <= passed <= 10_000 + 100


def test_bucket_ignores_a_clock_going_backwards():
    """A non-increasing clock adds no tokens."""
    bucket = TokenBucket(10, burst=1)
    assert bucket.take(5.0)
    assert not bucket.take(4.0)
    assert not bucket.take(4.0)


def test_default_burst_is_100_ms_worth_and_at_least_one():
    """The default burst is rate/10, never below one frame."""
    assert default_burst(20_000) == 2_000
    assert default_burst(3) == 1
    assert TokenBucket(3).burst == 1


@pytest.mark.parametrize(("rate", "burst"), [(0, None), (-1, None), (10, 0.5)])
def test_bucket_refuses_nonsense(rate, burst):
    """A rate must be positive and a burst at least one frame."""
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_event_limiter_admits_a_burst_then_reports_what_it_held_back():
    """5 events a minute per key; the first one of the next minute says how many were held."""
    limiter = EventLimiter(burst=5, period=60)
    results = [limiter.admit("link_down", 0.0 + i) for i in range(20)]
    assert results[:5] == [0, 0, 0, 0, 0]
    assert results[5:] == [None] * 15
    assert limiter.admit("link_down", 61.0) == 15
    assert limiter.admit("link_down", 62.0) == 0


def test_event_limiter_keys_are_independent_and_bounded():
    """One key's flood does not silence another; at most max_keys are remembered."""
    limiter = EventLimiter(burst=1, period=60, max_keys=3)
    assert limiter.admit("a", 0.0) == 0
    assert limiter.admit("a", 1.0) is None
    assert limiter.admit("b", 1.0) == 0
    for key in range(100):
        limiter.admit(key, 2.0)
    assert len(limiter._state) == 3

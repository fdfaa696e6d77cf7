"""TokenBucket: starts full, refills at the rate, caps at the burst."""

from __future__ import annotations

import pytest

from reactor_rt.learning import TokenBucket


def test_bucket_allows_a_burst_then_the_rate(clock):
    bucket = TokenBucket(per_minute=30, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 1.9  # 0.95 of a token at one per 2 s
    assert not bucket.take()
    clock.now += 0.1
    assert bucket.take() and not bucket.take()
    clock.now += 3600  # a long quiet spell refills only up to the burst
    assert bucket.tokens == 3.0


def test_default_burst_and_unlimited(clock):
    assert TokenBucket(per_minute=60, clock=clock).burst == 10  # ten seconds' worth
    assert TokenBucket(per_minute=1, clock=clock).burst == 1
    unlimited = TokenBucket(per_minute=None, clock=clock)
    assert all(unlimited.take() for _ in range(1000))
    with pytest.raises(ValueError):
        TokenBucket(per_minute=0)


@pytest.mark.parametrize("per_minute", [float("nan"), float("inf"), -1.0])
def test_a_rate_that_is_not_a_positive_finite_number_is_refused(clock, per_minute):
    # a NaN rate compared False everywhere: the bucket never ran dry
    with pytest.raises(ValueError, match="per_minute"):
        TokenBucket(per_minute=per_minute, burst=2, clock=clock)

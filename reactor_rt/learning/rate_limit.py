"""A token bucket: at most `per_minute` updates a minute on average, with bursts of up to `burst`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """Starts full; `take()` spends one token if there is one. Refills continuously at per_minute / 60 s.

    per_minute None means unlimited. burst defaults to ten seconds' worth of tokens (at least one), so a
    short flurry of feedback is served at once and a sustained flood is held to the rate.
    """

    def __init__(
        self,
        per_minute: float | None,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # "not > 0" also refuses NaN, which compared False everywhere and made the bucket unlimited
        if per_minute is not None and not (per_minute > 0 and math.isfinite(per_minute)):
            raise ValueError(f"per_minute must be a finite number > 0 or None (unlimited), got {per_minute}")
        self.per_minute = per_minute
        self.burst = burst if burst is not None else max(1, round((per_minute or 0) / 6))
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {self.burst}")
        self._clock = clock
        self._tokens = float(self.burst)
        self._last = clock()

    @property
    def tokens(self) -> float:
        """Tokens available now (refilled up to the current time)."""
        self._refill()
        return self._tokens

    def take(self) -> bool:
        """Spend one token; False (nothing spent) when the bucket is empty."""
        if self.per_minute is None:
            return True
        self._refill()
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _refill(self) -> None:
        now = self._clock()
        if self.per_minute is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.per_minute / 60.0)
        self._last = now

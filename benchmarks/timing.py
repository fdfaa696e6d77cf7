"""Timing helpers shared by the benchmarks: wall + thread-CPU clocks, medians, round-robin sampling.

Every figure is kept twice: wall-clock ms and the CPU ms of the benchmark thread. The benchmarks run
torch with one thread, so every op runs on that thread and its CPU time is what the work costs on a
free core; wall time also counts the time other processes take the core away (the machine is shared),
so ratios are compared on the CPU column.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["Clock", "Timing", "interleaved", "median_ci", "median_timing", "time_calls"]


class Timing(NamedTuple):
    """One measurement in milliseconds."""

    wall: float
    cpu: float


class Clock:
    """Wall and thread-CPU time of a `with` block, in ms (read `.ms` after the block)."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ms = Timing(1000 * (time.perf_counter() - self._wall), 1000 * (time.thread_time() - self._cpu))


def median_timing(samples: list[Timing]) -> Timing:
    """Median wall and median CPU of several samples (each column on its own)."""
    return Timing(statistics.median(s.wall for s in samples), statistics.median(s.cpu for s in samples))


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Median time of one call of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        with Clock() as c:
            fn()
        samples.append(c.ms)
    return median_timing(samples)


def interleaved(runs: dict[str, Callable[[], Timing]], repeats: int, warmup: int = 1) -> dict[str, list[Timing]]:
    """Samples of each run taken round-robin (A B C A B C ...), after `warmup` untimed rounds, so that
    load swings on the shared machine hit every variant alike and their ratios stay fair."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    samples: dict[str, list[Timing]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(run())
    return samples


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median: the order statistics ``x(j) .. x(n+1-j)``
    that hold the true median with probability >= ``level`` (the count of samples under the median is
    binomial(n, 1/2)). With too few samples for ``level`` it is the whole range."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("no samples")
    tail = (1 - level) / 2
    j, below = 0, 0.0  # below: P(Binomial(n, 1/2) <= j - 1)
    while j < n // 2 and below + math.comb(n, j) / 2**n <= tail:
        below += math.comb(n, j) / 2**n
        j += 1
    j = max(j, 1)
    return xs[j - 1], xs[n - j]

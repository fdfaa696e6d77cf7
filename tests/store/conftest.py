"""Shared helpers for the store tests."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from reactor_rt import StaleVersionError


def _race(attempt: Callable[[int], object], n: int) -> list[object]:
    """Run attempt(0..n-1) in n threads released together; each outcome is its result or "stale"."""
    barrier = threading.Barrier(n)
    outcomes: list[object] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = attempt(i)
        except StaleVersionError:
            outcomes[i] = "stale"

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return outcomes


@pytest.fixture
def race() -> Callable[[Callable[[int], object], int], list[object]]:
    """race(attempt, n): call attempt(i) from n threads at once and collect the outcomes."""
    return _race

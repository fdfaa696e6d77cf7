"""Gathers memory updates that become due together into one batched call.

When several streams decode in one batch, their answers end at the same step and their memory updates
are due at the same moment: one encoder call, one memory-updater call and one store call for all of
them cost a fraction of one call chain each. The batcher holds a submitted update back only while
more are expected: an answer that has ended but whose update has not been submitted yet (`expect`).
A lone stream's update goes out on the next event-loop turn.

One batch runs at a time (``max_in_flight``): updates submitted while it runs gather into the next
one, which starts as soon as it ends. The model actors run one call at a time anyway, so a second
batch sent meanwhile would only queue there, and answers that ended a few decode steps apart would be
updated in several small batches, each stream starting its next turn at another moment: the decoder
then runs many steps for one or two rows instead of one step for all of them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["UpdateBatcher"]

Item = TypeVar("Item")
Result = TypeVar("Result")


class UpdateBatcher(Generic[Item, Result]):
    """Runs ``run_batch(items) -> results`` (one result or exception per item) on gathered items.

    ``max_wait_s`` bounds how long an item waits for expected company; expectations older than
    ``expect_ttl_s`` are forgotten (an answer whose update never came, e.g. after an error). At most
    ``max_in_flight`` batches run at once; the others wait for one to end.
    """

    def __init__(self, run_batch: Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]],
                 max_batch: int = 64, max_wait_s: float = 0.005, expect_ttl_s: float = 0.05,
                 max_in_flight: int = 1) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be >= 1")
        self._run_batch = run_batch
        self.max_in_flight = max_in_flight
        self._running = 0
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.expect_ttl_s = expect_ttl_s
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._expected: deque[float] = deque()
        self._flush: asyncio.TimerHandle | asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # batches run so far (operators, tests)

    def expect(self) -> None:
        """An update will be submitted soon (an answer just ended): hold the batch for it."""
        self._expected.append(time.monotonic())

    async def submit(self, item: Item) -> Result:
        """Queue ``item``; returns its result when its batch has run (or raises its exception)."""
        loop = asyncio.get_running_loop()
        if self._expected:
            self._expected.popleft()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.max_batch or not self._still_expected():
            self._schedule(loop, 0.0)
        elif self._flush is None:
            self._schedule(loop, self.max_wait_s)
        return await future

    def _still_expected(self) -> bool:
        horizon = time.monotonic() - self.expect_ttl_s
        while self._expected and self._expected[0] < horizon:
            self._expected.popleft()
        return bool(self._expected)

    def _schedule(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        if self._flush is not None:
            self._flush.cancel()
        self._flush = loop.call_soon(self._go) if delay <= 0 else loop.call_later(delay, self._go)

    def _go(self) -> None:
        self._flush = None
        loop = asyncio.get_running_loop()
        # items submitted before this ran may be more than one batch holds; those left wait for a
        # running batch to end (`_run` starts them then)
        while self._pending and self._running < self.max_in_flight:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self._running += 1
            task = loop.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        self.batches += 1
        try:
            results = await self._run_batch([item for item, _ in batch])
        except BaseException as exc:
            results = [exc] * len(batch)
        finally:
            self._running -= 1
            if self._pending and self._flush is None:  # what gathered meanwhile goes now
                self._schedule(asyncio.get_running_loop(), 0.0)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

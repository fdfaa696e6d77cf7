"""UpdateBatcher: updates due together go out as one batch, no more than max_batch at a time."""

from __future__ import annotations

import asyncio

import pytest

from reactor_rt.actors.update_batcher import UpdateBatcher

pytestmark = pytest.mark.anyio


class Recorder:
    """A batch runner that records each batch and answers item * 10 (an exception for negative items)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await asyncio.sleep(0)
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def test_a_lone_update_goes_out_at_once():
    run = Recorder()
    batcher = UpdateBatcher(run, max_wait_s=10.0)
    assert await asyncio.wait_for(batcher.submit(1), 1.0) == 10
    assert run.batches == [[1]]


async def test_expected_updates_are_gathered_into_one_batch():
    run = Recorder()
    batcher = UpdateBatcher(run, max_wait_s=10.0)
    for _ in range(3):
        batcher.expect()
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3))), 1.0)
    assert results == [10, 20, 30] and run.batches == [[1, 2, 3]] and batcher.batches == 1


async def test_an_expected_update_that_never_comes_delays_the_batch_by_max_wait_only():
    run = Recorder()
    batcher = UpdateBatcher(run, max_wait_s=0.02, expect_ttl_s=10.0)
    batcher.expect()
    batcher.expect()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(batcher.submit(5), 1.0) == 50
    assert loop.time() - started >= 0.015 and run.batches == [[5]]


async def test_no_batch_holds_more_than_max_batch():
    run = Recorder()
    batcher = UpdateBatcher(run, max_batch=2, max_wait_s=10.0)
    for _ in range(5):
        batcher.expect()
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(5))), 1.0)
    assert results == [0, 10, 20, 30, 40]
    assert run.batches == [[0, 1], [2, 3], [4]]


async def test_a_failed_item_fails_alone_and_a_failed_batch_fails_all():
    run = Recorder()
    batcher = UpdateBatcher(run)
    batcher.expect()
    batcher.expect()
    results = await asyncio.gather(batcher.submit(-1), batcher.submit(2), return_exceptions=True)
    assert isinstance(results[0], ValueError) and results[1] == 20

    async def broken(items: list[int]) -> list[int]:
        raise RuntimeError("encoder gone")

    batcher = UpdateBatcher(broken)
    batcher.expect()
    batcher.expect()
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)

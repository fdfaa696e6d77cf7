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


class Gated(Recorder):
    """A batch runner whose batches end only when the test opens the gate (one gate per batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[asyncio.Event] = []

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        gate = asyncio.Event()
        self.gates.append(gate)
        self.batches.append(list(items))
        await gate.wait()
        return [i * 10 for i in items]


async def test_updates_submitted_while_a_batch_runs_go_together_once_it_ends():
    run = Gated()
    batcher = UpdateBatcher(run, max_wait_s=10.0)
    first = asyncio.ensure_future(batcher.submit(1))  # nothing in flight: goes at once
    for _ in range(20):
        await asyncio.sleep(0)
    assert run.batches == [[1]]
    later = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3, 4)]  # one by one, none expected
    for _ in range(20):
        await asyncio.sleep(0)
    assert run.batches == [[1]]  # they wait for the running batch, not going out as three more
    run.gates[0].set()
    assert await asyncio.wait_for(first, 1.0) == 10
    for _ in range(20):
        await asyncio.sleep(0)
    assert run.batches == [[1], [2, 3, 4]]
    run.gates[1].set()
    assert await asyncio.wait_for(asyncio.gather(*later), 1.0) == [20, 30, 40]


async def test_max_in_flight_lets_more_batches_run_at_once():
    run = Gated()
    batcher = UpdateBatcher(run, max_wait_s=10.0, max_in_flight=2)
    tasks = []
    for i in (1, 2, 3):
        tasks.append(asyncio.ensure_future(batcher.submit(i)))
        for _ in range(20):
            await asyncio.sleep(0)
    assert run.batches == [[1], [2]]  # two run at once; the third waits for one of them
    run.gates[0].set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert run.batches == [[1], [2], [3]]
    for gate in run.gates:
        gate.set()
    assert await asyncio.wait_for(asyncio.gather(*tasks), 1.0) == [10, 20, 30]


def test_limits_below_one_are_refused():
    with pytest.raises(ValueError):
        UpdateBatcher(Recorder(), max_in_flight=0)
    with pytest.raises(ValueError):
        UpdateBatcher(Recorder(), max_batch=0)

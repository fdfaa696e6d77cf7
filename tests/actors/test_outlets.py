"""Token outlets and channels: chunking rules, and many requests' chunks batched over one stream."""

from __future__ import annotations

import asyncio

import pytest
import torch

from reactor_rt.actors.decoder import DecoderCore, DecoderService
from reactor_rt.actors.handles import GenerateRequest, STMHandle
from reactor_rt.actors.outlets import Channel, Outlet

pytestmark = pytest.mark.anyio


def test_outlet_sends_the_first_token_alone_then_by_count_and_at_the_end():
    due = []
    outlet = Outlet(chunk_tokens=3, chunk_s=1e9, notify=lambda: due.append(True))
    outlet.push([1], False, None)
    assert len(due) == 1 and outlet.drain()[0] == [1]
    outlet.push([2], False, None)
    outlet.push([3], False, None)
    assert len(due) == 1  # two tokens: not yet
    outlet.push([4], False, None)
    assert len(due) == 2 and outlet.drain()[0] == [2, 3, 4]
    outlet.push([5], True, None)
    assert len(due) == 3 and outlet.done and outlet.drain()[0] == [5]


def test_outlet_with_a_zero_interval_makes_every_token_due():
    due = []
    outlet = Outlet(chunk_tokens=1000, chunk_s=0.0, notify=lambda: due.append(True))
    for token in range(4):
        outlet.push([token], False, None)
        assert len(due) == token + 1 and outlet.drain()[0] == [token]


def test_the_first_chunk_is_the_first_token_alone_when_more_came_before_it_left():
    due = []
    outlet = Outlet(chunk_tokens=1000, chunk_s=1e9, notify=lambda: due.append(True))
    outlet.push([1], False, None)
    outlet.push([2], False, None)
    outlet.push([3], True, None)  # the reader had not woken yet
    assert len(due) == 3  # every push is due until the first chunk has left
    assert outlet.drain() == ([1], False, None)  # alone, and the end is not reported with it
    assert len(due) == 4  # the rest is due again at once
    assert outlet.drain() == ([2, 3], True, None)


def test_outlets_take_every_token_pushed_from_another_thread_exactly_once():
    import threading

    outlet = Outlet(chunk_tokens=7, chunk_s=1e9, notify=lambda: None)
    got: list[int] = []
    pusher = threading.Thread(target=lambda: [outlet.push([i], i == 19_999, None) for i in range(20_000)])
    pusher.start()
    while True:
        tokens, done, _ = outlet.drain()
        got += tokens
        if done:
            break
    pusher.join()
    assert got == list(range(20_000))


async def test_channel_batches_every_due_chunk_and_forgets_finished_requests():
    channel = Channel(chunk_tokens=2, chunk_s=1e9)
    a, b = channel.outlet(1), channel.outlet(2)
    a.push([10], False, None)
    b.push([20], False, None)
    batches = channel.batches()
    assert await batches.__anext__() == [(1, [10], False, None), (2, [20], False, None)]
    a.push([11], False, None)  # not due: one token since the last chunk
    b.push([21], True, None)
    assert await batches.__anext__() == [(2, [21], True, None)]
    channel.fail(3, ValueError("bad"))
    (item,) = await batches.__anext__()
    assert item[0] == 3 and item[2] is True and isinstance(item[3], ValueError)
    channel.drop(1)
    a.push([12], True, None)  # dropped: nothing more of it goes out
    channel.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(batches.__anext__(), timeout=5)


async def test_service_channel_gives_each_request_its_own_tokens(model):
    service = DecoderService(DecoderCore(model, capacity=4), chunk_tokens=4, chunk_ms=1e9)
    stms = {i: model.init_stm(1)[0] + 0.2 * i for i in range(3)}

    async def load(handle):
        return stms[int(handle.memory_id)]

    channel = service.open_channel()
    prompts = {i: [5 + i, 6, 7 + i] for i in range(3)}
    for i in range(3):
        await service.submit_to(channel, i, GenerateRequest(prompts[i], STMHandle(str(i), 0, None), 6), load)
    await service.submit_to(channel, 9, GenerateRequest([], STMHandle("0", 0, None), 6), load)  # refused
    got: dict[int, list[int]] = {i: [] for i in range(3)}
    ended: dict[int, BaseException | None] = {}
    async for batch in channel.batches():
        for key, tokens, done, error in batch:
            if key in got:
                got[key] += tokens
            if done:
                ended[key] = error
        if len(ended) == 4:
            break
    assert isinstance(ended.pop(9), ValueError) and all(e is None for e in ended.values())
    for i in range(3):
        with torch.no_grad():
            alone = model.generate(torch.tensor(prompts[i])[None], stms[i][None], max_new_tokens=6)[0].tolist()
        assert got[i] == [t for t in alone if t != model.tokenizer.pad_id], i
    assert not service._requests  # finished requests leave no trace


async def test_a_cancel_that_overtakes_its_submit_starts_nothing(model):
    """The consumer left before its submit arrived, or while the request's STM was loading."""
    service = DecoderService(DecoderCore(model, capacity=4), chunk_tokens=4, chunk_ms=1e9)
    stm = model.init_stm(1)[0]
    loading, release = asyncio.Event(), asyncio.Event()

    async def slow_load(handle):
        loading.set()
        await release.wait()
        return stm

    channel = service.open_channel()
    service.cancel_in(channel, 1)  # before the submit
    async with asyncio.timeout(10):  # (a request that started would wait for its STM for good)
        await service.submit_to(channel, 1, GenerateRequest([5, 6, 7], STMHandle("m", 0, None), 50), slow_load)
    assert not loading.is_set()
    submit = asyncio.get_running_loop().create_task(
        service.submit_to(channel, 2, GenerateRequest([5, 6, 7], STMHandle("m", 0, None), 50), slow_load))
    await loading.wait()
    service.cancel_in(channel, 2)  # while its STM loads
    release.set()
    await submit
    assert not service.core.busy and not service._requests
    service.close()


async def test_closing_a_channel_stops_its_requests(model):
    service = DecoderService(DecoderCore(model, capacity=4), chunk_tokens=4, chunk_ms=1e9)
    stm = model.init_stm(1)[0]

    async def load(handle):
        return stm

    channel = service.open_channel()
    for key in range(3):
        await service.submit_to(channel, key, GenerateRequest([5, 6, key], STMHandle("m", 0, None), 200), load)
    assert service.core.busy
    service.close_channel(channel)  # its reader has gone
    for _ in range(200):
        if not service.core.busy:
            break
        await asyncio.sleep(0.01)
    assert not service.core.busy and not service._requests
    await service.submit_to(channel, 9, GenerateRequest([5, 6, 7], STMHandle("m", 0, None), 200), load)
    assert not service.core.busy  # a closed channel starts nothing
    service.close()


async def test_a_late_submit_to_a_channel_whose_reader_has_gone_starts_nothing(model):
    from reactor_rt.actors.decoder import DecoderActorImpl

    decoder = DecoderActorImpl(model, capacity=2)
    reader = decoder._batches("conductor-1")
    first = asyncio.get_running_loop().create_task(reader.__anext__())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await reader.aclose()  # the reader has gone: the channel is closed and forgotten
    assert "conductor-1" not in decoder._channels
    await decoder._start("conductor-1", 5, GenerateRequest([5, 6, 7], STMHandle("m", 0, None), 20), "ray_submits")
    assert "conductor-1" not in decoder._channels and not decoder.service.core.busy
    decoder.service.close()

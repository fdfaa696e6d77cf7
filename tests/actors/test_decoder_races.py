"""Decoder races: a cached version evicted while its request is submitted, and a failed step that
must fail only its own requests (not those submitted while it ran)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from reactor_rt.actors.decoder import DecoderActorImpl, DecoderCore, DecoderService
from reactor_rt.actors.handles import GenerateRequest, STMHandle


def _stm(model, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return model.init_stm(1)[0] + 0.3 * torch.randn(model.init_stm(1)[0].shape, generator=g)


def _alone(model, prompt: list[int], stm: torch.Tensor, n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor(prompt)[None], stm[None], max_new_tokens=n)[0].tolist()
    return [t for t in out if t != model.tokenizer.pad_id]


def _evict_after_each_check(core: DecoderCore, handle: STMHandle, stm: torch.Tensor) -> None:
    """Stand-in for the race: another thread warms ``handle`` (a new version, into a full cache) right
    after a `has_memory` check, evicting the version that was just found cached."""
    has_memory = core.has_memory

    def check_then_evict(checked: STMHandle) -> bool:
        cached = has_memory(checked)
        core.warm(handle, stm)
        return cached

    core.has_memory = check_then_evict  # type: ignore[method-assign]


async def _read(channel, keys: set[int]) -> tuple[dict[int, list[int]], dict[int, BaseException | None]]:
    got: dict[int, list[int]] = {k: [] for k in keys}
    ended: dict[int, BaseException | None] = {}
    async with asyncio.timeout(60):
        async for batch in channel.batches():
            for key, tokens, done, error in batch:
                got.setdefault(key, []).extend(tokens)
                if done:
                    ended[key] = error
            if keys <= ended.keys():
                break
    return got, ended


# --- a cached version evicted between the check and the submit ------------------------------------


def _evicting_service(model, version: int):
    """A service whose cache holds one version, ``a``@version, evicted by another right after any check."""
    core = DecoderCore(model, capacity=2, memory_cache_size=1)
    service = DecoderService(core, chunk_tokens=1000, chunk_ms=1e9)
    stm, other = _stm(model, 30 + 2 * version), _stm(model, 31 + 2 * version)
    handle = STMHandle("a", version, None)
    core.warm(handle, stm)
    _evict_after_each_check(core, STMHandle("b", version, None), other)

    async def load(h):
        return stm

    return service, handle, stm, load


@pytest.mark.anyio
async def test_a_version_evicted_while_submitting_to_a_channel_is_still_served(model):
    service, handle, stm, load = _evicting_service(model, 1)
    prompt = [5, 6, 7, 8]
    channel = service.open_channel()
    await service.submit_to(channel, 1, GenerateRequest(prompt, handle, 6), load)
    got, ended = await _read(channel, {1})
    assert ended == {1: None} and got[1] == _alone(model, prompt, stm, 6)
    service.close()


@pytest.mark.anyio
async def test_a_version_evicted_while_generating_is_still_served(model):
    service, handle, stm, load = _evicting_service(model, 2)
    prompt = [9, 10, 11]
    tokens = [t async for c in service.generate(GenerateRequest(prompt, handle, 6), load) for t in c]
    assert tokens == _alone(model, prompt, stm, 6)
    service.close()


@pytest.mark.anyio
async def test_a_link_submit_whose_version_is_evicted_meanwhile_is_sent_again_with_its_stm(model):
    # a link submit carries no STM reference: on a miss the decoder says so (False) and starts nothing,
    # and the client sends the request again through Ray, with the reference
    decoder = DecoderActorImpl(model, capacity=2)
    core = decoder.service.core
    core._memory_cache_size = 1  # a full cache (256 versions by default)
    stm, other = _stm(model, 34), _stm(model, 35)
    handle = STMHandle("a", 3, None)
    core.warm(handle, stm)
    _evict_after_each_check(core, STMHandle("b", 3, None), other)
    prompt = [12, 13, 14, 15]
    request = GenerateRequest(prompt, handle, 6)

    stm_ref = asyncio.get_running_loop().create_future()  # what `await handle.stm` resolves, as over Ray
    stm_ref.set_result(stm)
    channel = decoder._channel("conductor-1")

    async def submit_as_the_client(key: int) -> None:
        if not await decoder._submit_cached("conductor-1", key, request.to_wire()):
            assert (id(channel), key) not in decoder.service._requests  # a miss starts nothing
            await decoder.submit("conductor-1", key, GenerateRequest(prompt, STMHandle("a", 3, stm_ref,
                                                                                       handle.token), 6))

    await submit_as_the_client(1)
    core.warm(STMHandle("c", 3, None), other)  # evicted for good: this one is a miss
    assert not core.has_memory(handle)
    await submit_as_the_client(2)
    got, ended = await _read(channel, {1, 2})
    assert ended == {1: None, 2: None}
    assert got[1] == got[2] == _alone(model, prompt, stm, 6)
    stats = await decoder.stats()
    assert stats["link_submits"] + stats["ray_submits"] == 2 and stats["ray_submits"] >= 1
    decoder.service.close()


# --- a failed step fails its own requests only ------------------------------------------------------


def test_a_failed_step_fails_its_rows_and_leaves_requests_submitted_meanwhile_queued(model):
    core = DecoderCore(model, capacity=2)
    stms = [_stm(model, 40 + i) for i in range(4)]
    reqs = [GenerateRequest([5, 6, 7 + i], STMHandle(f"s{i}", 0, None), max_new_tokens=6) for i in range(4)]
    got: dict[int, list[int]] = {i: [] for i in range(4)}
    ended: dict[int, BaseException | None] = {}

    def sink(i):
        def put(tokens, finished, error):
            got[i].extend(tokens)
            if finished:
                ended[i] = error
        return put

    core.submit(reqs[0], stms[0], sink(0))
    core.step()  # row 0 decoding
    core.submit(reqs[1], stms[1], sink(1))  # admitted by the step that fails
    core.submit(reqs[2], stms[2], sink(2))  # no free row: waits, not part of the step
    boom = RuntimeError("the batched step failed")
    step = core.batch.step

    def failing_step():
        core.submit(reqs[3], stms[3], sink(3))  # from the loop thread, while the step runs
        raise boom

    core.batch.step = failing_step  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        core.step()
    core.fail_step(boom)  # what the step thread does after a failed step
    assert ended == {0: boom, 1: boom}
    assert len(core.batch.free_slots) == 2 and core.busy  # rows freed; 2 and 3 still queued
    core.batch.step = step  # type: ignore[method-assign]
    for _ in range(40):
        if not core.busy:
            break
        core.step()
    assert ended == {0: boom, 1: boom, 2: None, 3: None}
    for i in (2, 3):
        assert got[i] == _alone(model, reqs[i].prompt, stms[i], 6), i


def test_requests_a_failed_admit_had_taken_but_not_placed_fail_with_the_step(model):
    core = DecoderCore(model, capacity=2)
    stms = [_stm(model, 50 + i) for i in range(3)]
    reqs = [GenerateRequest([5, 6, 7 + i], STMHandle(f"p{i}", 0, None), max_new_tokens=4) for i in range(3)]
    ended: dict[int, BaseException | None] = {}

    def sink(i):
        def put(tokens, finished, error):
            if finished:
                ended[i] = error
        return put

    core.submit(reqs[0], stms[0], sink(0))
    core.submit(reqs[1], stms[1], sink(1))
    add_many = core.batch.add_many

    def add_many_losing_a_slot(*args):
        core.submit(reqs[2], stms[2], sink(2))  # arrives while the step admits
        return add_many(*args)[:1]  # a broken batch: both rows placed, one slot reported

    core.batch.add_many = add_many_losing_a_slot  # type: ignore[method-assign]
    with pytest.raises(ValueError) as raised:  # escapes `_admit`: not a per-request failure
        core.step()
    core.batch.add_many = add_many  # type: ignore[method-assign]
    core.fail_step(raised.value)
    # both were taken by the failed step: ended, neither left hanging, and both rows freed
    assert ended == {0: raised.value, 1: raised.value}
    assert len(core.batch.free_slots) == 2
    while core.busy:
        core.step()
    assert ended == {0: raised.value, 1: raised.value, 2: None}


@pytest.mark.anyio
async def test_the_service_keeps_a_request_submitted_during_a_failed_step(model):
    core = DecoderCore(model, capacity=2)
    service = DecoderService(core, chunk_tokens=1000, chunk_ms=1e9)
    stms = {i: _stm(model, 60 + i) for i in (1, 2)}
    prompts = {1: [5, 6, 7], 2: [8, 9, 10, 11]}

    async def load(h):
        return stms[int(h.memory_id)]

    loop = asyncio.get_running_loop()
    channel = service.open_channel()
    step = core.batch.step
    failed = []

    def fail_once():
        if failed:
            return step()
        failed.append(True)
        # request 2 arrives on the loop while this (doomed) step runs on the step thread
        asyncio.run_coroutine_threadsafe(
            service.submit_to(channel, 2, GenerateRequest(prompts[2], STMHandle("2", 0, None), 6), load),
            loop).result(timeout=30)
        raise RuntimeError("the batched step failed")

    core.batch.step = fail_once  # type: ignore[method-assign]
    await service.submit_to(channel, 1, GenerateRequest(prompts[1], STMHandle("1", 0, None), 6), load)
    got, ended = await _read(channel, {1, 2})
    assert isinstance(ended[1], RuntimeError)
    assert ended[2] is None and got[2] == _alone(model, prompts[2], stms[2], 6)
    assert not service._requests
    service.close()


def test_a_batch_that_cannot_free_its_rows_after_a_failed_step_is_replaced(model):
    """After a failed step, freeing a row may fail too (the batch's bookkeeping is broken): the step's
    requests still end with the step's error, and the core serves the next request on a fresh batch."""
    core = DecoderCore(model, capacity=2)
    stms = [_stm(model, 70 + i) for i in range(2)]
    reqs = [GenerateRequest([5, 6, 7 + i], STMHandle(f"r{i}", 0, None), max_new_tokens=4) for i in range(2)]
    ended: dict[int, BaseException | None] = {}
    got: dict[int, list[int]] = {0: [], 1: []}

    def sink(i):
        def put(tokens, finished, error):
            got[i] += tokens
            if finished:
                ended[i] = error
        return put

    core.submit(reqs[0], stms[0], sink(0))
    core.step()
    broken = core.batch
    boom = RuntimeError("the batched step failed")

    def fail(*args):
        raise boom

    broken.step = fail  # type: ignore[method-assign]
    broken.remove = lambda slot: (_ for _ in ()).throw(KeyError(slot))  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        core.step()
    core.fail_step(boom)
    assert ended == {0: boom}
    assert core.batch is not broken and len(core.batch.free_slots) == 2
    core.submit(reqs[1], stms[1], sink(1))
    while core.busy:
        core.step()
    assert ended == {0: boom, 1: None}
    assert got[1] == _alone(model, reqs[1].prompt, stms[1], 4)

"""DecoderCore / DecoderService: continuous batching keeps every row's greedy answer unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

from reactor_rt.actors.decoder import DecoderCore, DecoderService
from reactor_rt.actors.handles import GenerateRequest, STMHandle


def _stm(model, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return model.init_stm(1)[0] + 0.3 * torch.randn(model.init_stm(1)[0].shape, generator=g)


def _prompt(seed: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, 250, (n,), generator=g).tolist()


def _alone(model, prompt: list[int], stm: torch.Tensor, n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor(prompt)[None], stm[None], max_new_tokens=n)[0].tolist()
    return [t for t in out if t != model.tokenizer.pad_id]


def test_rows_joining_mid_way_match_generation_alone(model):
    core = DecoderCore(model, capacity=4)
    reqs = [GenerateRequest(_prompt(i, 5 + 3 * i), STMHandle(f"m{i}", 0, None), max_new_tokens=10) for i in range(3)]
    stms = [_stm(model, i) for i in range(3)]
    got: dict[int, list[int]] = {i: [] for i in range(3)}
    done: set[int] = set()

    def sink(i):
        def put(tokens, finished, error):
            assert error is None
            got[i].extend(tokens)
            if finished:
                done.add(i)
        return put

    core.submit(reqs[0], stms[0], sink(0))
    core.step()
    core.step()
    core.submit(reqs[1], stms[1], sink(1))  # joins while row 0 is mid-answer
    core.step()
    core.submit(reqs[2], stms[2], sink(2))
    for _ in range(40):
        if not core.busy:
            break
        core.step()
    assert done == {0, 1, 2}
    for i in range(3):
        assert got[i] == _alone(model, reqs[i].prompt, stms[i], 10), i


def test_requests_waiting_together_are_prefilled_together_with_the_same_answers(model):
    core = DecoderCore(model, capacity=3)
    reqs = [GenerateRequest(_prompt(10 + i, 4 + 5 * i), STMHandle(f"t{i}", 0, None), max_new_tokens=8)
            for i in range(4)]
    stms = [_stm(model, 10 + i) for i in range(4)]
    got: dict[int, list[int]] = {i: [] for i in range(4)}
    errors: list[BaseException] = []

    def sink(i):
        def put(tokens, finished, error):
            if error is not None:
                errors.append(error)
            got[i].extend(tokens)
        return put

    calls = []
    add_many = core.batch.add_many
    core.batch.add_many = lambda *a: calls.append(len(a[0])) or add_many(*a)  # type: ignore[method-assign]
    for i in range(4):  # one more than fits: it waits for a free row
        core.submit(reqs[i], stms[i], sink(i))
    for _ in range(60):
        if not core.busy:
            break
        core.step()
    assert calls == [3] and not errors  # three in one forward; the fourth alone, later
    for i in range(4):
        assert got[i] == _alone(model, reqs[i].prompt, stms[i], 8), i
    # a bad request among them fails alone; the others are still admitted and answered
    bad = GenerateRequest([], STMHandle("bad", 0, None), max_new_tokens=8)
    core.submit(reqs[0], stms[0], sink(0))
    core.submit(bad, stms[1], sink(1))
    got[0].clear()
    for _ in range(40):
        if not core.busy:
            break
        core.step()
    assert len(errors) == 1 and got[0] == _alone(model, reqs[0].prompt, stms[0], 8)


def test_memory_keys_values_are_cached_per_version(model):
    core = DecoderCore(model, capacity=2, memory_cache_size=2)
    handles = [STMHandle("m", v, None) for v in range(3)]
    for h in handles:
        core.submit(GenerateRequest([5, 6, 7], h, max_new_tokens=1), _stm(model, h.version), lambda t, d, e: None)
        while core.busy:
            core.step()
    assert not core.has_memory(handles[0])  # evicted: the cache is bounded
    assert core.has_memory(handles[1]) and core.has_memory(handles[2])
    with pytest.raises(ValueError):
        core.submit(GenerateRequest([5], handles[0], max_new_tokens=1), None, lambda t, d, e: None)


def test_handles_of_one_stored_stm_share_its_memory_keys_values(model):
    # every memory not written yet reads the one initial STM under one token (see STMHandle)
    core = DecoderCore(model, capacity=2)
    stm = _stm(model, 7)
    first, other = STMHandle("a", 0, None, token="initial"), STMHandle("b", 0, None, token="initial")
    core.warm(first, stm)
    assert core.has_memory(other)
    assert not core.has_memory(STMHandle("a", 0, None))  # another stored object: another token
    got: list[int] = []
    core.submit(GenerateRequest(_prompt(7, 6), other, max_new_tokens=6), None, lambda t, d, e: got.extend(t))
    while core.busy:
        core.step()
    assert got == _alone(model, _prompt(7, 6), stm, 6)



def test_an_update_batchs_versions_are_warmed_in_one_projection(model):
    core = DecoderCore(model, capacity=4, memory_cache_size=3)
    stms = [_stm(model, 30 + i) for i in range(4)]
    handles = [STMHandle(f"m{i}", 1, None) for i in range(4)]
    core.warm(handles[0], stms[0])
    cached = core.cached_memory(handles[0])
    projected: list[int] = []
    project = model.memory_kv
    model.memory_kv = lambda stm: projected.append(stm.shape[0]) or project(stm)  # type: ignore[method-assign]
    try:
        core.warm_many(handles, stms)
    finally:
        del model.memory_kv
    assert projected == [3]  # the one cached version skipped, the other three in one call
    assert core.cached_memory(handles[0]) is None  # the bound holds: the oldest entry went
    for handle, stm in zip(handles[1:], stms[1:], strict=True):
        kv, alone = core.cached_memory(handle), model.memory_kv(stm.unsqueeze(0))
        assert kv.batch_size == 1
        torch.testing.assert_close(kv.k, alone.k, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(kv.v, alone.v, atol=1e-6, rtol=1e-5)
        assert kv.k.untyped_storage().nbytes() == kv.k.numel() * kv.k.element_size()  # its own copy
    assert cached is not None
    got: list[int] = []
    prompt = _prompt(31, 6)
    core.submit(GenerateRequest(prompt, handles[1], max_new_tokens=6), None, lambda t, d, e: got.extend(t))
    while core.busy:
        core.step()
    assert got == _alone(model, prompt, stms[1], 6)

def test_a_request_keeps_the_cached_memory_it_was_accepted_with(model):
    # the decoder actor accepts a request without its STM when the version is cached; a warm of another
    # version (on another thread, see DecoderService) may evict that entry before the next step admits it
    core = DecoderCore(model, capacity=1, memory_cache_size=1)
    stms = [_stm(model, 20), _stm(model, 21)]
    handles = [STMHandle("a", 1, None), STMHandle("b", 1, None)]
    core.warm(handles[0], stms[0])
    got: list[int] = []
    errors: list[BaseException] = []

    def sink(tokens, finished, error):
        got.extend(tokens)
        if error is not None:
            errors.append(error)

    prompt = _prompt(20, 6)
    core.submit(GenerateRequest(prompt, handles[0], max_new_tokens=6), None, sink)
    core.warm(handles[1], stms[1])  # evicts "a": the cache holds one version
    assert not core.has_memory(handles[0])
    while core.busy:
        core.step()
    assert not errors and got == _alone(model, prompt, stms[0], 6)


def test_cancel_frees_the_row(model):
    core = DecoderCore(model, capacity=1)
    rid = core.submit(GenerateRequest([5, 6], STMHandle("m", 0, None), max_new_tokens=50), _stm(model, 0),
                      lambda t, d, e: None)
    core.step()
    core.cancel(rid)
    assert not core.busy and core.batch.free_slots


@pytest.mark.anyio
async def test_service_streams_the_same_tokens_in_chunks(model):
    service = DecoderService(DecoderCore(model, capacity=2), chunk_tokens=4, chunk_ms=1e9)  # by count only
    stm = _stm(model, 7)
    prompt = _prompt(7, 6)

    async def load(handle):
        return stm

    chunks = [c async for c in service.generate(GenerateRequest(prompt, STMHandle("m", 0, None), 12), load)]
    assert len(chunks[0]) == 1  # the first token goes out alone
    # what gathered behind it is due at once, however little (see `Outlet.drain`); later ones by count
    assert all(len(c) >= 4 for c in chunks[2:-1])
    assert [t for c in chunks for t in c] == _alone(model, prompt, stm, 12)


@pytest.mark.anyio
async def test_a_failed_request_raises_and_the_service_keeps_serving(model):
    service = DecoderService(DecoderCore(model, capacity=2))
    stm = _stm(model, 1)

    async def load(handle):
        return stm

    with pytest.raises(ValueError):  # an empty prompt cannot be prefilled
        [c async for c in service.generate(GenerateRequest([], STMHandle("m", 0, None), 4), load)]
    ok = [c async for c in service.generate(GenerateRequest([5, 6], STMHandle("m", 0, None), 4), load)]
    assert sum(len(c) for c in ok) >= 1


@pytest.mark.anyio
async def test_service_sends_a_zero_interval_answer_before_its_end(model):
    service = DecoderService(DecoderCore(model, capacity=2), chunk_tokens=1000, chunk_ms=0.0)
    stm = _stm(model, 3)

    async def load(handle):
        return stm

    prompt = _prompt(3, 5)
    chunks = [c async for c in service.generate(GenerateRequest(prompt, STMHandle("m", 0, None), 6), load)]
    # how many tokens each later chunk holds depends on when the reader wakes (the steps run in their
    # own thread); the time rule itself is tested in test_outlets. The first token goes out alone.
    assert len(chunks[0]) == 1 and len(chunks) >= 2
    assert [t for c in chunks for t in c] == _alone(model, prompt, stm, 6)


@pytest.mark.anyio
async def test_a_warmed_version_needs_no_stm_load_and_steps_are_counted(model):
    service = DecoderService(DecoderCore(model, capacity=2))
    stm = _stm(model, 4)
    prompt = _prompt(4, 6)
    handle = STMHandle("m", 3, None)
    service.core.warm(handle, stm)  # what the decoder actor's prepare() does after a memory update
    assert service.core.has_memory(handle)

    async def load(handle):
        raise AssertionError("a warmed version must not be loaded again")

    tokens = [t async for c in service.generate(GenerateRequest(prompt, handle, 8), load) for t in c]
    assert tokens == _alone(model, prompt, stm, 8)
    stats = service.stats()
    assert stats["steps"] == len(tokens) and stats["step_cpu_ms"] > 0 and stats["step_wall_ms"] > 0


@pytest.mark.anyio
async def test_service_weights_change_only_when_idle_and_a_closed_service_starts_a_new_step_thread(model):
    service = DecoderService(DecoderCore(model, capacity=2))
    stm = _stm(model, 5)
    prompt = _prompt(5, 6)

    async def load(handle):
        return stm

    first = [t async for c in service.generate(GenerateRequest(prompt, STMHandle("m", 0, None), 6), load) for t in c]
    service.close()  # the step thread ends; the next request starts another
    again = [t async for c in service.generate(GenerateRequest(prompt, STMHandle("m", 0, None), 6), load) for t in c]
    assert first == again == _alone(model, prompt, stm, 6)
    request_id = service.core.submit(GenerateRequest(prompt, STMHandle("m", 0, None), 50), stm,
                                     lambda t, d, e: None)
    with pytest.raises(RuntimeError, match="in flight"):
        await service.set_weights({})
    service.core.cancel(request_id)
    service.core.warm(STMHandle("m", 1, None), stm)
    await service.set_weights({})  # idle: weights may change, and the cached memory keys/values go
    assert not service.core.has_memory(STMHandle("m", 1, None))
    service.close()


def test_new_weights_are_traced_into_the_step_at_once_and_answer_like_the_new_model(model):
    served, target = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    core = DecoderCore(served, capacity=2)
    assert core.batch.traced
    core.set_weights({name: p.detach().clone() for name, p in target.named_parameters()})
    assert not core.batch._traced.stale  # traced again here, between interactions
    prompt, stm, got = _prompt(9, 7), _stm(target, 9), []
    core.submit(GenerateRequest(prompt, STMHandle("w", 0, None), max_new_tokens=8), stm,
                lambda tokens, finished, error: got.extend(tokens))
    while core.busy:
        core.step()
    assert got == _alone(target, prompt, stm, 8)


def test_a_seeded_sampled_request_repeats_and_samples_on_the_models_device(model, monkeypatch):
    prompt, stm = _prompt(3, 6), _stm(model, 3)
    made: list[object] = []
    real = torch.Generator
    monkeypatch.setattr(torch, "Generator", lambda *a, **k: made.append((a, k)) or real(*a, **k))

    def answer(seed: int) -> list[int]:
        core = DecoderCore(model, capacity=2)
        got: list[int] = []
        request = GenerateRequest(prompt, STMHandle("m", 0, None), max_new_tokens=12, temperature=1.0, seed=seed)
        core.submit(request, stm, lambda tokens, finished, error: got.extend(tokens))
        while core.busy:
            core.step()
        return got

    assert answer(7) == answer(7) != answer(8)
    device = next(model.parameters()).device
    # the generator is made where the logits are (a GPU's sampling refuses a CPU generator)
    assert made and [torch.device(*a, **k) if a or k else None for a, k in made] == [device] * len(made)

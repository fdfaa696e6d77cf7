"""STMStoreActorImpl without Ray: ``ray.put`` is replaced by a stand-in that keeps a copy."""

from __future__ import annotations

import asyncio
import itertools

import pytest
import torch

from reactor_rt.actors import stm_store
from reactor_rt.actors.stm_store import STMStoreActorImpl


@pytest.fixture
def fake_put(monkeypatch):
    """Every ray.put becomes ("ref", n, copy): handles can be told apart and read without Ray."""
    counter = itertools.count()
    monkeypatch.setattr(stm_store.ray, "put", lambda value: ("ref", next(counter), value.clone()))


@pytest.fixture
def initial() -> torch.Tensor:
    return torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0))  # (layers, slots, dim)


def test_handle_at_the_latest_version_after_a_restart(tmp_path, fake_put, initial):
    url = f"sqlite:///{tmp_path}/stm.db"

    async def first_life() -> None:
        actor = STMStoreActorImpl(url, initial)
        await actor.commit("m", 0, initial + 1, "q1")
        await actor.commit("m", 1, initial + 2, "q2")
        await actor.close()

    async def after_restart() -> None:
        actor = STMStoreActorImpl(url, initial)
        try:
            # the version an answer read is still the latest: it is in the store, so it is served
            latest = await actor.handle_at("m", 2)
            assert latest is not None and latest.version == 2 and latest.stm is not None
            assert torch.equal(latest.stm[2], initial + 2)
            assert await actor.handle_at("m", 1) is None  # older versions died with the old actor
            assert await actor.handle_at("m", 3) is None  # a version that does not exist yet
            # a memory never written: version 0 is the initial STM
            fresh = await actor.handle_at("new", 0)
            assert fresh is not None and fresh.version == 0 and torch.equal(fresh.stm[2], initial)
            assert await actor.handle_at("new", 1) is None
        finally:
            await actor.close()

    asyncio.run(first_life())
    asyncio.run(after_restart())


def test_handle_at_serves_recent_versions_and_forgets_old_ones(fake_put, initial):
    async def run() -> None:
        actor = STMStoreActorImpl("memory://", initial)
        actor.HISTORY = 3
        version = 0
        for i in range(5):
            version = (await actor.commit("m", version, initial + i, f"q{i}")).version
        kept = [v for v in range(6) if await actor.handle_at("m", v) is not None]
        assert kept == [3, 4, 5]
        assert torch.equal((await actor.handle_at("m", 4)).stm[2], initial + 3)

    asyncio.run(run())


def test_memories_never_written_share_one_initial_object_and_token(fake_put, initial):
    async def run() -> None:
        actor = STMStoreActorImpl("memory://", initial)
        a, b = await actor.handle("a"), await actor.handle("b")
        assert (a.memory_id, a.version, b.memory_id, b.version) == ("a", 0, "b", 0)
        assert a.stm is b.stm and a.token == b.token  # one put, one projection in the decoder
        assert torch.equal(a.stm[2], initial)
        assert await actor.handle_at("b", 0) == b
        written = await actor.commit("a", 0, initial + 1, "q1")  # a written version is its own object
        assert written.version == 1 and written.token != a.token and written.stm is not a.stm
        assert (await actor.handle("b")).token == a.token

    asyncio.run(run())

"""Memory stays bounded with the number of memories: the STM registry caches at most MAX_CACHED latest
versions (and MAX_CACHED_BYTES of them), and the STM store actor keeps at most MAX_KEPT versions (and
MAX_KEPT_BYTES) in Ray's object store."""

from __future__ import annotations

import asyncio

import pytest
import torch

from reactor_rt.actors.stm_store import STMRegistry, STMStoreActorImpl
from reactor_rt.store import MemorySTMStore


def test_the_registry_cache_is_bounded_and_stays_correct():
    store = MemorySTMStore()
    registry = STMRegistry(store, torch.zeros(2, 4, 8))
    registry.MAX_CACHED = 5
    for i in range(20):
        registry.commit(f"m{i}", 0, torch.full((2, 4, 8), float(i)), f"i{i}")
    assert len(registry._current) == 5
    for i in range(20):  # evicted memories are read back from the store, unchanged
        version, stm = registry.load(f"m{i}")
        assert version == 1 and torch.equal(stm, torch.full((2, 4, 8), float(i)))
    assert len(registry._current) == 5


def test_the_registry_cache_is_bounded_in_bytes_too():
    """A count alone let a large model's cache grow to gigabytes (4096 STMs of ~0.8 MB for micro)."""
    registry = STMRegistry(MemorySTMStore(), torch.zeros(2, 4, 8))  # 256 bytes an STM
    registry.MAX_CACHED_BYTES = 3 * 256 + 100
    for i in range(10):
        registry.commit(f"m{i}", 0, torch.full((2, 4, 8), float(i)), f"i{i}")
    assert list(registry._current) == ["m7", "m8", "m9"]


@pytest.mark.ray
def test_the_stm_store_actor_keeps_a_bounded_number_of_versions(ray_local):
    actor = STMStoreActorImpl("memory://", torch.zeros(2, 4, 8))
    actor.MAX_KEPT = 12

    async def run() -> None:
        for step in range(3):
            for i in range(10):
                await actor.commit(f"m{i}", step, torch.full((2, 4, 8), float(step)), f"i{i}-{step}")
        kept = sum(len(h) for h in actor._handles.values())
        assert kept == actor._kept <= 12
        assert await actor.handle_at("m9", 3) is not None  # the newest versions of the busiest memories stay
        assert await actor.handle_at("m0", 1) is None  # the oldest are gone: feedback on them is refused
        assert (await actor.handle("m0")).version == 3  # and the latest is always served from the store

    asyncio.run(run())


@pytest.mark.ray
def test_the_stm_store_actor_bounds_the_kept_versions_in_bytes_too(ray_local):
    actor = STMStoreActorImpl("memory://", torch.zeros(2, 4, 8))
    actor.MAX_KEPT_BYTES = 5 * 256  # five STMs of 256 bytes

    async def run() -> None:
        for i in range(10):
            await actor.commit(f"m{i}", 0, torch.full((2, 4, 8), float(i)), f"i{i}")
        assert actor._kept == sum(len(h) for h in actor._handles.values()) == 5

    asyncio.run(run())

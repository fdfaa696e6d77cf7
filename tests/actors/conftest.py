"""Fixtures for the actor tests: a small random model with nudged weights, an in-process conductor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import torch

from reactor_rt.actors.conductor import Conductor, ConductorConfig
from reactor_rt.actors.engine import LocalEngine
from reactor_rt.events.bus import InProcessBus
from reactor_rt.model import ReactiveTransformer, RxTConfig
from reactor_rt.store import MemorySTMStore


def make_model(seed: int = 0, **changes: object) -> ReactiveTransformer:
    """The tiny preset with every weight nudged (no zero-initialised branch hides a path); greedy."""
    base = RxTConfig.preset("tiny").model_dump()
    base.update(changes)
    torch.manual_seed(seed)
    model = ReactiveTransformer(RxTConfig(**base)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def model() -> ReactiveTransformer:
    return make_model()


@pytest.fixture
def make_conductor(model: ReactiveTransformer) -> Callable[..., AsyncIterator[Conductor]]:
    """``async with make_conductor(max_queue=...) as conductor`` — in-process bus, engine and store."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def build(**config: object) -> AsyncIterator[Conductor]:
        bus = InProcessBus()
        engine = LocalEngine(model, MemorySTMStore())
        conductor = Conductor(bus, engine, model.tokenizer, model.config, ConductorConfig(**config))
        await conductor.start()
        try:
            yield conductor
        finally:
            await conductor.stop()
            await bus.close()

    return build

"""Fixtures for the actor tests: a small random model with nudged weights, an in-process conductor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest
import torch

from reactor_rt.actors.conductor import Conductor, ConductorConfig
from reactor_rt.actors.engine import LocalEngine
from reactor_rt.events import Event, Query
from reactor_rt.events.bus import InProcessBus
from reactor_rt.events.log import EventLog
from reactor_rt.model import ReactiveTransformer, RxTConfig
from reactor_rt.store import MemorySTMStore


def make_model(seed: int = 0, *, text_only: bool = False, **changes: object) -> ReactiveTransformer:
    """The tiny preset with every weight nudged (no zero-initialised branch hides a path), answering in bytes."""
    base = RxTConfig.preset("tiny").model_dump()
    base.update(changes)
    torch.manual_seed(seed)
    model = ReactiveTransformer(RxTConfig(**base)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        if text_only:
            # an untrained model's argmax is often a special token ([A] again and again): an empty
            # answer. Silence everything but the bytes in the tied head, so answers always have text to
            # stream (and run to their token budget: [EOS] handling is the model tests' business).
            tok = model.tokenizer
            silent = list(tok.special_ids) + list(range(tok.vocab_size, model.config.vocab_size))
            model.embedding.weight[silent] = 0.0
    return model


@pytest.fixture(scope="session")
def model() -> ReactiveTransformer:
    return make_model()


@pytest.fixture(scope="session")
def text_model() -> ReactiveTransformer:
    """A model whose greedy answers are always non-empty text of the full token budget."""
    return make_model(text_only=True)


@pytest.fixture
def make_conductor(text_model: ReactiveTransformer) -> Callable[..., AsyncIterator[Conductor]]:
    """``async with make_conductor(max_queue=...) as conductor`` — in-process bus, engine and store."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def build(model: ReactiveTransformer | None = None, learner: object = None,
                    **config: object) -> AsyncIterator[Conductor]:
        model = model or text_model
        bus = InProcessBus(log=EventLog(":memory:"))  # a log, so subscribers can replay with after=
        engine = LocalEngine(model, MemorySTMStore(), learner=learner)
        conductor = Conductor(bus, engine, model.tokenizer, model.config, ConductorConfig(**config))
        await conductor.start()
        try:
            yield conductor
        finally:
            await conductor.stop()
            await bus.close()

    return build


async def _interact(conductor, subject: str, text: str, **data: object) -> list[Event]:
    """Publish a query and collect its interaction's events up to the memory update (or an error)."""
    query = Query(subject=subject, source="test", data={"text": text, **data})
    sub = await conductor.bus.subscribe(subject=subject)
    async with sub:
        await conductor.bus.publish(query)
        events: list[Event] = []
        with anyio.fail_after(60):
            async for ev in sub:
                if ev.interaction != query.interaction:
                    continue
                events.append(ev)
                if ev.type in ("rx.memory.updated", "rx.error"):
                    return events
    raise AssertionError("subscription ended early")


@pytest.fixture
def interact() -> Callable[..., Awaitable[list[Event]]]:
    """``await interact(conductor, subject, text, **data)``: publish a query and collect its
    interaction's events up to the memory update (or an error)."""
    return _interact


async def _until_final(sub) -> list[Event]:
    """Read ``sub`` (entered here) until a thought loop's final response; every event read."""
    events: list[Event] = []
    async with sub:
        with anyio.fail_after(60):
            async for ev in sub:
                events.append(ev)
                if ev.type == "rx.thought.response" and ev.data.final:
                    return events
    raise AssertionError("subscription ended before the loop's final response")


@pytest.fixture
def until_final() -> Callable[..., Awaitable[list[Event]]]:
    """``await until_final(subscription)``: its events up to a thought loop's final response."""
    return _until_final

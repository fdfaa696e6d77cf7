"""Fixtures for the reliability tests: a small model that always answers in text, an in-process runtime
(conductor + LocalEngine + bus with a durable log) over a chosen store, and a helper that runs one query
to its end with a deadline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import pytest
import torch

from reactor_rt.actors.conductor import Conductor, ConductorConfig
from reactor_rt.actors.engine import LocalEngine
from reactor_rt.events import Event, Query
from reactor_rt.events.bus import InProcessBus
from reactor_rt.events.log import EventLog
from reactor_rt.model import ReactiveTransformer, RxTConfig
from reactor_rt.store import MemorySTMStore, STMStore

TERMINAL = {"rx.memory.updated", "rx.error"}


def text_model(seed: int = 0) -> ReactiveTransformer:
    """The tiny preset with nudged weights, answering only in bytes (so answers are never empty)."""
    torch.manual_seed(seed)
    model = ReactiveTransformer(RxTConfig.preset("tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        tok = model.tokenizer
        silent = list(tok.special_ids) + list(range(tok.vocab_size, model.config.vocab_size))
        model.embedding.weight[silent] = 0.0
    return model


@pytest.fixture(scope="session")
def model() -> ReactiveTransformer:
    return text_model()


@dataclass
class Local:
    """An in-process runtime: what a test needs to drive it and to look behind it."""

    conductor: Conductor
    bus: InProcessBus
    engine: LocalEngine
    store: STMStore
    log: EventLog | None


@pytest.fixture
def local_runtime(model: ReactiveTransformer) -> Callable[..., AsyncIterator[Local]]:
    """``async with local_runtime(store=..., log_path=...) as rt`` — started, stopped on exit;
    ``log_path=None``: a bus without an event log."""

    @asynccontextmanager
    async def build(store: STMStore | None = None, log_path: str | None = ":memory:", recover: bool = False,
                    **config: object) -> AsyncIterator[Local]:
        store = store if store is not None else MemorySTMStore()
        log = None if log_path is None else EventLog(log_path)
        bus = InProcessBus(log=log)
        engine = LocalEngine(model, store)
        conductor = Conductor(bus, engine, model.tokenizer, model.config,
                              ConductorConfig(**{"max_new_tokens": 6, **config}))
        if recover:
            await conductor.recover()
        await conductor.start()
        try:
            yield Local(conductor, bus, engine, store, log)
        finally:
            await conductor.stop()
            await bus.close()

    return build


@pytest.fixture
def run_query() -> Callable[..., object]:
    """``await run_query(bus, query)``: see `_run_query`."""
    return _run_query


@pytest.fixture
def query() -> Callable[[str, str], Query]:
    """``query(subject, text)``: a client `Query`."""
    return _query


async def _run_query(bus: object, query: Query, timeout: float = 60) -> list[Event]:
    """Publish ``query`` and collect its interaction's events up to rx.memory.updated or rx.error."""
    interaction = query.interaction or query.id
    events: list[Event] = []
    with anyio.fail_after(timeout):
        sub = await bus.subscribe(subject=query.subject)  # type: ignore[attr-defined]
        try:
            await bus.publish(query)  # type: ignore[attr-defined]
            async for event in sub:
                if event.interaction != interaction:
                    continue
                events.append(event)
                if event.type in TERMINAL:
                    return events
        finally:
            await sub.aclose()
    raise AssertionError("the subscription ended before the interaction did")


def _query(subject: str, text: str) -> Query:
    return Query(subject=subject, source="test", data={"text": text})

"""Decorator-style handlers: @bus.subscriber() with typed arguments, run by bus.serve()."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from reactor_rt.events import Event, InProcessBus, MemoryUpdated, Query, ResponseDone
from reactor_rt.events.handlers import types_from_annotation
from reactor_rt.events.testing import example_event

pytestmark = pytest.mark.anyio


def test_types_come_from_the_annotation():
    def one(ev: ResponseDone) -> None: ...
    def union(ev: ResponseDone | MemoryUpdated) -> None: ...
    def anything(ev: Event) -> None: ...
    def untyped(ev) -> None: ...  # type: ignore[no-untyped-def]
    def none() -> None: ...

    assert types_from_annotation(one) == ("rx.response.done",)
    assert types_from_annotation(union) == ("rx.response.done", "rx.memory.updated")
    assert types_from_annotation(anything) is None
    assert types_from_annotation(untyped) is None
    with pytest.raises(TypeError):
        types_from_annotation(none)


async def test_handlers_receive_matching_events_and_survive_errors():
    bus = InProcessBus()
    done: list[ResponseDone] = []
    memory: list[Any] = []
    queries: list[Query] = []

    @bus.subscriber()
    async def on_done(ev: ResponseDone) -> None:
        done.append(ev)

    @bus.subscriber("rx.memory.", subject="alice")
    def on_memory(ev: Event) -> None:  # sync handlers work too
        memory.append(ev)

    @bus.subscriber()
    async def flaky(ev: Query) -> None:
        queries.append(ev)
        if len(queries) == 1:
            raise RuntimeError("boom")  # logged; the handler keeps running

    assert len(bus.handlers) == 3
    async with bus.serve():
        await bus.publish_many(
            [
                example_event("rx.query"),
                example_event("rx.response.done"),
                example_event("rx.memory.updated", subject="bob"),
                example_event("rx.memory.updated"),
                example_event("rx.query"),
            ]
        )
        with anyio.fail_after(5):
            while len(queries) < 2 or not done or not memory:
                await anyio.sleep(0.01)
    assert [e.type for e in done] == ["rx.response.done"]
    assert [(e.type, e.subject) for e in memory] == [("rx.memory.updated", "alice")]
    assert len(queries) == 2
    assert bus.subscriber_count == 0  # serve() unsubscribed on exit
    await bus.close()


async def test_an_error_in_the_serve_block_comes_out_as_it_was_raised():
    """`pytest.raises(QueryTooLongError)` or `except ReactorError` around a served block must work: the
    handlers' task group wrapped the block's own error in an ExceptionGroup."""
    from reactor_rt.errors import QueryTooLongError

    bus = InProcessBus()

    @bus.subscriber()
    async def on_query(ev: Query) -> None: ...

    with pytest.raises(QueryTooLongError) as caught:
        async with bus.serve():
            await bus.publish(example_event("rx.query"))
            raise QueryTooLongError("too long")
    assert type(caught.value) is QueryTooLongError
    assert bus.subscriber_count == 0
    await bus.close()


async def test_a_handler_that_falls_behind_ends_the_block_with_a_subscriber_overflow_error():
    from reactor_rt.errors import SubscriberOverflowError

    bus = InProcessBus(buffer=4, overflow_wait=0.01)

    @bus.subscriber()
    async def slow(ev: Query) -> None:
        await anyio.sleep(0.05)

    with pytest.raises(SubscriberOverflowError), anyio.fail_after(5):
        async with bus.serve():
            for _ in range(20):
                await bus.publish(example_event("rx.query"))
            await anyio.sleep(5)  # cancelled when the handler's subscription fails
    assert bus.subscriber_count == 0
    await bus.close()

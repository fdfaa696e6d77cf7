"""TestBus: records, wait_for, handlers served while open."""

from __future__ import annotations

import anyio
import pytest

from reactor_rt.events import EVENT_TYPES, ResponseDone
from reactor_rt.events.testing import EXAMPLE_DATA, TestBus, example_event

pytestmark = pytest.mark.anyio


def test_example_events_for_every_type():
    assert set(EXAMPLE_DATA) == set(EVENT_TYPES)
    assert all(example_event(t).type == t for t in EVENT_TYPES)
    assert example_event("rx.query", subject="bob", data={"text": "x"}).data.text == "x"


async def test_records_published_events_in_order():
    async with TestBus() as bus:
        await bus.publish(example_event("rx.query"))
        await bus.publish_many([example_event("rx.response.chunk"), example_event("rx.response.done")])
        await bus.publish(example_event("rx.query", subject="bob"))
        assert bus.published_types("alice") == ["rx.query", "rx.response.chunk", "rx.response.done"]
        assert [e.seq for e in bus.events(subject="alice")] == [1, 2, 3]
        assert [e.subject for e in bus.events("rx.query")] == ["alice", "bob"]
        assert len(bus.events(["rx.response."])) == 2
        bus.clear()
        assert bus.published == [] and await bus.last_seq("alice") == 3


async def test_wait_for_past_and_future_events():
    async with TestBus() as bus:
        await bus.publish(example_event("rx.query"))
        assert (await bus.wait_for("rx.query", timeout=1)).seq == 1

        async def later() -> None:
            await anyio.sleep(0.05)
            await bus.publish(example_event("rx.response.done", subject="bob"))
            await bus.publish(example_event("rx.response.done", data={**EXAMPLE_DATA["rx.response.done"], "tokens": 9}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(later)
            ev = await bus.wait_for("rx.response.done", subject="alice", where=lambda e: e.data.tokens == 9)
        assert ev.subject == "alice" and ev.seq == 2
        with pytest.raises(TimeoutError):
            await bus.wait_for("rx.error", timeout=0.05)


async def test_handlers_run_while_open():
    bus = TestBus()
    seen: list[ResponseDone] = []

    @bus.subscriber()
    async def on_done(ev: ResponseDone) -> None:
        seen.append(ev)
        await bus.publish(example_event("rx.memory.updating", subject=ev.subject))

    async with bus:
        await bus.publish(example_event("rx.response.done"))
        await bus.wait_for("rx.memory.updating", timeout=2)
    assert len(seen) == 1 and bus.published_types() == ["rx.response.done", "rx.memory.updating"]

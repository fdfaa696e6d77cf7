"""Conductor edge cases (in-process): a restarted conductor and a client's old seq, forks into a
stream that already exists, thought loops that fail."""

from __future__ import annotations

import anyio
import pytest

from reactor_rt.actors.conductor import Conductor, ConductorConfig
from reactor_rt.actors.engine import LocalEngine
from reactor_rt.events import Event, Query
from reactor_rt.events.bus import InProcessBus
from reactor_rt.events.log import EventLog
from reactor_rt.store import MemorySTMStore

pytestmark = pytest.mark.anyio


async def interact(conductor: Conductor, subject: str, text: str) -> list[Event]:
    """Publish a query; its interaction's events up to the memory update (or an error)."""
    query = Query(subject=subject, source="test", data={"text": text})
    sub = await conductor.bus.subscribe(subject=subject)
    async with sub:
        await conductor.bus.publish(query)
        events: list[Event] = []
        with anyio.fail_after(60):
            async for ev in sub:
                if ev.interaction == query.interaction:
                    events.append(ev)
                    if ev.type in ("rx.memory.updated", "rx.error"):
                        return events
    raise AssertionError("subscription ended early")


# -- a restarted conductor and a stream handle's old seq -------------------------------------------


@pytest.mark.parametrize("same_bus", [True, False], ids=["same-bus", "new-bus-same-log"])
async def test_a_restarted_conductor_treats_an_old_seq_as_caught_up(text_model, tmp_path, same_bus):
    """A client keeps the seq of its last query across a restart: memory/fork/import with it return
    (the query was taken in by the conductor before), and a query sent after the restart is still
    waited for."""
    model, store, log_path = text_model, MemorySTMStore(), str(tmp_path / "events.db")
    config = ConductorConfig(max_new_tokens=4)
    bus = InProcessBus(log=EventLog(log_path))
    first = Conductor(bus, LocalEngine(model, store), model.tokenizer, model.config, config)
    await first.start()
    events = await interact(first, "s", "remember this")
    old_seq = events[0].seq
    assert events[0].type == "rx.query" and old_seq > 0 and events[-1].data.version == 1
    await first.stop()
    if not same_bus:
        await bus.close()
        bus = InProcessBus(log=EventLog(log_path))
    second = Conductor(bus, LocalEngine(model, store), model.tokenizer, model.config, config)
    await second.start()
    try:
        with anyio.fail_after(20):
            version, stm = await second.memory("s", after_seq=old_seq)
            assert version == 1
            info = await second.fork("s", "s-copy", after_seq=old_seq)
            assert info.stm_version == 1
            assert await second.import_memory("s", stm, after_seq=old_seq) == 2
        # a query published now may still be on its way to the conductor: memory() waits for it
        query = await bus.publish(Query(subject="s", source="test", data={"text": "and this"}))
        with anyio.fail_after(60):
            version, _ = await second.memory("s", after_seq=query.seq)
        assert version == 3
    finally:
        await second.stop()
        await bus.close()

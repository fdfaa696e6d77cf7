"""Conductor edge cases (in-process): a restarted conductor and a client's old seq, forks into a
stream that already exists, thought loops that fail."""

from __future__ import annotations

import anyio
import pytest
import torch

from reactor_rt.actors.conductor import Conductor, ConductorConfig
from reactor_rt.actors.engine import LocalEngine
from reactor_rt.errors import EmptyQueryError, QueryTooLongError, ReactorError, StaleVersionError
from reactor_rt.events import Event, Query
from reactor_rt.events.bus import InProcessBus
from reactor_rt.events.log import EventLog
from reactor_rt.store import MemorySTMStore

pytestmark = pytest.mark.anyio


def conductor_over(bus: InProcessBus, model, store: MemorySTMStore) -> Conductor:
    """A conductor (as after a restart: a new one) over this bus and store."""
    return Conductor(bus, LocalEngine(model, store), model.tokenizer, model.config, ConductorConfig(max_new_tokens=4))


async def first_run(model, store: MemorySTMStore, log_path: str, interact) -> int:
    """A conductor's life before a restart: one interaction on stream "s" over a logged bus, then a
    clean stop; the seq of its query."""
    bus = InProcessBus(log=EventLog(log_path))
    first = conductor_over(bus, model, store)
    await first.start()
    seq = (await interact(first, "s", "remember this"))[0].seq
    await first.stop()
    await bus.close()
    return seq


# -- a restarted conductor and a stream handle's old seq -------------------------------------------


@pytest.mark.parametrize("same_bus", [True, False], ids=["same-bus", "new-bus-same-log"])
async def test_a_restarted_conductor_treats_an_old_seq_as_caught_up(text_model, tmp_path, same_bus, interact):
    """A client keeps the seq of its last query across a restart: memory/fork/import with it return
    (the query was taken in by the conductor before), and a query sent after the restart is still
    waited for."""
    model, store, log_path = text_model, MemorySTMStore(), str(tmp_path / "events.db")
    bus = InProcessBus(log=EventLog(log_path))
    first = conductor_over(bus, model, store)
    await first.start()
    events = await interact(first, "s", "remember this")
    old_seq = events[0].seq
    assert events[0].type == "rx.query" and old_seq > 0 and events[-1].data.version == 1
    await first.stop()
    if not same_bus:
        await bus.close()
        bus = InProcessBus(log=EventLog(log_path))
    second = conductor_over(bus, model, store)
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


async def test_a_restart_decodes_the_logged_queries_once(text_model, tmp_path, monkeypatch, interact):
    """`recover` decodes the log's queries; `start` takes each stream's last query seq from the log's
    index instead of decoding them all again (a start-up cost that grew with the log)."""
    model, store, log_path = text_model, MemorySTMStore(), str(tmp_path / "events.db")
    query_seq = await first_run(model, store, log_path, interact)
    log = EventLog(log_path)
    reads: list[list[str]] = []
    real = log.read_types
    monkeypatch.setattr(log, "read_types", lambda types, **kw: (reads.append(sorted(types)), real(types, **kw))[1])
    bus = InProcessBus(log=log)
    second = conductor_over(bus, model, store)
    try:
        await second.recover()
        await second.start()
        assert sum("rx.query" in types for types in reads) == 1
        assert second._started_from == {"s": query_seq}
    finally:
        await second.stop()
        await bus.close()


async def test_an_old_seq_whose_query_was_pruned_does_not_hang(text_model, tmp_path, monkeypatch, interact):
    """The log kept under retention bounds lost the stream's last query before the restart: the
    conductor cannot know it took it in, and waits only a bounded time."""
    from reactor_rt.actors import conductor as conductor_module

    monkeypatch.setattr(conductor_module, "_CAUGHT_UP_TIMEOUT_S", 0.5)
    model, store, log_path = text_model, MemorySTMStore(), str(tmp_path / "events.db")
    old_seq = await first_run(model, store, log_path, interact)
    with EventLog(log_path, max_rows=1) as pruned:
        pruned.prune()  # only rx.memory.updated is left
    bus = InProcessBus(log=EventLog(log_path))
    second = conductor_over(bus, model, store)
    await second.start()
    try:
        with anyio.fail_after(20):
            version, _ = await second.memory("s", after_seq=old_seq)
        assert version == 1
    finally:
        await second.stop()
        await bus.close()


# -- fork into a stream that already exists --------------------------------------------------------


async def test_fork_into_an_open_stream_serves_the_forked_memory(make_conductor, interact):
    async with make_conductor(max_new_tokens=4) as conductor:
        await conductor.open_stream("copy")  # opened (version 0) before the fork
        await interact(conductor, "src", "remember this")
        info = await conductor.fork("src", "copy")
        assert info.memory_id == "copy" and info.stm_version == 1
        events = await interact(conductor, "copy", "what was that?")
        done = next(e for e in events if e.type == "rx.response.done")
        assert done.data.stm_version == 1  # answered from the fork, not from the initial STM
        assert events[-1].type == "rx.memory.updated" and events[-1].data.version == 2


async def test_fork_into_a_stream_of_another_memory_is_refused_before_any_write(make_conductor, interact):
    async with make_conductor(max_new_tokens=4) as conductor:
        await conductor.open_stream("member", memory="team")
        await interact(conductor, "src", "remember this")
        with pytest.raises(StaleVersionError, match="member"):
            await conductor.fork("src", "member")
        assert (await conductor.engine.handle("member")).version == 0  # no orphan memory written
        assert (await conductor.open_stream("member")).memory_id == "team"


async def test_fork_into_a_memory_with_versions_is_refused(make_conductor, interact):
    async with make_conductor(max_new_tokens=4) as conductor:
        await interact(conductor, "src", "remember this")
        await interact(conductor, "src", "and this")
        await interact(conductor, "copy", "something else")
        before = (await conductor.memory("copy"))[1]
        with pytest.raises(StaleVersionError):
            await conductor.fork("src", "copy")
        version, after = await conductor.memory("copy")
        assert version == 1
        torch.testing.assert_close(after, before)
        events = await interact(conductor, "copy", "still mine?")  # the lane still serves its own memory
        assert events[-1].type == "rx.memory.updated" and events[-1].data.version == 2


# -- thought loops that fail -----------------------------------------------------------------------


async def test_think_rejects_a_seed_over_the_query_limit(make_conductor, text_model):
    long_seed = "x" * (text_model.config.max_query_tokens + 10)
    async with make_conductor(max_new_tokens=4) as conductor:
        with pytest.raises(QueryTooLongError):
            await conductor.think("t", long_seed, 2)
        with pytest.raises(EmptyQueryError):
            await conductor.think("t", "   ", 2)
        assert "t" not in conductor._loops
        with anyio.fail_after(20):  # nothing was queued for the stream
            version, _ = await conductor.memory("t")
        assert version == 0


async def think_until_final(conductor: Conductor, subject: str, budget: int, until_final) -> tuple[str, list[Event]]:
    """Start a thought loop; its thought events and errors up to the final response (``until_final``:
    the fixture)."""
    sub = await conductor.bus.subscribe(subject=subject, types={"rx.thought.", "rx.error"})
    loop_id = await conductor.think(subject, "Let me think.", budget)
    return loop_id, await until_final(sub)


async def test_a_failed_step_ends_the_loop_with_a_final_response(make_conductor, until_final):
    async with make_conductor(max_new_tokens=4) as conductor:
        await conductor.open_stream("f")
        real_update = conductor.engine.update
        calls = 0

        async def update(*args: object, **kwargs: object):
            nonlocal calls
            calls += 1
            if calls == 2:
                raise ReactorError("the memory updater broke")
            return await real_update(*args, **kwargs)

        conductor.engine.update = update
        loop_id, events = await think_until_final(conductor, "f", 5, until_final)
        types = [e.type for e in events]
        assert types == ["rx.thought.query", "rx.thought.response", "rx.thought.query", "rx.error",
                         "rx.thought.response"]
        final = events[-1]
        assert final.data.loop == loop_id and final.data.reason == "error"
        assert final.data.step == 1 and final.data.state.used_steps == 1
        assert final.interaction == events[-2].interaction == events[-3].interaction
        with anyio.fail_after(10):
            while "f" in conductor._loops:
                await anyio.sleep(0.01)


async def test_a_step_that_cannot_be_queued_ends_the_loop_with_a_final_response(make_conductor, text_model, until_final):
    """A response too long to be the next query (over the query limit) ends the loop with rx.error and a
    final response."""
    async with make_conductor(max_new_tokens=4) as conductor:
        await conductor.open_stream("g")
        limit = text_model.config.max_query_tokens
        real_generate = conductor.engine.generate

        async def generate(request):  # a long first answer, as a model could give
            async for chunk in real_generate(request):
                yield chunk
            yield text_model.tokenizer.encode("y" * (limit + 10))

        conductor.engine.generate = generate
        loop_id, events = await think_until_final(conductor, "g", 3, until_final)
        assert [e.type for e in events] == ["rx.thought.query", "rx.thought.response", "rx.error",
                                            "rx.thought.response"]
        assert events[2].data.code == "query_too_long"
        assert events[-1].data.loop == loop_id and events[-1].data.reason == "error"


@pytest.mark.parametrize("call", ["memory", "fork", "import_memory"])
async def test_a_query_published_by_anyone_is_waited_for(make_conductor, call):
    """memory()/fork()/import_memory() wait for every query already published on the stream, not
    only the caller's own (an agent may publish queries straight on the bus, then ask for the STM)."""
    async with make_conductor(max_new_tokens=4) as conductor:
        await conductor.open_stream("m")
        await conductor.bus.publish(Query(subject="m", source="agent", data={"text": "remember this"}))
        if call == "memory":
            version, _ = await conductor.memory("m")
        elif call == "fork":
            version = (await conductor.fork("m", "copy")).stm_version
        else:
            version = await conductor.import_memory("m", conductor_stm(conductor)) - 1
        assert version == 1  # the published query's update came first


def conductor_stm(conductor: Conductor) -> torch.Tensor:
    """A valid STM for the conductor's model (zeros)."""
    cfg = conductor.model_config
    return torch.zeros(cfg.layers, cfg.stm_slots, cfg.dim)


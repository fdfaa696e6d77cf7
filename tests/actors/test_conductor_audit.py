"""Conductor audit findings (in-process): an untyped failure taking a query in, a thought loop on a
closed stream, `Chat N:` numbers across a restart."""

from __future__ import annotations

import anyio
import pytest

from reactor_rt.actors.conductor import Conductor, ConductorConfig
from reactor_rt.actors.engine import LocalEngine
from reactor_rt.events import Query
from reactor_rt.events.bus import InProcessBus
from reactor_rt.events.log import EventLog
from reactor_rt.store import MemorySTMStore

pytestmark = pytest.mark.anyio


async def test_an_untyped_failure_taking_a_query_in_is_an_rx_error_and_the_query_may_be_resent(make_conductor,
                                                                                                 interact):
    """Opening the query's stream fails with a non-ReactorError (the store's disk, a bug): the asker gets
    rx.error (it waited for good: the failure was only logged), and the same query can be sent again."""
    async with make_conductor(max_new_tokens=4) as conductor:
        real = conductor.engine.handle
        broken = True

        async def handle(memory_id: str):  # type: ignore[no-untyped-def]
            if broken:
                raise OSError("disk I/O error")
            return await real(memory_id)

        conductor.engine.handle = handle
        query = Query(subject="d", source="t", data={"text": "hello"})
        sub = await conductor.bus.subscribe(subject="d", types={"rx.error", "rx.memory.updated"})
        async with sub:
            await conductor.bus.publish(query)
            with anyio.fail_after(10):
                error = await sub.__anext__()
            assert error.type == "rx.error" and error.interaction == query.interaction
            assert error.data.code == "internal" and "disk I/O error" in error.data.message
            broken = False
            await conductor.bus.publish(query)  # the same interaction id: not taken as a duplicate
            with anyio.fail_after(60):
                updated = await sub.__anext__()
            assert updated.type == "rx.memory.updated" and updated.interaction == query.interaction


async def test_closing_a_stream_ends_its_thought_loop(make_conductor, text_model):
    """A loop's steps are queries on its stream: once the stream is closed, the loop ends (final
    response, reason "closed") instead of thinking on a closed stream until its budget runs out."""
    async with make_conductor(max_new_tokens=4) as conductor:
        await conductor.open_stream("t")

        async def generate(request):  # type: ignore[no-untyped-def]  # never empty, never a stop
            yield text_model.tokenizer.encode("more")

        conductor.engine.generate = generate
        sub = await conductor.bus.subscribe(subject="t", types={"rx.thought.response"})
        loop_id = await conductor.think("t", "Let me think.", None)  # no budget: until stopped
        responses = []
        async with sub:
            with anyio.fail_after(60):
                async for ev in sub:
                    responses.append(ev)
                    if len(responses) == 1:
                        await conductor.close_stream("t")
                    if ev.data.final or len(responses) > 4:
                        break
        final = responses[-1]
        assert final.data.final and final.data.loop == loop_id and final.data.reason == "closed"
        assert len(responses) <= 2  # the step in progress (or already queued) at the close, no more
        assert await conductor.stop_thinking("t") is False


async def test_chat_numbers_survive_a_restart(text_model, tmp_path):
    """Streams sharing a memory keep their `Chat N:` number across a restart, whatever order they are
    reopened in: the STM already holds what each wrote under its number."""
    store, log_path = MemorySTMStore(), str(tmp_path / "events.db")

    async def started() -> tuple[Conductor, InProcessBus]:
        bus = InProcessBus(log=EventLog(log_path))
        conductor = Conductor(bus, LocalEngine(text_model, store), text_model.tokenizer, text_model.config,
                              ConductorConfig(max_new_tokens=4))
        await conductor.start()
        return conductor, bus

    conductor, bus = await started()
    owner = await conductor.open_stream("team")
    a = await conductor.open_stream("chat-a", memory="team")
    b = await conductor.open_stream("chat-b", memory="team")
    assert (owner.chat, a.chat, b.chat) == (None, 2, 3)
    await conductor.stop()
    await bus.close()

    conductor, bus = await started()
    try:
        assert (await conductor.open_stream("chat-b")).chat == 3  # reopened first, still Chat 3
        assert (await conductor.open_stream("chat-a")).chat == 2
        assert (await conductor.open_stream("chat-c", memory="team")).chat == 4  # a new one comes after
        job = conductor._job(Query(subject="chat-b", source="t", data={"text": "hi"}), conductor._streams["chat-b"])
        assert job.text == "Chat 3: hi"
    finally:
        await conductor.stop()
        await bus.close()


async def test_a_failing_stop_predicate_ends_the_loop_without_an_error_after_the_update(make_conductor, until_final):
    """The caller's stop predicate raises: the step's interaction still ends with rx.memory.updated (an
    rx.error came after it, breaking the per-interaction order); the loop ends with rx.error under
    its loop id and a final response, reason "error"."""
    async with make_conductor(max_new_tokens=4) as conductor:
        await conductor.open_stream("p")

        def stop(answer: str) -> bool:
            raise ValueError("a bad stop rule")

        sub = await conductor.bus.subscribe(subject="p")
        loop_id = await conductor.think("p", "Let me think.", 3, stop=stop)
        events = await until_final(sub)
        step = events[-1].interaction
        step_types = [e.type for e in events if e.interaction == step]
        assert step_types[-2:] == ["rx.memory.updated", "rx.thought.response"] and "rx.error" not in step_types
        (error,) = [e for e in events if e.type == "rx.error"]
        assert error.interaction == loop_id and "a bad stop rule" in error.data.message
        assert events[-1].data.reason == "error" and events[-1].data.step == 1
        with anyio.fail_after(10):  # the loop is gone; the stream serves on
            while "p" in conductor._loops:
                await anyio.sleep(0.01)


async def test_a_rejected_query_does_not_end_a_pause_on_query_loop(make_conductor, text_model, until_final):
    """pause_on_query ends the loop so an external query is answered: a query rejected at once (empty)
    is not, and must leave the loop running."""
    async with make_conductor(max_new_tokens=4) as conductor:
        await conductor.open_stream("j")

        async def generate(request):  # type: ignore[no-untyped-def]  # never empty, never a stop
            yield text_model.tokenizer.encode("more")

        conductor.engine.generate = generate
        sub = await conductor.bus.subscribe(subject="j", types={"rx.thought.response", "rx.error"})
        await conductor.think("j", "Let me think.", 3, pause_on_query=True)
        await conductor.bus.publish(Query(subject="j", source="user", data={"text": "   "}))
        events = await until_final(sub)
        assert events[0].type == "rx.error" and events[0].data.code == "empty_query"
        assert events[-1].data.reason == "steps" and events[-1].data.step == 3


async def test_a_closed_stream_stays_closed_across_a_restart(text_model, tmp_path, interact):
    """The log holds rx.stream.closed: after a restart, a query on the stream is still refused
    (`stream_closed`; it reopened the stream silently), until the stream is opened again."""
    store, log_path = MemorySTMStore(), str(tmp_path / "events.db")

    def over(bus: InProcessBus) -> Conductor:
        return Conductor(bus, LocalEngine(text_model, store), text_model.tokenizer, text_model.config,
                         ConductorConfig(max_new_tokens=4))

    bus = InProcessBus(log=EventLog(log_path))
    first = over(bus)
    await first.start()
    await first.open_stream("c", memory="team")
    await first.close_stream("c")
    await first.stop()
    await bus.close()

    bus = InProcessBus(log=EventLog(log_path))
    second = over(bus)
    await second.start()
    try:
        events = await interact(second, "c", "hello again")
        assert events[-1].type == "rx.error" and events[-1].data.code == "stream_closed"
        info = await second.open_stream("c")  # reopening is explicit; the memory binding is kept
        assert info.memory_id == "team" and info.chat == 1
        assert (await interact(second, "c", "hello again"))[-1].type == "rx.memory.updated"
    finally:
        await second.stop()
        await bus.close()


async def test_a_loop_resumed_on_a_stream_closed_before_the_restart_ends_without_a_step(text_model, tmp_path):
    """A resumable loop whose stream was closed (its step in progress cut short by the stop): resumed
    after the restart, it ends at once (final response, reason "closed") instead of thinking on the
    closed stream to the end of its budget."""
    store, log_path = MemorySTMStore(), str(tmp_path / "events.db")

    async def build() -> Conductor:
        conductor = Conductor(InProcessBus(log=EventLog(log_path)), LocalEngine(text_model, store),
                              text_model.tokenizer, text_model.config, ConductorConfig(max_new_tokens=4))
        await conductor.start()
        return conductor

    first = await build()
    await first.open_stream("r")
    sub = await first.bus.subscribe(types={"rx.thought.response"}, subject="r")
    loop_id = await first.think("r", "remember to resume", 6, resume=True)
    async with sub:
        with anyio.fail_after(60):
            await sub.__anext__()  # one step done
    await first.close_stream("r")
    await first.stop()  # "crash" before the loop saw the close
    await first.bus.close()

    second = await build()
    try:
        logged = await second.bus.replay("r", after=0, types={"rx.thought."})
        last_step = max(e.data.step for e in logged if e.type == "rx.thought.response")
        version = (await second.memory("r"))[0]
        after = await second.bus.last_seq("r")
        assert await second.resume_loops(logged) == [loop_id]
        with anyio.fail_after(30):
            while "r" in second._loops:
                await anyio.sleep(0.01)
        new = await second.bus.replay("r", after=after)
        assert [e.type for e in new] == ["rx.thought.response"]
        assert new[0].data.final and new[0].data.reason == "closed" and new[0].data.step == last_step
        assert (await second.memory("r"))[0] == version  # no step ran after the restart
    finally:
        await second.stop()
        await second.bus.close()


async def test_a_resumable_loop_with_a_stop_predicate_is_refused(make_conductor):
    """A resumed loop is rebuilt from its logged state, which cannot hold a predicate: it came back
    without its stop rule (with no budget: thinking for good). Refused up front instead."""
    from reactor_rt.errors import ConfigError

    async with make_conductor(max_new_tokens=4) as conductor:
        with pytest.raises(ConfigError, match="predicate"):
            await conductor.think("p", "Let me think.", None, stop=lambda answer: "done" in answer, resume=True)
        assert "p" not in conductor._loops


@pytest.mark.parametrize("field", ["max_queue", "max_new_tokens"])
def test_limits_below_one_are_a_config_error(field):
    """``asyncio.Queue(0)`` is unbounded: ``max_queue=0`` silently lifted the bound."""
    from reactor_rt.errors import ConfigError

    with pytest.raises(ConfigError, match=field):
        ConductorConfig(**{field: 0})

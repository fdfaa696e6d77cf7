"""Thought loops in the conductor (in-process): budgets, preemption by external queries, stop, resume."""

from __future__ import annotations

import anyio
import pytest

from reactor_rt.actors.conductor import Conductor, ConductorConfig
from reactor_rt.actors.engine import LocalEngine
from reactor_rt.actors.thoughts import Budget, ThoughtLoop
from reactor_rt.errors import ConfigError, ReactorError
from reactor_rt.events import Event, Query
from reactor_rt.events.bus import InProcessBus
from reactor_rt.events.log import EventLog
from reactor_rt.store import MemorySTMStore

pytestmark = pytest.mark.anyio


async def loop_events(conductor, stream: str, loop_id: str) -> list[Event]:
    events = []
    sub = await conductor.bus.subscribe(subject=stream, after=0)
    async with sub:
        with anyio.fail_after(120):
            async for ev in sub:
                events.append(ev)
                if ev.type == "rx.thought.response" and ev.data.loop == loop_id and ev.data.final:
                    return events
    raise AssertionError("no final response")


async def test_a_loop_with_budget_n_runs_exactly_n_steps(make_conductor):
    async with make_conductor(max_new_tokens=6) as conductor:
        await conductor.open_stream("t")
        loop_id = await conductor.think("t", "Let me think about memory.", 3)
        events = await loop_events(conductor, "t", loop_id)
        await anyio.sleep(0.2)
        assert "t" not in conductor._loops  # the loop has ended
        version, _ = await conductor.memory("t")
    queries = [e for e in events if e.type == "rx.thought.query"]
    responses = [e for e in events if e.type == "rx.thought.response"]
    assert [e.data.step for e in queries] == [1, 2, 3] == [e.data.step for e in responses]
    assert [e.data.final for e in responses] == [False, False, True] and responses[-1].data.reason == "steps"
    assert queries[0].data.text == "Let me think about memory."
    for prev, nxt in zip(responses, queries[1:], strict=False):
        assert nxt.data.text == prev.data.text  # the internal response is the next internal query
    assert version == 3  # every step updated the memory
    per_step = [e.type for e in events if e.interaction == queries[1].interaction]
    assert per_step[0] == "rx.thought.query" and per_step[-2:] == ["rx.memory.updated", "rx.thought.response"]


async def test_an_external_query_is_answered_before_the_next_step(make_conductor):
    async with make_conductor(max_new_tokens=6) as conductor:
        await conductor.open_stream("p")
        sub = await conductor.bus.subscribe(types={"rx.thought.query"}, subject="p")
        loop_id = await conductor.think("p", "thinking...", 3)
        async with sub:
            with anyio.fail_after(60):
                await sub.__anext__()  # step 1 is running
        external = Query(subject="p", source="user", data={"text": "Are you there?"})
        await conductor.bus.publish(external)
        events = await loop_events(conductor, "p", loop_id)
    order = [(e.type, e.interaction) for e in events if e.type in ("rx.thought.query", "rx.response.done")]
    answered = order.index(("rx.response.done", external.interaction))
    steps_before = [t for t, i in order[:answered] if t == "rx.thought.query"]
    assert len(steps_before) == 1  # answered at the first step boundary
    assert sum(1 for t, _ in order if t == "rx.thought.query") == 3  # then the loop resumed


async def test_pause_on_query_ends_the_loop(make_conductor):
    async with make_conductor(max_new_tokens=6) as conductor:
        await conductor.open_stream("q")
        sub = await conductor.bus.subscribe(types={"rx.thought.query"}, subject="q")
        loop_id = await conductor.think("q", "thinking...", 10, pause_on_query=True)
        async with sub:
            with anyio.fail_after(60):
                await sub.__anext__()  # step 1 is running
        await conductor.bus.publish(Query(subject="q", source="user", data={"text": "stop and answer"}))
        events = await loop_events(conductor, "q", loop_id)
    final = events[-1]
    assert final.data.reason == "query" and final.data.step == 1


async def test_stop_thinking_and_stop_strings(make_conductor):
    async with make_conductor(max_new_tokens=4) as conductor:
        await conductor.open_stream("s")
        loop_id = await conductor.think("s", "go on forever")
        with pytest.raises(ReactorError, match="already thinking"):
            await conductor.think("s", "a second loop")
        assert await conductor.stop_thinking("s")
        events = await loop_events(conductor, "s", loop_id)
        assert events[-1].data.reason == "stopped"
        assert not await conductor.stop_thinking("s")
        await conductor.open_stream("s2")
        loop2 = await conductor.think("s2", "seed", 20, stop=lambda text: True)
        assert (await loop_events(conductor, "s2", loop2))[-1].data.reason == "stop"


async def test_token_budget(make_conductor):
    async with make_conductor(max_new_tokens=5) as conductor:
        await conductor.open_stream("k")
        loop_id = await conductor.think("k", "seed", Budget(tokens=12))
        events = await loop_events(conductor, "k", loop_id)
    done = [e for e in events if e.type == "rx.response.done"]
    assert sum(e.data.tokens for e in done) <= 12
    assert events[-1].data.reason in ("tokens", "empty")


async def test_many_streams_think_at_once(make_conductor):
    async with make_conductor(max_new_tokens=4) as conductor:
        ids = {}
        for i in range(4):
            await conductor.open_stream(f"m{i}")
            ids[f"m{i}"] = await conductor.think(f"m{i}", f"seed {i}", 2)
        for stream, loop_id in ids.items():
            events = await loop_events(conductor, stream, loop_id)
            assert sum(e.type == "rx.thought.response" for e in events) == 2


async def test_loops_resume_after_a_restart_only_when_asked(text_model, tmp_path):
    model = text_model
    store = MemorySTMStore()
    log_path = str(tmp_path / "events.db")

    async def build() -> Conductor:
        bus = InProcessBus(log=EventLog(log_path))
        conductor = Conductor(bus, LocalEngine(model, store), model.tokenizer, model.config,
                              ConductorConfig(max_new_tokens=4))
        await conductor.start()
        return conductor

    first = await build()
    await first.open_stream("r")
    await first.open_stream("n")
    keep = await first.think("r", "remember to resume", 4, resume=True)
    await first.think("n", "do not resume", 4)
    sub = await first.bus.subscribe(types={"rx.thought.response"}, subject="r")
    async with sub:
        with anyio.fail_after(60):
            async for _ in sub:
                break  # one step done: "crash" now
    await first.stop()
    await first.bus.close()

    second = await build()
    logged = EventLog(log_path)
    events = [e for subject in ("r", "n") for e in logged.read(subject, types={"rx.thought."})]
    logged.close()
    assert await second.resume_loops(events) == [keep]
    final = (await loop_events(second, "r", keep))[-1]
    assert final.data.final and final.data.step == 4 and final.data.reason == "steps"
    await second.stop()
    await second.bus.close()


def test_budgets_are_validated():
    assert Budget.of(3) == Budget(steps=3)
    with pytest.raises(ConfigError):
        Budget(steps=0)
    with pytest.raises(ConfigError):
        Budget.of("three")  # type: ignore[arg-type]
    loop = ThoughtLoop("s", "seed", Budget(steps=2), stop="DONE")
    assert loop.record("not yet", 3) is None
    assert loop.record("ok DONE", 3) == "steps"


async def test_a_step_whose_update_recovery_finished_is_not_run_again(text_model, tmp_path):
    """A crash after a step's answer and logged update (``rx.memory.updating``) but before its
    ``rx.memory.updated``: `recover` applies that update, so the resumed loop goes on from the step's
    answer (publishing the step's missing response) instead of running the step again (its query
    applied twice to the memory)."""
    import asyncio

    store, log_path = MemorySTMStore(), str(tmp_path / "events.db")

    def build() -> Conductor:
        return Conductor(InProcessBus(log=EventLog(log_path)), LocalEngine(text_model, store),
                         text_model.tokenizer, text_model.config, ConductorConfig(max_new_tokens=4))

    first = build()
    await first.start()
    await first.open_stream("r")
    real_update = first.engine.update
    updates = 0

    async def crash_in_the_second_update(*args):
        nonlocal updates
        updates += 1
        if updates == 2:
            await asyncio.Event().wait()  # "crashes" here: never returns
        return await real_update(*args)

    first.engine.update = crash_in_the_second_update
    sub = await first.bus.subscribe(types={"rx.memory.updating"}, subject="r")
    loop_id = await first.think("r", "remember to resume", 4, resume=True)
    async with sub:
        with anyio.fail_after(60):
            await sub.__anext__()
            await sub.__anext__()  # the second step's update is logged, and never finishes
    await first.stop()
    await first.bus.close()

    second = build()
    try:
        report = await second.recover()
        assert len(report["replayed"]) == 1
        await second.start()
        logged = await second.bus.replay("r", after=0, types={"rx.thought."})
        assert await second.resume_loops(logged) == [loop_id]
        events = await loop_events(second, "r", loop_id)
        responses = [e.data.step for e in events if e.type == "rx.thought.response"]
        queries = [e.data.step for e in events if e.type == "rx.thought.query"]
        assert responses == [1, 2, 3, 4] and queries == [1, 2, 3, 4]  # each step once
        assert events[-1].data.reason == "steps"
        assert (await second.memory("r"))[0] == 4  # four steps, four updates
    finally:
        await second.stop()
        await second.bus.close()

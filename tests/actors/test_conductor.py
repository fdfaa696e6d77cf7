"""The conductor without Ray: ordering, queues, errors, shared memories, over an in-process bus."""

from __future__ import annotations

import asyncio

import anyio
import pytest
import torch

from reactor_rt.events import Query

pytestmark = pytest.mark.anyio

ORDER = ["rx.query", "rx.response.chunk", "rx.response.done", "rx.memory.updating", "rx.memory.updated"]


def compress(types: list[str]) -> list[str]:
    out: list[str] = []
    for t in types:
        if not out or out[-1] != t:
            out.append(t)
    return out


async def test_one_interaction_emits_events_in_order(make_conductor, interact):
    async with make_conductor() as conductor:
        await conductor.open_stream("alice")  # else rx.stream.opened would take a seq in between
        events = await interact(conductor, "alice", "hello there")
    types = compress([e.type for e in events])
    assert types in (ORDER, [t for t in ORDER if t != "rx.response.chunk"])
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    done = next(e for e in events if e.type == "rx.response.done")
    chunks = "".join(e.data.text for e in events if e.type == "rx.response.chunk")
    assert done.data.text == chunks
    assert done.data.stm_version == 0
    assert events[-1].data.version == 1


async def test_answer_matches_direct_generation(make_conductor, text_model, interact):
    model = text_model
    """The conductor's answer is exactly the model's greedy generation from the same prompt and STM."""
    from reactor_rt.template import build_prompt

    async with make_conductor(max_new_tokens=16) as conductor:
        events = await interact(conductor, "s", "what is up?")
    done = next(e for e in events if e.type == "rx.response.done")
    prompt = torch.tensor(build_prompt(model.tokenizer, "what is up?"))[None]
    with torch.no_grad():
        out = model.generate(prompt, model.init_stm(1), max_new_tokens=16)[0].tolist()
    out = [t for t in out if t not in (model.tokenizer.pad_id,)]
    assert done.data.tokens == len(out)
    assert done.data.text == model.tokenizer.decode(out)


async def test_streams_keep_their_order_and_do_not_leak(make_conductor, interact):
    """8 streams x 5 turns sent together: each stream's turns run in order, and every stream's answers
    and STM equal those of the same stream run alone."""
    texts = {f"s{i}": [f"turn {t} of stream {i}" for t in range(5)] for i in range(8)}

    async def run(conductor, subject: str) -> list[str]:
        answers = []
        for text in texts[subject]:
            events = await interact(conductor, subject, text)
            assert compress([e.type for e in events])[-1] == "rx.memory.updated"
            answers.append(next(e for e in events if e.type == "rx.response.done").data.text)
        return answers

    together: dict[str, list[str]] = {}
    async with make_conductor(max_new_tokens=8) as conductor:
        async with anyio.create_task_group() as tg:
            for subject in texts:
                async def one(s: str = subject) -> None:
                    together[s] = await run(conductor, s)
                tg.start_soon(one)
        mem_together = {s: await conductor.memory(s) for s in texts}
    for subject in ("s0", "s5"):
        async with make_conductor(max_new_tokens=8) as conductor:
            alone = await run(conductor, subject)
            version, stm = await conductor.memory(subject)
        assert alone == together[subject]
        assert version == mem_together[subject][0] == 5
        torch.testing.assert_close(stm, mem_together[subject][1], atol=1e-5, rtol=1e-4)


async def test_query_during_update_is_queued_and_answered(make_conductor):
    async with make_conductor(max_new_tokens=4) as conductor:
        bus = conductor.bus
        sub = await bus.subscribe(subject="q", types={"rx.response.done", "rx.memory.updated"})
        async with sub:
            first = Query(subject="q", source="t", data={"text": "first"})
            second = Query(subject="q", source="t", data={"text": "second"})
            await bus.publish(first)
            await bus.publish(second)  # arrives while the first is answered / its memory updates
            seen = []
            with anyio.fail_after(60):
                async for ev in sub:
                    seen.append((ev.interaction, ev.type, getattr(ev.data, "stm_version", None)))
                    if len(seen) == 4:
                        break
    assert seen == [
        (first.interaction, "rx.response.done", 0),
        (first.interaction, "rx.memory.updated", None),
        (second.interaction, "rx.response.done", 1),  # read the STM the first update wrote
        (second.interaction, "rx.memory.updated", None),
    ]


async def test_full_queue_is_a_clear_error(make_conductor):
    async with make_conductor(max_queue=1, max_new_tokens=4) as conductor:
        sub = await conductor.bus.subscribe(subject="f", types={"rx.error", "rx.memory.updated"})
        async with sub:
            queries = [Query(subject="f", source="t", data={"text": f"q{i}"}) for i in range(4)]
            for q in queries:
                await conductor.bus.publish(q)
            outcomes = {}
            with anyio.fail_after(60):
                async for ev in sub:
                    outcomes[ev.interaction] = ev
                    if len(outcomes) == len(queries):
                        break
    errors = [e for e in outcomes.values() if e.type == "rx.error"]
    assert errors and all(e.data.code == "queue_full" for e in errors)
    assert any(e.type == "rx.memory.updated" for e in outcomes.values())  # the accepted ones still finish


@pytest.mark.parametrize(("text", "code"), [("   ", "empty_query"), ("x" * 5000, "query_too_long")])
async def test_bad_queries_are_errors_and_serving_goes_on(make_conductor, text, code, interact):
    async with make_conductor(max_new_tokens=4) as conductor:
        events = await interact(conductor, "b", text)
        assert [e.type for e in events][-1] == "rx.error"
        assert events[-1].data.code == code
        ok = await interact(conductor, "b", "hello")
        assert ok[-1].type == "rx.memory.updated"


async def test_closed_stream_rejects_queries(make_conductor, interact):
    async with make_conductor(max_new_tokens=4) as conductor:
        await conductor.open_stream("c")
        await conductor.close_stream("c")
        events = await interact(conductor, "c", "hi")
        assert events[-1].data.code == "stream_closed"
        await conductor.open_stream("c")  # reopening is explicit
        assert (await interact(conductor, "c", "hi"))[-1].type == "rx.memory.updated"


async def test_streams_sharing_a_memory_write_one_stm(make_conductor, interact):
    async with make_conductor(max_new_tokens=4) as conductor:
        one = await conductor.open_stream("chat-1", memory="team")
        two = await conductor.open_stream("chat-2", memory="team")
        assert (one.chat, two.chat) == (1, 2)
        a = await interact(conductor, "chat-1", "My name is Ann.")
        b = await interact(conductor, "chat-2", "What is my name?")
        done_b = next(e for e in b if e.type == "rx.response.done")
        assert done_b.data.stm_version == a[-1].data.version == 1  # chat-2 read what chat-1 wrote
        assert b[-1].data.memory == "team" and b[-1].data.version == 2
        assert (await conductor.memory("chat-1"))[0] == 2


async def test_duplicate_query_is_applied_once(make_conductor):
    async with make_conductor(max_new_tokens=4) as conductor:
        query = Query(subject="d", source="t", data={"text": "once"})
        await conductor.bus.publish(query)
        again = await conductor.bus.publish(query)  # redelivered: same interaction id
        version, _ = await conductor.memory("d", after_seq=again.seq)
        assert version == 1


async def test_fork_copies_the_memory(make_conductor, interact):
    async with make_conductor(max_new_tokens=4) as conductor:
        await interact(conductor, "src", "remember this")
        info = await conductor.fork("src", "copy")
        assert info.memory_id == "copy" and info.stm_version == 1
        torch.testing.assert_close((await conductor.memory("copy"))[1], (await conductor.memory("src"))[1])


async def test_memory_waits_and_thought_steps_do_not_take_the_queries_places(make_conductor, text_model):
    """The bound is on waiting queries: memory() calls queued behind a busy interaction and a thought
    step do not make an external query `queue_full`."""
    async with make_conductor(max_queue=1, max_new_tokens=4) as conductor:
        release = asyncio.Event()
        real_generate = conductor.engine.generate

        async def held(request):  # the first answer waits until released: everything else queues
            await release.wait()
            async for chunk in real_generate(request):
                yield chunk

        conductor.engine.generate = held
        await conductor.open_stream("m")
        sub = await conductor.bus.subscribe(subject="m", types={"rx.error", "rx.memory.updated"})
        first = await conductor.bus.publish(Query(subject="m", source="t", data={"text": "first"}))
        waits = [asyncio.ensure_future(conductor.memory("m")) for _ in range(3)]
        await conductor.think("m", "Let me think.", 1)
        await asyncio.sleep(0.1)  # the barriers and the thought step are queued behind the first query
        second = await conductor.bus.publish(Query(subject="m", source="t", data={"text": "second"}))
        outcomes = {}
        async with sub:
            await asyncio.sleep(0.1)
            release.set()
            with anyio.fail_after(60):
                async for ev in sub:
                    outcomes.setdefault(ev.interaction, ev)
                    if {first.interaction, second.interaction} <= outcomes.keys():
                        break
        assert outcomes[second.interaction].type == "rx.memory.updated", outcomes[second.interaction]
        await asyncio.gather(*waits)

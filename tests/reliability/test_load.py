"""Load: many streams at once, with thought loops and feedback mixed in: nothing lost, per-stream order
kept, no leakage between streams, memory bounded. A small in-process version runs by default; 64 streams
x 10 turns over Ray is `slow`."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import anyio
import pytest
import torch

from reactor_rt import Reactor
from reactor_rt.events import LearningFeedback

pytestmark = pytest.mark.anyio


def _turns(n: int) -> list[str]:
    return [f"turn {t}: tell me about item {t}" for t in range(n)]


def _check_log(events, sent: dict[str, list[str]], loops: set[str]) -> dict[str, int]:
    """Every query ended exactly once, in the order sent, on its own stream; returns the figures."""
    by_subject = defaultdict(list)
    for event in events:
        by_subject[event.subject].append(event)
    figures = {"sent": 0, "answered": 0, "errored": 0}
    for subject, interactions in sent.items():
        log = by_subject[subject]
        assert [e.seq for e in log] == sorted(e.seq for e in log) and len({e.seq for e in log}) == len(log)
        external = set(interactions)
        queries = [e.interaction for e in log if e.type == "rx.query"]
        assert queries == interactions, subject  # arrived in the order sent, nothing foreign
        answered = [e.interaction for e in log if e.type == "rx.response.done" and e.interaction in external]
        ended = [e.interaction for e in log if e.type in {"rx.memory.updated", "rx.error"} and e.interaction in external]
        assert answered == [i for i in interactions if i in answered]  # answered in order
        assert sorted(ended) == sorted(interactions), subject  # each query ended exactly once
        figures["sent"] += len(interactions)
        figures["answered"] += sum(1 for e in log if e.type == "rx.memory.updated" and e.interaction in external)
        figures["errored"] += sum(1 for e in log if e.type == "rx.error" and e.interaction in external)
        mine = external | {e.interaction for e in log if e.type.startswith("rx.thought.")}
        mine |= {e.interaction or e.id for e in log if e.type == "rx.learning.feedback"}
        assert all(e.interaction in mine for e in log if e.interaction and e.type != "rx.learning.feedback"), subject
    return figures


async def test_streams_with_thoughts_and_feedback_in_process(local_runtime, run_query, query):
    n_streams, n_turns = 12, 4
    turns = _turns(n_turns)
    async with local_runtime(max_new_tokens=4) as alone:
        solo = [(await run_query(alone.bus, query("solo", t)))[-3].data.text for t in turns]
        solo_stm = alone.store.load("solo").stm
    async with local_runtime(max_new_tokens=4, recent_interactions=16, remember_interactions=64) as rt:
        sent: dict[str, list[str]] = defaultdict(list)
        answers: dict[str, list[str]] = {}

        async def converse(sid: str) -> None:
            out = []
            for text in turns:
                q = query(sid, text)
                sent[sid].append(q.id)
                events = await run_query(rt.bus, q)
                assert events[-1].type == "rx.memory.updated", events[-1]
                out.append(next(e for e in events if e.type == "rx.response.done").data.text)
                if sid.endswith("3"):  # feedback on what was just served (learning is off: a typed refusal)
                    await rt.bus.publish(LearningFeedback(subject=sid, source="test",
                                                          data={"target": q.id, "reward": 1.0}))
            answers[sid] = out

        thinkers = [f"think-{i}" for i in range(3)]
        loops = {s: await rt.conductor.think(s, "Let me think.", 3) for s in thinkers}
        with anyio.fail_after(300):
            async with anyio.create_task_group() as tg:
                for i in range(n_streams):
                    tg.start_soon(converse, f"s{i}")
            while any(s in rt.conductor._loops for s in thinkers):
                await anyio.sleep(0.05)
        events = rt.log.read_types(None)
        figures = _check_log(events, {s: v for s, v in sent.items()}, set(loops.values()))
        assert figures["answered"] == figures["sent"] == n_streams * n_turns
        for sid, out in answers.items():  # no leakage: each stream answers as if it were alone
            assert out == solo, sid
            torch.testing.assert_close(rt.store.load(sid).stm, solo_stm, atol=1e-5, rtol=1e-4)
        for s in thinkers:  # each loop ran in order and ended (its budget, or an empty thought)
            responses = [e for e in events if e.subject == s and e.type == "rx.thought.response"]
            assert [e.data.step for e in responses] == list(range(1, len(responses) + 1)) and len(responses) <= 3
            assert responses[-1].data.final and responses[-1].data.reason in {"steps", "empty"}
        # bounded state: remembered ids, served interactions, queued work, kept STM versions
        conductor = rt.conductor
        assert len(conductor._seen) <= 64 and len(conductor._recent) <= 16
        assert all(lane.queue.empty() for lane in conductor._lanes.values())
        assert all(len(h) <= rt.engine.HISTORY for h in rt.engine._history.values())
        assert rt.bus.subscriber_count == 1  # only the conductor's own: every ask() unsubscribed


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
@pytest.mark.ray
async def test_64_streams_x_10_turns_with_thoughts_and_feedback_over_ray(ray_local, model, tmp_path):
    n_streams, n_turns = 64, 10
    turns = _turns(n_turns)
    store = f"sqlite:///{tmp_path}/stm.db"
    async with Reactor.start(model=model, store=store, namespace="rel-load", max_new_tokens=6,
                             decoder_capacity=64) as rx:
        solo_stream = await rx.stream("solo")
        solo = [await solo_stream.reply(t) for t in turns]
        solo_stm = await solo_stream.memory()
        stats = await rx._bus.actor.stats.remote()
        rss_before = _rss_mb(stats["pid"])
        sent: dict[str, list[str]] = defaultdict(list)
        answers: dict[str, list[str]] = {}

        async def converse(sid: str) -> None:
            stream = await rx.stream(sid)
            out = []
            for text in turns:
                events = [e async for e in stream.ask(text)]
                sent[sid].append(events[0].interaction)
                out.append(next(e for e in events if e.type == "rx.response.done").data.text)
                if sid.endswith("7") and len(out) == 2:
                    await stream.feedback(events[0].interaction, reward=1.0)
            answers[sid] = out

        thinkers = [await rx.stream(f"thinker-{i}") for i in range(4)]
        loops = [await s.think("Let me think about streams.", 5) for s in thinkers]
        with anyio.fail_after(1500):
            async with anyio.create_task_group() as tg:
                for i in range(n_streams):
                    tg.start_soon(converse, f"load-{i}")
            finals = await asyncio.gather(*(loop.wait() for loop in loops))
        assert all(f.data.final and f.data.reason in {"steps", "empty"} for f in finals)
        events = []
        for sid in sent:
            events += await rx._bus.replay(sid, after=0)
        figures = _check_log(events, dict(sent), {loop.id for loop in loops})
        print(f"\nload: {figures}, conductor RSS {rss_before:.0f} -> {_rss_mb(stats['pid']):.0f} MB")
        assert figures["answered"] == figures["sent"] == n_streams * n_turns
        for sid, out in answers.items():
            # streams whose feedback changed the weights answer differently afterwards; the rest as alone
            if not any(s.endswith("7") for s in [sid]):
                assert out[:2] == solo[:2], sid
            stream = await rx.stream(sid)
            mem = await stream.memory()
            assert stream.stm_version == n_turns
            if out == solo:
                torch.testing.assert_close(mem, solo_stm, atol=1e-4, rtol=1e-3)
        assert _rss_mb(stats["pid"]) - rss_before < 512  # bounded: no per-interaction growth to speak of
        assert (await rx._bus.actor.stats.remote())["subscribers"] <= 2

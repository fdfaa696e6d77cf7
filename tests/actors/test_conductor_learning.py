"""Feedback through the conductor (in-process, a recording learner): what the learner is given, and
feedback that is redelivered or fails."""

from __future__ import annotations

import anyio
import pytest
import torch

from reactor_rt.events import Event, LearningFeedback
from reactor_rt.learning import LearningResult

pytestmark = pytest.mark.anyio


class RecordingLearner:
    """Takes every example, "rejects" it (so no weights move), or raises ``fail`` when set."""

    weights_version = 0

    def __init__(self, fail: BaseException | None = None) -> None:
        self.examples: list = []
        self.fail = fail

    def apply(self, example):
        if self.fail is not None:
            raise self.fail
        self.examples.append(example)
        return LearningResult(weights_version=0, loss_before=float("nan"), loss_after=float("nan"),
                              accepted=False, reason="no_signal", detail="recorded")

    def weights_since(self, version):
        return version, None


async def feedback(conductor, subject: str, target: str, event: LearningFeedback | None = None) -> Event:
    """Publish feedback on ``target`` (or ``event`` as it is); the rx.error or rx.learning.applied it ends with."""
    sub = await conductor.bus.subscribe(subject=subject, types={"rx.error", "rx.learning.applied"})
    async with sub:
        await conductor.bus.publish(event or LearningFeedback(subject=subject, source="t",
                                                               data={"target": target, "reward": 1.0}))
        with anyio.fail_after(30):
            return await sub.__anext__()


async def test_the_learner_is_told_which_interaction_wrote_the_memory_the_answer_read(make_conductor, interact):
    """params "memory"/"all" train memory attention through the update that wrote the STM the answer
    read: the conductor must hand over that interaction and the STM before it (without it every such
    feedback was rejected as no_memory_path)."""
    learner = RecordingLearner()
    async with make_conductor(learner=learner, max_new_tokens=4) as conductor:
        first = await interact(conductor, "s", "the first question")
        second = await interact(conductor, "s", "the second question")
        done = [next(e for e in events if e.type == "rx.response.done") for events in (first, second)]
        await feedback(conductor, "s", done[0].interaction)
        await feedback(conductor, "s", done[1].interaction)
        stm0 = (await conductor.engine.stm_at("s", 0))
    assert learner.examples[0].source is None  # version 0 was written by no interaction
    source = learner.examples[1].source
    assert (source.query, source.answer) == ("the first question", done[0].data.text)
    assert torch.equal(source.stm_before, stm0)


async def test_redelivered_feedback_is_applied_once(make_conductor, interact):
    learner = RecordingLearner()
    async with make_conductor(learner=learner, max_new_tokens=4) as conductor:
        events = await interact(conductor, "d", "hello")
        done = next(e for e in events if e.type == "rx.response.done")
        event = LearningFeedback(subject="d", source="t", data={"target": done.interaction, "reward": 1.0})
        await feedback(conductor, "d", done.interaction, event)
        await conductor.bus.publish(event)  # the same event again (a client's retry)
        await feedback(conductor, "d", done.interaction)  # a new one: ends after the redelivered one
    assert len(learner.examples) == 2


async def test_a_learner_that_fails_answers_the_feedback_with_an_error(make_conductor, interact):
    """An unexpected failure of the update reached only the log: the sender waited for an answer."""
    async with make_conductor(learner=RecordingLearner(fail=RuntimeError("out of memory")), max_new_tokens=4) as conductor:
        events = await interact(conductor, "e", "hello")
        done = next(e for e in events if e.type == "rx.response.done")
        end = await feedback(conductor, "e", done.interaction)
    assert end.type == "rx.error" and "out of memory" in end.data.message


async def test_feedback_on_an_answer_cut_short_tells_the_learner_it_did_not_end(make_conductor, interact):
    """An answer stopped at its token limit never chose [EOS]: the learner must be told, or a reward
    reinforces an [EOS] the model never generated (teaching it to stop at the client's limit)."""
    learner = RecordingLearner()
    async with make_conductor(learner=learner, max_new_tokens=4) as conductor:  # answers run to 4 tokens
        events = await interact(conductor, "f", "hello")
        done = next(e for e in events if e.type == "rx.response.done")
        assert done.data.finish_reason == "length"
        await feedback(conductor, "f", done.interaction)
    assert [e.answer_ended for e in learner.examples] == [False]


async def test_streams_are_served_while_an_update_runs(make_conductor, interact):
    """The in-process engine ran the learner's update on the event loop: every stream waited for it."""
    import threading

    release = threading.Event()

    class SlowLearner(RecordingLearner):
        def apply(self, example):
            release.wait(30)  # an update that takes long
            return super().apply(example)

    learner = SlowLearner()
    async with make_conductor(learner=learner, max_new_tokens=4) as conductor:
        events = await interact(conductor, "slow", "hello")
        done = next(e for e in events if e.type == "rx.response.done")
        await conductor.bus.publish(LearningFeedback(subject="slow", source="t",
                                                     data={"target": done.interaction, "reward": 1.0}))
        with anyio.fail_after(20):
            other = await interact(conductor, "other", "meanwhile")  # while the update runs
        release.set()
    assert other[-1].type == "rx.memory.updated"

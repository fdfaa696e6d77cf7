"""Live learning through the conductor (in-process): feedback -> update -> swap between interactions."""

from __future__ import annotations

import copy

import anyio
import pytest
import torch

from reactor_rt.actors.learner import LearnerCore
from reactor_rt.events import Event, LearningFeedback, Query

pytestmark = pytest.mark.anyio


async def ask(conductor, subject: str, text: str) -> list[Event]:
    query = Query(subject=subject, source="test", data={"text": text, "max_new_tokens": 8})
    sub = await conductor.bus.subscribe(subject=subject)
    async with sub:
        await conductor.bus.publish(query)
        out = []
        with anyio.fail_after(60):
            async for ev in sub:
                if ev.interaction == query.interaction:
                    out.append(ev)
                    if ev.type in ("rx.memory.updated", "rx.error"):
                        return out
    raise AssertionError("no end")


async def feedback(conductor, subject: str, target: str, **data: object) -> Event:
    event = LearningFeedback(subject=subject, source="grader", data={"target": target, **data})
    sub = await conductor.bus.subscribe(subject=subject, types={"rx.learning.applied", "rx.error"})
    async with sub:
        await conductor.bus.publish(event)
        with anyio.fail_after(60):
            async for ev in sub:
                if ev.interaction == event.id:
                    return ev
    raise AssertionError("no answer to the feedback")


def done(events: list[Event]) -> Event:
    return next(e for e in events if e.type == "rx.response.done")


async def test_a_correction_becomes_the_answer(make_conductor, model, tmp_path):
    learner = LearnerCore(copy.deepcopy(model), save_dir=tmp_path / "weights")
    async with make_conductor(model=copy.deepcopy(model), learner=learner) as conductor:
        first = done(await ask(conductor, "a", "What is the capital of France?"))
        assert first.data.text != "Paris." and first.data.weights_version == 0
        losses = []
        for update in range(1, 5):
            applied = await feedback(conductor, "a", first.interaction, correction="Paris.")
            assert applied.type == "rx.learning.applied", applied.data
            assert applied.data.weights_version == update
            assert applied.data.loss_after < applied.data.loss_before
            losses.append(applied.data.loss_after)
            # a fresh stream reads the same initial STM the corrected answer read
            again = done(await ask(conductor, f"b{update}", "What is the capital of France?"))
            assert again.data.weights_version == update
            if again.data.text == "Paris.":
                break
        assert again.data.text == "Paris.", (losses, again.data.text)

    # a restart keeps what was learned: the learner reloads its weights and the serving model gets them
    reloaded = LearnerCore(copy.deepcopy(model), save_dir=tmp_path / "weights")
    async with make_conductor(model=copy.deepcopy(model), learner=reloaded) as conductor:
        assert await conductor.sync_weights() == update
        assert done(await ask(conductor, "c", "What is the capital of France?")).data.text == "Paris."


async def test_a_nan_update_is_rejected_and_serving_goes_on(make_conductor, model):
    learner = LearnerCore(copy.deepcopy(model))
    async with make_conductor(model=copy.deepcopy(model), learner=learner) as conductor:
        served = done(await ask(conductor, "n", "hello"))
        rejected = await feedback(conductor, "n", served.interaction, reward=float("nan"))
        assert rejected.type == "rx.error" and rejected.data.code == "learning_rejected"
        assert conductor.weights_version == 0
        again = done(await ask(conductor, "n2", "hello"))
        assert again.data.text == served.data.text and again.data.weights_version == 0


async def test_feedback_on_an_unknown_interaction_is_an_error(make_conductor, model):
    async with make_conductor(model=copy.deepcopy(model), learner=LearnerCore(copy.deepcopy(model))) as conductor:
        err = await feedback(conductor, "u", "no-such-interaction", reward=1.0)
        assert err.type == "rx.error" and err.data.code == "unknown_interaction"


async def test_a_stream_learns_only_from_its_own_answers(make_conductor, model):
    """Feedback names an interaction of the stream it is sent on (another stream's is refused)."""
    async with make_conductor(model=copy.deepcopy(model), learner=LearnerCore(copy.deepcopy(model))) as conductor:
        served = done(await ask(conductor, "owner", "hello"))
        err = await feedback(conductor, "intruder", served.interaction, reward=1.0)
        assert err.type == "rx.error" and err.data.code == "unknown_interaction"
        assert conductor.weights_version == 0
        applied = await feedback(conductor, "owner", served.interaction, reward=1.0)
        assert applied.type == "rx.learning.applied" and conductor.weights_version == 1


async def test_an_empty_correction_is_rejected_and_nothing_is_learned(make_conductor, model):
    """An empty correction would teach the model to answer nothing; the reward sent with it is no excuse."""
    async with make_conductor(model=copy.deepcopy(model), learner=LearnerCore(copy.deepcopy(model))) as conductor:
        served = done(await ask(conductor, "e", "hello"))
        err = await feedback(conductor, "e", served.interaction, reward=1.0, correction="")
        assert err.type == "rx.error" and err.data.code == "learning_rejected"
        assert "correction must not be empty" in err.data.message
        assert conductor.weights_version == 0


@pytest.mark.parametrize("params", ["memory", "all"])
async def test_memory_attention_learns_through_the_conductor(make_conductor, model, params):
    """With params "memory"/"all" the update reaches the memory-attention weights through the update
    that wrote the STM the answer read (the second answer's: the first one read the empty STM)."""
    learner = LearnerCore(copy.deepcopy(model), params=params)
    before = {k: v.clone() for k, v in learner.learner.model.named_parameters() if k.startswith("memory_attention")}
    async with make_conductor(model=copy.deepcopy(model), learner=learner) as conductor:
        await ask(conductor, "m", "My name is Ada.")
        second = done(await ask(conductor, "m", "What is my name?"))
        applied = await feedback(conductor, "m", second.interaction, correction="Your name is Ada.")
    assert applied.type == "rx.learning.applied", applied
    after = dict(learner.learner.model.named_parameters())
    assert before and any(not torch.equal(before[k], after[k]) for k in before)


async def test_a_learner_back_with_nothing_saved_takes_the_serving_weights(make_conductor, model):
    """A learner restarted without a weights directory comes back at version 0 with the checkpoint's
    weights: serving must not move back to them (what was learned silently lost, versions going
    backwards); the learner takes the serving weights and version, and learns on from there."""
    async with make_conductor(model=copy.deepcopy(model), learner=LearnerCore(copy.deepcopy(model))) as conductor:
        served = done(await ask(conductor, "r", "What is the capital of France?"))
        for update in (1, 2):
            applied = await feedback(conductor, "r", served.interaction, correction="Paris.")
            assert applied.data.weights_version == update
        learned = {k: v.clone() for k, v in conductor.engine.model.named_parameters()}
        conductor.engine.learner = LearnerCore(copy.deepcopy(model))  # "restarted", nothing saved
        # the next feedback: the learner takes the serving weights first, then learns on from them
        applied = await feedback(conductor, "r", served.interaction, correction="Paris.")
        assert applied.data.weights_version == 3 == conductor.engine.learner.weights_version
        assert conductor.weights_version == 3
        # update 3 started from the weights learned before the "restart" (version 2, kept)
        learner = conductor.engine.learner.learner
        assert learner.kept_versions == [2, 3]
        learner.rollback(2)
        assert all(torch.equal(learned[k], v) for k, v in learner.weights()[1].items())
        # and a learner back with nothing saved is not moved back at a plain swap either
        conductor.engine.learner = LearnerCore(copy.deepcopy(model))
        assert await conductor.sync_weights() == 3 == conductor.engine.learner.weights_version

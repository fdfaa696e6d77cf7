"""Feedback guards: an outlier reward cannot poison the baseline, invalid feedback spends no rate-limit
token, and a bad history file neither half-loads a learner nor stops it from loading."""

from __future__ import annotations

import math

import pytest

from reactor_rt.errors import CheckpointError
from reactor_rt.learning import LearningExample, LiveLearner, objectives
from reactor_rt.learning.objectives import RunningBaseline
from reactor_rt.learning.persistence import VERSIONS_DIR


def _reward(kit, stm, reward: float) -> LearningExample:
    return LearningExample(kit.QUERY, "Lyon.", stm, reward=reward, target="i-3")


def test_one_huge_reward_moves_the_baseline_by_at_most_the_bound():
    baseline = RunningBaseline(0.9)
    baseline.update(1e30)
    assert baseline.value == (1 - 0.9) * objectives.REWARD_BOUND
    baseline.update(-1e30)
    assert abs(baseline.value) <= objectives.REWARD_BOUND
    # the next ordinary positive reward still counts as a positive signal
    assert baseline.advantage(1.0) > 0


def test_after_a_huge_reward_a_positive_reward_still_reinforces(kit, model, stm):
    learner = LiveLearner(model, max_updates_per_minute=None, steps_per_feedback=1)
    assert learner.apply(_reward(kit, stm, 1e15)).accepted  # large, yet its gradient stays finite
    assert learner.baseline.value <= objectives.REWARD_BOUND
    assert learner.baseline.advantage(0.5) > 0  # was 0.5 - 1e14: an un-learning step


def test_invalid_feedback_spends_no_rate_limit_token(kit, model, stm, clock):
    learner = LiveLearner(model, max_updates_per_minute=6, burst=1, clock=clock, steps_per_feedback=1)
    assert learner.apply(_reward(kit, stm, math.nan)).reason == "non_finite_loss"
    too_long = LearningExample(kit.QUERY, "?", stm, correction="x" * (model.config.max_seq_len + 10))
    assert learner.apply(too_long).reason == "too_long"
    assert learner.apply(_reward(kit, stm, 0.0)).reason == "no_signal"
    # the one token in the bucket is still there for valid feedback
    assert learner.apply(_reward(kit, stm, 1.0)).accepted


def test_a_bad_history_file_is_skipped_and_load_changes_nothing_before_it_has_read_all(kit, model, stm, tmp_path):
    learner = LiveLearner(model, max_updates_per_minute=None, steps_per_feedback=1)
    for text in ("Paris.", "Rome.", "Oslo."):
        assert learner.apply(LearningExample(kit.QUERY, "?", stm, correction=text)).accepted
    learner.save(tmp_path)
    (tmp_path / VERSIONS_DIR / "v1.safetensors").write_bytes(b"not a safetensors file")

    fresh_model = kit.make_model()
    fresh = LiveLearner(fresh_model, max_updates_per_minute=None)
    assert fresh.load(tmp_path) == 3
    assert fresh.kept_versions == [0, 2, 3]  # v1 skipped, the rest kept
    assert not kit.changed(fresh_model, kit.snapshot(model))
    assert fresh.rollback(2) == 4

    # a bad state file: nothing of the learner changes
    (tmp_path / "learner.safetensors").write_bytes(b"garbage")
    other_model = kit.make_model(seed=7)
    before = kit.snapshot(other_model)
    other = LiveLearner(other_model, max_updates_per_minute=None)
    with pytest.raises(CheckpointError):
        other.load(tmp_path)
    assert not kit.changed(other_model, before) and other.weights_version == 0


@pytest.mark.parametrize("blank", ["", "  \n"])
def test_an_empty_correction_is_refused_not_learned_as_an_empty_answer(kit, stm, blank):
    with pytest.raises(ValueError, match="correction must not be empty"):
        LearningExample(kit.QUERY, "Paris.", stm, reward=1.0, correction=blank)


@pytest.mark.parametrize("option", [
    {"max_loss_ratio": math.nan}, {"max_loss_ratio": math.inf}, {"loss_floor": math.nan},
    {"clip": math.nan}, {"clip": 0.0}, {"aux_weight": math.nan},
])
def test_guard_options_that_would_switch_a_guard_off_are_refused(model, option):
    with pytest.raises(ValueError, match=next(iter(option))):
        LiveLearner(model, **option)



@pytest.mark.parametrize("reward", [1e20, 1e39])
def test_a_huge_finite_reward_is_a_full_size_step_not_an_overflow(kit, model, stm, reward):
    learner = LiveLearner(model, max_updates_per_minute=None, steps_per_feedback=1)
    result = learner.apply(_reward(kit, stm, reward))  # was non_finite_grad / non_finite_loss
    assert result.accepted and result.loss_after < result.loss_before


def test_a_huge_reward_does_not_freeze_later_updates_in_adams_second_moment(kit):
    def correction_after(reward: float) -> tuple[float, float]:
        model = kit.make_model()
        stm = kit.make_stm(model)
        learner = LiveLearner(model, max_updates_per_minute=None, clip=None)
        assert learner.apply(_reward(kit, stm, reward)).accepted
        result = learner.apply(LearningExample(kit.QUERY, "?", stm, correction="Paris."))
        return result.loss_before, result.loss_after

    # a reward of 1e6 (its square in Adam's moments) left the correction's loss almost where it was
    assert correction_after(1e6) == correction_after(1.0)


def test_a_damaged_history_file_is_rewritten_by_the_next_save_instead_of_failing_it(kit, model, stm, tmp_path):
    learner = LiveLearner(model, max_updates_per_minute=None, steps_per_feedback=1)
    for text in ("Paris.", "Rome."):
        assert learner.apply(LearningExample(kit.QUERY, "?", stm, correction=text)).accepted
    learner.save(tmp_path)
    (tmp_path / VERSIONS_DIR / "v1.safetensors").write_bytes(b"not a safetensors file")
    assert learner.apply(LearningExample(kit.QUERY, "?", stm, correction="Oslo.")).accepted
    learner.save(tmp_path)  # raised CheckpointError: every later update would have been undone
    fresh = LiveLearner(kit.make_model(), max_updates_per_minute=None)
    assert fresh.load(tmp_path) == 3 and fresh.kept_versions == [0, 1, 2, 3]


def test_a_too_long_source_interaction_is_too_long_and_spends_no_token(kit, model, stm, clock):
    from reactor_rt.learning import MemorySource

    learner = LiveLearner(model, params="memory", max_updates_per_minute=6, burst=1, clock=clock)
    long_source = MemorySource(stm_before=stm, query="Hi.", answer="y" * (model.config.max_seq_len + 10))
    result = learner.apply(LearningExample(kit.QUERY, "?", stm, correction="Paris.", source=long_source))
    assert not result.accepted and result.reason == "too_long"  # was a ValueError from the encoder
    source = MemorySource(stm_before=stm, query="My name is Alice.", answer="Hello Alice.")
    assert learner.apply(LearningExample(kit.QUERY, "?", stm, correction="Paris.", source=source)).accepted

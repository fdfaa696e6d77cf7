"""LearnerCore / LearnerActor: updates are persisted before they are reported; a restart keeps them."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from reactor_rt.actors.learner import LearnerActor, LearnerActorImpl, LearnerCore
from reactor_rt.learning import LearningExample, apply_serving_state, saved_version
from reactor_rt.template import build_prompt

QUERY = "What is the capital of France?"


def _stm(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    base = model.init_stm(1)[0].detach()
    return base + 0.3 * torch.randn(base.shape, generator=g)


def _greedy(model, stm) -> str:
    out = model.generate(torch.tensor([build_prompt(model.tokenizer, QUERY)]), stm[None], max_new_tokens=12)
    return model.tokenizer.decode(out[0].tolist())


def test_core_persists_accepted_updates_and_a_restart_keeps_them(model, tmp_path):
    base = copy.deepcopy(model)  # the session fixture stays untouched
    stm = _stm(base)
    core = LearnerCore(copy.deepcopy(base), tmp_path, max_updates_per_minute=None)
    correction = LearningExample(QUERY, "?", stm, correction="Paris.", target="i-9")
    for _ in range(4):
        result = core.apply(correction)
        assert result.accepted and saved_version(tmp_path) == result.weights_version  # saved before returned
        if _greedy(core.learner.model, stm) == "Paris.":
            break
    learned = core.weights_version
    assert _greedy(core.learner.model, stm) == "Paris."

    rejected = core.apply(LearningExample(QUERY, "Lyon.", stm, reward=math.nan))
    assert not rejected.accepted and rejected.reason == "non_finite_loss"
    assert saved_version(tmp_path) == learned == core.weights_version

    # restart: the base model again; the learner finds its saved state and serves it
    restarted = LearnerCore(copy.deepcopy(base), tmp_path, max_updates_per_minute=None)
    assert restarted.weights_version == learned
    version, state = restarted.weights_since(0)
    assert version == learned and state is not None
    assert restarted.weights_since(learned) == (learned, None)
    serving = copy.deepcopy(base)
    apply_serving_state(serving, state)
    assert _greedy(serving, stm) == "Paris."

    assert restarted.rollback(learned - 1) == learned + 1 == saved_version(tmp_path)


def test_actor_impl_is_a_thin_shell(model):
    impl = LearnerActorImpl(copy.deepcopy(model), max_updates_per_minute=None, steps_per_feedback=1)
    assert impl.ping() and impl.weights_version() == 0
    result = impl.apply(LearningExample(QUERY, "?", _stm(model), correction="Paris."))
    assert result.accepted and impl.weights()[0] == 1 == impl.weights_version()


@pytest.mark.ray
def test_learner_actor_over_ray(ray_local, model, tmp_path):
    actor = LearnerActor.remote(copy.deepcopy(model), str(tmp_path), max_updates_per_minute=None)
    try:
        assert ray_local.get(actor.ping.remote())
        example = LearningExample(QUERY, "?", _stm(model), correction="Paris.", target="i-1")
        result = ray_local.get(actor.apply.remote(example))
        assert result.accepted and result.weights_version == 1 and result.target == "i-1"
        version, state = ray_local.get(actor.weights.remote())
        assert version == 1 and state and all(n.startswith("decoder_") for n in state)
        assert saved_version(tmp_path) == 1
    finally:
        ray_local.kill(actor)

"""LiveLearner: corrections are learned, rewards move the policy, bad updates leave no trace."""

from __future__ import annotations

import math

import pytest
import torch

from reactor_rt.learning import LearningExample, LiveLearner, MemorySource
from reactor_rt.learning import learner as learner_module

CORRECTION = "Paris."


def _correction(kit, stm, text: str = CORRECTION, **kw) -> LearningExample:
    return LearningExample(kit.QUERY, "whatever it said", stm, correction=text, target="i-1", **kw)


def _reward(kit, model, stm, reward: float) -> LearningExample:
    answer = kit.greedy_answer(model, kit.QUERY, stm, max_new_tokens=8)
    return LearningExample(kit.QUERY, answer, stm, reward=reward, target="i-2")


def test_correction_lowers_loss_and_becomes_the_greedy_answer(kit, model, stm):
    assert kit.greedy_answer(model, kit.QUERY, stm) != CORRECTION
    learner = LiveLearner(model, max_updates_per_minute=None)  # the defaults: lr 3e-4, 4 steps each
    example = _correction(kit, stm)
    first = learner.loss(example)
    losses, updates = [first], 0
    while kit.greedy_answer(model, kit.QUERY, stm) != CORRECTION:
        result = learner.apply(example)
        updates += 1
        assert result.accepted and result.reason is None, result
        assert result.weights_version == updates == learner.weights_version
        assert result.kind == "supervised" and result.steps == 4 and result.target == "i-1"
        assert result.loss_before == pytest.approx(losses[-1], rel=1e-5)
        assert result.loss_after < result.loss_before  # every update lowers this example's loss
        losses.append(result.loss_after)
        assert updates <= 4, f"not learned after {updates} updates: losses {losses}"
    assert updates >= 1
    assert learner.loss(example) < 0.7 * first


def test_reward_moves_the_decoder_only_and_bumps_the_version(kit, model, stm):
    learner = LiveLearner(model, max_updates_per_minute=None)
    before = kit.snapshot(model)
    good = _reward(kit, model, stm, reward=1.0)
    nll = learner.loss(good)
    result = learner.apply(good)
    assert result.accepted and result.kind == "reinforce" and result.weights_version == 1
    assert result.loss_before == pytest.approx(nll, rel=1e-5)
    assert result.loss_after < result.loss_before  # a reward above the baseline (0) makes the answer likelier
    moved = kit.changed(model, before)
    assert moved and all(n.startswith(("decoder_layers.", "decoder_norm.")) for n in moved)
    assert learner.baseline.value == pytest.approx(0.1)  # EMA with momentum 0.9, from 0

    # a reward below the running baseline pushes the same answer down, by a step scaled to |advantage|
    bad = learner.apply(_reward(kit, model, stm, reward=-0.2))
    assert bad.accepted and bad.weights_version == 2
    assert bad.loss_after > bad.loss_before
    assert bad.loss_after - bad.loss_before < result.loss_before - result.loss_after


def test_reward_equal_to_the_baseline_is_no_signal(kit, model, stm):
    learner = LiveLearner(model, max_updates_per_minute=None)
    before = kit.snapshot(model)
    result = learner.apply(_reward(kit, model, stm, reward=0.0))
    assert not result.accepted and result.reason == "no_signal" and result.weights_version == 0
    assert not kit.changed(model, before)


def _optimizer_moments(learner: LiveLearner) -> list[torch.Tensor]:
    return [t.clone() for s in learner.optimizer.state.values() for t in (s["exp_avg"], s["exp_avg_sq"])]


def test_nan_reward_is_rejected_and_weights_stay_bit_identical(kit, model, stm):
    learner = LiveLearner(model, max_updates_per_minute=None)
    assert learner.apply(_correction(kit, stm)).accepted  # optimizer moments exist now
    before, moments = kit.snapshot(model), _optimizer_moments(learner)
    result = learner.apply(_reward(kit, model, stm, reward=math.nan))
    assert not result.accepted and result.reason == "non_finite_loss"
    assert result.weights_version == learner.weights_version == 1
    assert math.isnan(result.loss_before) and math.isnan(result.loss_after)  # rejected before any step
    assert not kit.changed(model, before)
    assert all(torch.equal(a, b) for a, b in zip(_optimizer_moments(learner), moments, strict=True))
    assert learner.baseline.count == 0  # the NaN never reached the baseline
    # serving goes on: the next good update is accepted
    assert learner.apply(_correction(kit, stm)).weights_version == 2


def test_nan_after_some_steps_restores_the_weights_exactly(kit, model, stm, monkeypatch):
    learner = LiveLearner(model, max_updates_per_minute=None, steps_per_feedback=4)
    before = kit.snapshot(model)
    real = learner_module.answer_nll
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        nll, aux = real(*args, **kwargs)
        return (nll * math.nan if calls["n"] == 3 else nll), aux

    monkeypatch.setattr(learner_module, "answer_nll", poisoned)
    result = learner.apply(_correction(kit, stm))
    assert not result.accepted and result.reason == "non_finite_loss" and result.steps == 2
    assert not kit.changed(model, before)  # two optimizer steps were taken and undone
    assert learner.optimizer.state == {} or all(not s for s in learner.optimizer.state.values())
    assert "step 3" in (result.detail or "")


def test_infinite_gradient_is_rejected(kit, model, stm):
    learner = LiveLearner(model, max_updates_per_minute=None)
    before = kit.snapshot(model)
    handle = model.decoder_norm.weight.register_hook(lambda g: g * math.inf)
    try:
        result = learner.apply(_correction(kit, stm))
    finally:
        handle.remove()
    assert not result.accepted and result.reason == "non_finite_grad"
    assert result.weights_version == 0 and not kit.changed(model, before)


def test_exploding_loss_is_rejected(kit, model, stm):
    # a learning rate far too large for the model: one step sends the loss up more than tenfold
    learner = LiveLearner(model, max_updates_per_minute=None, lr=100.0, clip=None, steps_per_feedback=1)
    before = kit.snapshot(model)
    result = learner.apply(_correction(kit, stm))
    assert not result.accepted and result.reason == "loss_exploded", result
    assert result.loss_after > 2.0 * result.loss_before
    assert result.weights_version == 0 and not kit.changed(model, before)


def test_rate_limit_rejects_without_touching_the_weights(kit, model, stm, clock):
    learner = LiveLearner(model, max_updates_per_minute=6, burst=2, clock=clock, steps_per_feedback=1)
    example = _correction(kit, stm)
    assert [learner.apply(example).accepted for _ in range(2)] == [True, True]
    before = kit.snapshot(model)
    limited = learner.apply(example)
    assert not limited.accepted and limited.reason == "rate_limited" and limited.weights_version == 2
    assert not kit.changed(model, before)
    clock.now += 5.0  # half a token at 6 a minute
    assert learner.apply(example).reason == "rate_limited"
    clock.now += 5.0
    assert learner.apply(example).weights_version == 3


def test_memory_params_change_only_the_memory_attention_network(kit, model, stm):
    learner = LiveLearner(model, params="memory", max_updates_per_minute=None)
    assert learner.parameter_names() and all(n.startswith("memory_attention.") for n in learner.parameter_names())
    before = kit.snapshot(model)
    plain = learner.apply(_correction(kit, stm))
    assert not plain.accepted and plain.reason == "no_memory_path"  # a fixed STM carries no gradient back
    assert not kit.changed(model, before)

    source = MemorySource(stm_before=stm, query="My name is Alice.", answer="Hello Alice.")
    with torch.no_grad():
        read = model.update_memory(stm[None], model.encode(torch.tensor([[1, 2, 3]])))[0]  # any STM
    result = learner.apply(_correction(kit, read, source=source))
    assert result.accepted and result.weights_version == 1
    assert result.loss_after < result.loss_before
    moved = kit.changed(model, before)
    assert moved and all(n.startswith("memory_attention.") for n in moved)
    assert any(".gate." in n for n in moved)  # the residual gates learn too


def test_all_params_reach_embedding_encoder_memory_and_decoder(kit, model, stm):
    learner = LiveLearner(model, params="all", max_updates_per_minute=None, steps_per_feedback=1)
    before = kit.snapshot(model)
    source = MemorySource(stm_before=stm, query="My name is Alice.", answer="Hello Alice.")
    assert learner.apply(_correction(kit, stm, source=source)).accepted
    roots = {n.split(".")[0] for n in kit.changed(model, before)}
    assert roots == {"embedding", "decoder_layers", "decoder_norm", "encoder_layers", "memory_attention"}


def test_examples_are_validated(kit, model, stm):
    with pytest.raises(ValueError, match="reward or a correction"):
        LearningExample(kit.QUERY, "a", stm)
    learner = LiveLearner(model, max_updates_per_minute=None)
    with pytest.raises(ValueError, match="stm must be"):
        learner.apply(_correction(kit, stm[:, :3]))
    too_long = learner.apply(_correction(kit, stm, text="x" * model.config.max_seq_len))
    assert not too_long.accepted and too_long.reason == "too_long"
    with pytest.raises(ValueError, match="params must be"):
        LiveLearner(model, params="encoder")


def test_logged_answer_ids_are_scored_as_given(kit, model, stm):
    learner = LiveLearner(model, max_updates_per_minute=None)
    tok = model.tokenizer
    ids = [*tok.encode("Hi"), tok.eos_id, tok.pad_id, tok.pad_id]  # as generate() pads a finished row
    by_ids = LearningExample(kit.QUERY, "ignored", stm, reward=1.0, answer_ids=ids)
    by_text = LearningExample(kit.QUERY, "Hi", stm, reward=1.0)
    assert learner.loss(by_ids) == learner.loss(by_text)


@pytest.mark.parametrize("fail_on_call", [1, 3, 5])  # before any step, after two steps, in the final loss
def test_an_unexpected_error_mid_update_leaves_weights_and_optimizer_as_they_were(kit, model, stm, monkeypatch, fail_on_call):
    learner = LiveLearner(model, max_updates_per_minute=None, steps_per_feedback=4)
    assert learner.apply(_correction(kit, stm)).accepted  # optimizer moments exist now
    before, moments = kit.snapshot(model), _optimizer_moments(learner)
    real = learner_module.answer_nll
    calls = {"n": 0}

    def out_of_memory(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(learner_module, "answer_nll", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        learner.apply(_correction(kit, stm, text="Rome."))
    monkeypatch.undo()
    # the steps taken before the error were undone: the next accepted update must not serve them
    assert not kit.changed(model, before) and learner.weights_version == 1
    assert all(torch.equal(a, b) for a, b in zip(_optimizer_moments(learner), moments, strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_every_token_of_the_own_answer_is_scored_even_a_generated_answer_marker(kit, model, stm):
    from reactor_rt.learning.objectives import answer_batch
    from reactor_rt.template import build_prompt

    tok = model.tokenizer
    ids = [*tok.encode("Hi"), tok.answer_id, *tok.encode("yo")]  # a barely trained model may emit [A]
    batch = answer_batch(model, LearningExample(kit.QUERY, "ignored", stm, reward=1.0, answer_ids=ids))
    prompt = build_prompt(tok, kit.QUERY)
    assert batch.ids[0].tolist() == [*prompt, *ids, tok.eos_id]
    assert batch.target[0].tolist() == [False] * len(prompt) + [True] * (len(ids) + 1)


def test_a_reward_on_an_answer_cut_short_does_not_score_an_eos_the_model_never_chose(kit, model, stm):
    from reactor_rt.learning.objectives import answer_batch
    from reactor_rt.template import build_prompt

    tok = model.tokenizer
    ids = tok.encode("Paris is the")  # cut at the client's max_new_tokens, no [EOS] generated
    cut = LearningExample(kit.QUERY, "ignored", stm, reward=1.0, answer_ids=ids, answer_ended=False)
    batch = answer_batch(model, cut)
    prompt = build_prompt(tok, kit.QUERY)
    assert batch.ids[0].tolist() == [*prompt, *ids]
    assert batch.target[0].tolist() == [False] * len(prompt) + [True] * len(ids)
    ended = answer_batch(model, LearningExample(kit.QUERY, "ignored", stm, reward=1.0, answer_ids=ids))
    assert ended.ids[0].tolist() == [*prompt, *ids, tok.eos_id]  # the default: the model ended it
    # a correction is a whole answer: its [EOS] is always learned
    fixed = answer_batch(model, LearningExample(kit.QUERY, "?", stm, correction="Paris.", answer_ended=False))
    assert fixed.ids[0, -1].item() == tok.eos_id and bool(fixed.target[0, -1])

    learner = LiveLearner(model, max_updates_per_minute=None, steps_per_feedback=1)
    assert learner.apply(cut).accepted
    before = kit.snapshot(model)
    empty = LearningExample(kit.QUERY, "", stm, reward=1.0, answer_ids=[], answer_ended=False)
    result = learner.apply(empty)
    assert not result.accepted and result.reason == "no_signal" and not kit.changed(model, before)


def test_loss_waits_for_an_update_in_another_thread(kit, model, stm):
    import threading

    learner = LiveLearner(model, max_updates_per_minute=None)
    example = _correction(kit, stm)
    out: list[float] = []
    reader = threading.Thread(target=lambda: out.append(learner.loss(example)))
    with learner.locked():  # as apply() holds it across its steps
        reader.start()
        reader.join(timeout=1.0)
        assert reader.is_alive() and not out  # it did not read weights mid-update
    reader.join(timeout=30)
    assert out and math.isfinite(out[0])


def test_a_model_frozen_for_inference_still_learns_its_parameter_set_only(kit, model, stm):
    model.requires_grad_(False)  # as a serving copy is often prepared
    learner = LiveLearner(model, max_updates_per_minute=None, steps_per_feedback=1)
    before = kit.snapshot(model)
    assert learner.apply(_correction(kit, stm)).accepted
    moved = kit.changed(model, before)
    assert moved and moved <= set(learner.parameter_names())


def test_a_pad_token_the_model_generated_mid_answer_does_not_cut_the_answer(kit, model, stm):
    from reactor_rt.learning.objectives import answer_batch
    from reactor_rt.template import build_prompt

    tok = model.tokenizer
    ids = [*tok.encode("Hi"), tok.pad_id, *tok.encode("yo")]  # nothing stops sampling [PAD]
    batch = answer_batch(model, LearningExample(kit.QUERY, "ignored", stm, reward=1.0, answer_ids=ids))
    assert batch.ids[0].tolist() == [*build_prompt(tok, kit.QUERY), *ids, tok.eos_id]

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


@pytest.mark.parametrize("fail_after_state_file", [False, True])
def test_an_update_whose_save_fails_is_undone_in_memory_and_on_disk(model, tmp_path, monkeypatch, fail_after_state_file):
    from reactor_rt.errors import CheckpointError
    from reactor_rt.learning import learner as learner_module

    core = LearnerCore(copy.deepcopy(model), tmp_path, max_updates_per_minute=None, steps_per_feedback=1)
    stm = _stm(model)
    assert core.apply(LearningExample(QUERY, "?", stm, correction="Paris.")).accepted
    assert core.apply(LearningExample(QUERY, "Lyon.", stm, reward=1.0)).accepted
    learner = core.learner
    version = core.weights_version
    params = learner.state_dict_for_serving()
    moments = {n: {k: v.clone() for k, v in s.items()} for n, s in learner.optimizer.state_dict()["state"].items()}
    kept, baseline = learner.kept_versions, (learner.baseline.value, learner.baseline.count)

    real_write = learner_module.write_tensors

    def failing_write(path, tensors, metadata):
        # disk full: either on the new version's file, or once the state file already says N+1
        if fail_after_state_file and path.name == "learner.safetensors":
            real_write(path, tensors, metadata)
            raise OSError(28, "No space left on device")
        if not fail_after_state_file:
            raise OSError(28, "No space left on device")
        real_write(path, tensors, metadata)

    monkeypatch.setattr(learner_module, "write_tensors", failing_write)
    with pytest.raises(CheckpointError, match="No space"):
        core.apply(LearningExample(QUERY, "Lyon.", stm, reward=-1.0))
    monkeypatch.undo()

    assert core.weights_version == version and core.weights_since(version) == (version, None)
    after = learner.state_dict_for_serving()
    assert all(torch.equal(after[n], params[n]) for n in params)
    state = learner.optimizer.state_dict()["state"]
    assert all(torch.equal(state[n][k], moments[n][k]) for n in moments for k in moments[n])
    assert learner.kept_versions == kept and (learner.baseline.value, learner.baseline.count) == baseline
    if not fail_after_state_file:
        assert saved_version(tmp_path) == version  # the state file never switched
    # the next accepted update is version N+1 and carries only its own change; its save replaces any
    # version file the failed save left
    good = core.apply(LearningExample(QUERY, "?", stm, correction="Paris."))
    assert good.accepted and good.weights_version == version + 1 == saved_version(tmp_path)
    restarted = LearnerCore(copy.deepcopy(model), tmp_path, max_updates_per_minute=None)
    assert restarted.weights_version == version + 1
    assert restarted.learner.rollback(version) == version + 2
    back = restarted.learner.state_dict_for_serving()
    assert all(torch.equal(back[n], params[n]) for n in params)


def test_a_failed_save_leaves_the_directory_loading_as_the_previous_version(model, tmp_path, monkeypatch):
    from reactor_rt.errors import CheckpointError
    from reactor_rt.learning import learner as learner_module

    core = LearnerCore(copy.deepcopy(model), tmp_path, max_updates_per_minute=None, steps_per_feedback=1)
    stm = _stm(model)
    assert core.apply(LearningExample(QUERY, "?", stm, correction="Paris.")).accepted
    params = core.learner.state_dict_for_serving()
    calls = {"n": 0}
    real_write = learner_module.write_tensors

    def second_write_fails(path, tensors, metadata):
        calls["n"] += 1
        if calls["n"] == 2:
            raise CheckpointError("disk full")
        real_write(path, tensors, metadata)

    monkeypatch.setattr(learner_module, "write_tensors", second_write_fails)
    with pytest.raises(CheckpointError, match="disk full"):
        core.apply(LearningExample(QUERY, "?", stm, correction="Marseille."))
    monkeypatch.undo()
    assert saved_version(tmp_path) == 1 == core.weights_version
    restarted = LearnerCore(copy.deepcopy(model), tmp_path, max_updates_per_minute=None)
    assert restarted.weights_version == 1
    loaded = restarted.learner.state_dict_for_serving()
    assert all(torch.equal(loaded[n], params[n]) for n in params)


def test_feedback_takes_no_full_snapshot_of_the_learner_state(model, tmp_path, monkeypatch):
    """A flood the rate limit drops must be cheap: no snapshot of weights and optimizer per feedback."""
    from reactor_rt.learning.learner import LiveLearner

    def no_snapshot(self):
        raise AssertionError("a full snapshot was taken")

    monkeypatch.setattr(LiveLearner, "snapshot", no_snapshot)
    core = LearnerCore(copy.deepcopy(model), tmp_path, max_updates_per_minute=1, burst=1, steps_per_feedback=1)
    example = LearningExample(QUERY, "?", _stm(model), correction="Paris.")
    assert core.apply(example).accepted
    assert all(core.apply(example).reason == "rate_limited" for _ in range(3))
    assert saved_version(tmp_path) == 1 == core.weights_version


def test_a_failed_save_of_a_small_reward_step_gives_back_the_full_learning_rate(model, tmp_path, monkeypatch):
    from reactor_rt.errors import CheckpointError
    from reactor_rt.learning import learner as learner_module

    core = LearnerCore(copy.deepcopy(model), tmp_path, max_updates_per_minute=None, steps_per_feedback=1, lr=1e-3)
    stm = _stm(model)
    assert core.apply(LearningExample(QUERY, "?", stm, correction="Paris.")).accepted

    def disk_full(path, tensors, metadata):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(learner_module, "write_tensors", disk_full)
    with pytest.raises(CheckpointError):
        core.apply(LearningExample(QUERY, "Lyon.", stm, reward=0.25))  # a step at a quarter of lr
    monkeypatch.undo()
    assert [g["lr"] for g in core.learner.optimizer.param_groups] == [1e-3]
    assert core.weights_version == 1


def _learned(model, tmp_path, updates: int = 2) -> tuple[LearnerCore, dict[str, torch.Tensor]]:
    core = LearnerCore(copy.deepcopy(model), tmp_path, max_updates_per_minute=None)
    stm = _stm(model)
    for i in range(updates):
        assert core.apply(LearningExample(QUERY, "?", stm, correction=f"Paris {i}.", target=f"i-{i}")).accepted
    return core, core.weights_since(0)[1]


@pytest.mark.parametrize("damage", ["garbage", "nan"])
def test_a_damaged_state_file_falls_back_to_the_newest_kept_version(model, tmp_path, damage):
    from reactor_rt.learning.persistence import STATE_FILE, read_tensors, write_tensors

    core, learned = _learned(model, tmp_path)
    state = tmp_path / STATE_FILE
    if damage == "garbage":
        state.write_bytes(b"\x00" * 64)
    else:  # decodes, but as NaN: safetensors has no checksum
        tensors, meta = read_tensors(state)
        tensors = {k: torch.full_like(v, math.nan) if k.startswith("param/") else v for k, v in tensors.items()}
        write_tensors(state, tensors, {k: v for k, v in meta.items() if k != "format"})
    restarted = LearnerCore(copy.deepcopy(model), tmp_path, max_updates_per_minute=None)
    assert restarted.weights_version == core.weights_version == 2
    assert all(torch.equal(restarted.weights_since(0)[1][n], t) for n, t in learned.items())
    assert (tmp_path / (STATE_FILE + ".damaged")).is_file()
    # it goes on learning and saving: the next start reads a whole state file again
    assert restarted.apply(LearningExample(QUERY, "?", _stm(model), correction="Paris.", target="i-9")).accepted
    assert LearnerCore(copy.deepcopy(model), tmp_path, max_updates_per_minute=None).weights_version == 3


def test_damage_without_a_usable_kept_version_is_an_error_and_a_mismatch_never_falls_back(model, tmp_path):
    from reactor_rt.errors import CheckpointError
    from reactor_rt.learning.persistence import STATE_FILE, VERSIONS_DIR

    _learned(model, tmp_path)
    with pytest.raises(CheckpointError, match="params"):  # another parameter set: not damage
        LearnerCore(copy.deepcopy(model), tmp_path, params="memory", max_updates_per_minute=None)
    (tmp_path / STATE_FILE).write_bytes(b"junk")
    for file in (tmp_path / VERSIONS_DIR).iterdir():
        file.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no kept version"):
        LearnerCore(copy.deepcopy(model), tmp_path, max_updates_per_minute=None)
    assert (tmp_path / STATE_FILE).read_bytes() == b"junk"  # nothing moved when nothing was recovered

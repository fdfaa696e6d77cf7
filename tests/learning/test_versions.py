"""Weights versions: save/load keeps what was learned exactly, rollback, the serving state."""

from __future__ import annotations

import pytest
import torch

from reactor_rt.errors import CheckpointError
from reactor_rt.learning import (
    LearningExample,
    LiveLearner,
    apply_serving_state,
    saved_version,
    select_parameters,
)
from reactor_rt.learning.persistence import STATE_FILE, VERSIONS_DIR


def _examples(kit, stm) -> list[LearningExample]:
    return [
        LearningExample(kit.QUERY, "?", stm, correction="Paris."),
        LearningExample(kit.QUERY, "Lyon.", stm, reward=1.0),
        LearningExample("Name a colour.", "?", stm, correction="Blue."),
    ]


def _learner(model, **kw) -> LiveLearner:
    return LiveLearner(model, max_updates_per_minute=None, steps_per_feedback=2, **kw)


def test_save_and_load_keep_version_weights_optimizer_and_baseline(kit, model, stm, tmp_path):
    learner = _learner(model)
    first, second, third = _examples(kit, stm)
    assert learner.apply(first).accepted and learner.apply(second).accepted
    learner.save(tmp_path)
    assert saved_version(tmp_path) == 2 and saved_version(tmp_path / "nowhere") is None
    assert (tmp_path / STATE_FILE).is_file()

    # a restart: the base model again, a fresh learner, then load
    restarted = kit.make_model()
    fresh = _learner(restarted)
    assert fresh.load(tmp_path) == 2 == fresh.weights_version
    assert not kit.changed(restarted, kit.snapshot(model))  # every parameter bit-identical
    assert fresh.baseline.value == learner.baseline.value and fresh.baseline.count == 1
    # the optimizer state came back too: the next update is the same on both
    a, b = learner.apply(third), fresh.apply(third)
    assert a.weights_version == b.weights_version == 3
    assert (a.loss_before, a.loss_after) == (b.loss_before, b.loss_after)
    assert not kit.changed(restarted, kit.snapshot(model))


def test_load_refuses_a_mismatch_and_changes_nothing(kit, model, stm, tmp_path):
    learner = _learner(model)
    assert learner.apply(_examples(kit, stm)[0]).accepted
    learner.save(tmp_path)
    other = kit.make_model(seed=5)
    before = kit.snapshot(other)
    with pytest.raises(CheckpointError, match="params"):
        _learner(other, params="memory").load(tmp_path)
    with pytest.raises(CheckpointError, match="no learner state"):
        _learner(other).load(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / STATE_FILE).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="corrupt"):
        _learner(other).load(tmp_path / "bad")
    assert not kit.changed(other, before)


def test_rollback_restores_an_earlier_version_as_a_new_one(kit, model, stm, tmp_path):
    learner = _learner(model, keep_versions=3)
    v0 = kit.snapshot(model)
    served_at = {}
    for example in _examples(kit, stm):
        version = learner.apply(example).weights_version
        served_at[version] = learner.state_dict_for_serving()
    assert learner.kept_versions == [1, 2, 3]
    with pytest.raises(ValueError, match="not kept"):
        learner.rollback(0)  # pruned: only the last 3 versions are kept
    v1 = served_at[1]
    assert learner.rollback(1) == 4 == learner.weights_version  # versions only grow
    served = learner.state_dict_for_serving()
    assert all(torch.equal(served[n], v1[n]) for n in served)
    assert learner.kept_versions == [2, 3, 4]
    assert kit.changed(model, v0)  # version 1 is not the base model

    # the kept versions survive a restart: roll back to 2 after loading
    learner.save(tmp_path)
    assert sorted(p.name for p in (tmp_path / VERSIONS_DIR).iterdir()) == ["v2.safetensors", "v3.safetensors", "v4.safetensors"]
    fresh = _learner(kit.make_model(), keep_versions=3)
    fresh.load(tmp_path)
    assert fresh.kept_versions == [2, 3, 4]
    v2 = served_at[2]
    assert fresh.rollback(2) == 5
    assert all(torch.equal(t, v2[n]) for n, t in fresh.state_dict_for_serving().items())


def test_serving_state_is_the_changed_parameters_and_swaps_in(kit, model, stm):
    learner = _learner(model)
    version, state = learner.weights()
    assert version == 0 and set(state) == set(select_parameters(model, "decoder"))
    assert not any(n.startswith(("embedding.", "encoder_layers.", "memory_attention.")) for n in state)
    assert learner.apply(_examples(kit, stm)[0]).accepted
    version, state = learner.weights()
    assert version == 1

    serving = kit.make_model()  # another copy of the base weights, as a decoder actor holds
    prompt = torch.tensor([[1, 2, 70, 71, 72, 4]])
    assert not torch.equal(serving.decode(prompt, stm[None]), model.decode(prompt, stm[None]))
    apply_serving_state(serving, state)
    assert torch.equal(serving.decode(prompt, stm[None]), model.decode(prompt, stm[None]))

    # the copies handed out do not move with later updates
    frozen = {n: t.clone() for n, t in state.items()}
    assert learner.apply(_examples(kit, stm)[2]).accepted
    assert all(torch.equal(state[n], frozen[n]) for n in state)


def test_apply_serving_state_checks_everything_before_writing(kit):
    serving = kit.make_model()
    before = kit.snapshot(serving)
    good = {"decoder_norm.weight": torch.zeros(serving.config.dim)}
    with pytest.raises(ValueError, match="unknown"):
        apply_serving_state(serving, {**good, "nope.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        apply_serving_state(serving, {**good, "decoder_layers.0.ffn_norm.weight": torch.zeros(3)})
    assert not kit.changed(serving, before)


def _rewrite(file, change) -> None:
    """Rewrite a learner file with one tensor changed (as damage on disk that still decodes would)."""
    from reactor_rt.learning.persistence import read_tensors, write_tensors

    tensors, meta = read_tensors(file)
    meta.pop("format")
    change(tensors)
    write_tensors(file, tensors, meta)


def _first(tensors, prefix: str) -> str:
    return next(k for k in tensors if k.startswith(prefix))


def _nan_in(prefix: str):
    def change(tensors):
        key = _first(tensors, prefix)
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = float("nan")
    return change


def _wrong_shape(prefix: str):
    def change(tensors):
        tensors[_first(tensors, prefix)] = torch.zeros(3)
    return change


@pytest.mark.parametrize(("damage", "match"), [
    (_nan_in("param/"), "non-finite weights"),
    (_nan_in("exp_avg_sq/"), "non-finite optimizer"),
    (_wrong_shape("exp_avg/"), "wrong shape"),
], ids=["nan-weight", "nan-moment", "moment-shape"])
def test_load_refuses_damaged_weights_or_optimizer_state_and_changes_nothing(kit, model, stm, tmp_path, damage, match):
    learner = _learner(model)
    assert learner.apply(_examples(kit, stm)[0]).accepted
    learner.save(tmp_path)
    _rewrite(tmp_path / STATE_FILE, damage)
    other = kit.make_model(seed=5)
    before = kit.snapshot(other)
    fresh = _learner(other)
    with pytest.raises(CheckpointError, match=match):
        fresh.load(tmp_path)
    assert not kit.changed(other, before) and fresh.weights_version == 0


def test_a_history_file_with_non_finite_weights_is_no_rollback_target(kit, model, stm, tmp_path):
    learner = _learner(model)
    for example in _examples(kit, stm):
        assert learner.apply(example).accepted
    learner.save(tmp_path)
    _rewrite(tmp_path / VERSIONS_DIR / "v2.safetensors", _nan_in(""))
    fresh = _learner(kit.make_model())
    assert fresh.load(tmp_path) == 3
    assert fresh.kept_versions == [0, 1, 3]


def test_a_saved_file_is_durable_its_directory_is_synced_after_the_rename(tmp_path, monkeypatch):
    import os
    import stat

    from reactor_rt.learning import persistence

    target = tmp_path / "f.safetensors"
    synced = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        info = os.fstat(fd)
        synced.append((stat.S_ISDIR(info.st_mode), info.st_ino, target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(persistence.os, "fsync", spy)
    persistence.write_tensors(target, {"x": torch.zeros(2)}, {})
    # the file's data, then (once the file has its final name) the directory entry of the rename
    assert synced[0][0] is False
    assert (True, tmp_path.stat().st_ino, True) in synced


def test_a_file_system_that_refuses_fsync_on_a_directory_still_saves(tmp_path, monkeypatch):
    import errno
    import os
    import stat

    from reactor_rt.learning import persistence

    real_fsync = os.fsync

    def no_directory_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(persistence.os, "fsync", no_directory_fsync)
    persistence.write_tensors(tmp_path / "f.safetensors", {"x": torch.ones(2)}, {})
    tensors, _ = persistence.read_tensors(tmp_path / "f.safetensors")
    assert torch.equal(tensors["x"], torch.ones(2))


def test_adopt_takes_newer_serving_weights_and_refuses_anything_else(kit, model, stm):
    """A learner that came back empty takes the weights still serving as their version (never older)."""
    trained = _learner(model)
    for example in _examples(kit, stm)[:2]:
        assert trained.apply(example).accepted
    version, state = trained.weights()
    fresh = _learner(kit.make_model())
    untouched = fresh.weights()[1]
    for bad_version, bad_state in ((0, state), (version, {**state, "extra": state[next(iter(state))]}),
                                   (version, {k: v.new_full(v.shape, float("nan")) for k, v in state.items()})):
        with pytest.raises(ValueError):
            fresh.adopt(bad_version, bad_state)
        assert fresh.weights_version == 0
        assert all(torch.equal(untouched[k], v) for k, v in fresh.weights()[1].items())
    fresh.adopt(version, state)
    assert fresh.weights_version == version == 2 and fresh.kept_versions == [2]
    assert all(torch.equal(state[k], v) for k, v in fresh.weights()[1].items())
    assert fresh.apply(_examples(kit, stm)[2]).accepted and fresh.weights_version == 3

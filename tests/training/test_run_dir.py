"""A run directory remembers its recipe, seed and model; resuming with others is refused, not reused."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from reactor_rt.cli_train import main
from reactor_rt.errors import CheckpointError, ConfigError
from reactor_rt.training.recipe import RECIPES, RUN_FILE, get_recipe, train, with_steps

# the micro recipe cut to one step a stage: only the run directory's bookkeeping is under test
ONE_STEP = with_steps(RECIPES["micro"], joint_lm=1, sft=1, memory_pretrain=1, memory_aware=1, mrl=1)


def _train(out, recipe=ONE_STEP, seed=0, resume=True):
    return train(recipe, out, seed=seed, resume=resume, progress=False, evaluate=False)


def test_run_json_and_mismatches_refused(tmp_path):
    out = tmp_path / "run"
    _train(out, seed=0)
    run = json.loads((out / RUN_FILE).read_text())
    assert run["recipe"] == "micro" and run["seed"] == 0 and run["model"]["dim"] == ONE_STEP.model["dim"]

    with pytest.raises(CheckpointError, match=r"seed 0.*seed 1") as info:
        _train(out, seed=1)
    assert "--out" in str(info.value) and "--restart" in str(info.value)

    other = replace(ONE_STEP, name="micro2", model={**ONE_STEP.model, "dim": 48})
    with pytest.raises(CheckpointError, match=r"'micro'.*'micro2'"):
        _train(out, recipe=other)

    # same recipe and seed resumes; a restart with another seed clears the directory and records it
    assert _train(out, seed=0).seed == 0
    s = _train(out, seed=1, resume=False)
    assert s.seed == 1 and json.loads((out / RUN_FILE).read_text())["seed"] == 1


def test_unknown_recipe_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown recipe 'huge'.*micro.*tiny"):
        get_recipe("huge")


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["train", "--recipe", "huge", "--out", str(tmp_path / "x"), "--threads", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown recipe 'huge'") and "Traceback" not in err

    out = tmp_path / "run"
    _train(out, seed=0)
    # a run dir of seed 0: the CLI asked for seed 5 refuses before training anything
    argv = ["train", "--recipe", "micro", "--out", str(out), "--seed", "5", "--no-progress", "--threads", "0"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "seed 5" in err


def test_eval_with_no_dialogues_is_a_clear_error(capsys):
    from reactor_rt.cli import main

    assert main(["eval", "recall", "--dialogues", "0"]) == 1
    assert "at least 1 dialogue" in capsys.readouterr().err


def test_resuming_with_other_stage_settings_is_refused(tmp_path):
    # a run of the one-step micro recipe must not pass for the real micro recipe: its finished stages
    # (1 step each) were reused silently and reported as the micro recipe's result
    out = tmp_path / "run"
    _train(out, seed=0)
    with pytest.raises(CheckpointError, match=r"memory_aware\.steps 1 vs 10") as info:
        _train(out, recipe=RECIPES["micro"], seed=0)
    assert "joint_lm.steps 1 vs 6" in str(info.value)
    # a change that does not touch the checkpoints (the size of the final evaluation) still resumes
    assert _train(out, recipe=replace(ONE_STEP, eval_n=2), seed=0).seed == 0


def test_an_older_run_json_without_stage_settings_still_resumes(tmp_path):
    out = tmp_path / "run"
    _train(out, seed=0)
    run = json.loads((out / RUN_FILE).read_text())
    old = {k: run[k] for k in ("recipe", "seed", "vocab_size", "model")}
    (out / RUN_FILE).write_text(json.dumps(old))
    assert _train(out, seed=0).seed == 0
    (out / RUN_FILE).write_text("[]")
    with pytest.raises(CheckpointError, match="not a run record"):
        _train(out, seed=0)


@pytest.mark.parametrize("resume", [True, False])
def test_an_out_path_that_cannot_be_a_directory_is_a_config_error(tmp_path, resume):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    for out in (a_file, a_file / "run"):
        with pytest.raises(ConfigError, match="run directory"):
            _train(out, resume=resume)
    assert a_file.read_text() == "keep me"


def test_cli_bad_out_and_threads_are_errors_without_traceback(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert main(["train", "--recipe", "micro", "--out", str(a_file), "--no-progress", "--threads", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a directory" in err and "Traceback" not in err
    assert main(["train", "--recipe", "micro", "--out", str(tmp_path / "r"), "--threads", "-1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--threads" in err
    assert not (tmp_path / "r").exists()


def test_eval_with_negative_or_no_intervening_turns_is_a_clear_error(capsys):
    from reactor_rt.cli_train import eval_recall_command

    assert main(["eval", "recall", "--ks", "0", "-1", "--n", "2", "--threads", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --ks") and "Traceback" not in err
    with pytest.raises(ConfigError, match="--ks"):
        eval_recall_command(ks=(), n=2, threads=None)


def test_restart_never_deletes_what_a_run_did_not_write(tmp_path):
    # --out pointed at a folder that is not a run directory: its model/ is someone else's
    out = tmp_path / "project"
    (out / "model").mkdir(parents=True)
    (out / "model" / "weights.bin").write_text("precious")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"no run\.json.*choose another --out"):
        _train(out, resume=False)
    assert (out / "model" / "weights.bin").read_text() == "precious"
    assert (out / "notes.txt").read_text() == "mine"
    # a run directory (it has run.json) is cleared as before, and a fresh folder is fine
    run = tmp_path / "run"
    _train(run, seed=0)
    assert _train(run, seed=2, resume=False).seed == 2
    assert _train(tmp_path / "fresh", resume=False).seed == 0

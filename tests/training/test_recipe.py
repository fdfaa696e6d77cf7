"""The recipe runs the whole pipeline (micro), is deterministic per seed, resumable; the CLI works."""

from __future__ import annotations

import json

import pytest
import torch

from reactor_rt.cli_train import eval_recall_command, main, train_command
from reactor_rt.model import ReactiveTransformer
from reactor_rt.training.recipe import RECIPES, get_recipe, train


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_micro_recipe_end_to_end_deterministic_and_resumable(tmp_path):
    s = train("micro", tmp_path / "a", seed=3, progress=False)
    assert [r.name.split()[0] for r in s.stages] == ["1", "2", "3", "4", "5"]
    for key in ("reward_greedy_before", "reward_greedy_after"):
        assert key in s.stages[-1].extra
    assert s.recall is not None and set(s.recall.memory) == {0, 1, 2, 4, 8}
    saved = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert saved["recipe"] == "micro" and len(saved["stages"]) == 5
    a = ReactiveTransformer.from_pretrained(tmp_path / "a" / "model")
    assert (tmp_path / "a" / "model" / "recall.json").exists()

    # same seed, fresh directory: identical weights
    train("micro", tmp_path / "b", seed=3, progress=False, evaluate=False)
    b = ReactiveTransformer.from_pretrained(tmp_path / "b" / "model")
    for k, v in state(a).items():
        assert torch.equal(v, b.state_dict()[k]), k

    # stages 4 and 5 lost: a rerun loads stages 1-3 from their checkpoints and redoes 4 and 5 identically
    # (exact mid-stage resume is tested on the loop itself in test_stages.py)
    for lost in ("4_memory_aware", "5_mrl"):
        (tmp_path / "b" / "stages" / lost / "done.pt").unlink()
    train("micro", tmp_path / "b", seed=3, progress=False, evaluate=False)
    c = ReactiveTransformer.from_pretrained(tmp_path / "b" / "model")
    for k, v in state(a).items():
        assert torch.equal(v, c.state_dict()[k]), k


def test_unknown_recipe():
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("huge")
    assert "tiny" in RECIPES


def test_cli_functions(tmp_path, capsys):
    assert train_command("micro", tmp_path / "m", seed=1, progress=False, threads=None) == 0
    out = capsys.readouterr().out
    assert "5 MRL" in out and "with memory" in out
    model_dir = tmp_path / "m" / "model"
    assert eval_recall_command(str(model_dir), json=True, n=3, ks=(0, 2), threads=None) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["memory"]) == {"0", "2"} and set(report["reset"]) == {"0", "2"}
    assert main(["eval", "recall", "--model", str(model_dir), "--n", "2", "--ks", "1", "--threads", "0"]) == 0
    assert "STM reset" in capsys.readouterr().out

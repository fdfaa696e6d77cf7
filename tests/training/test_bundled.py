"""The bundled tiny checkpoint: loads with its tokenizer, fits the size limit, reproduces its fixed eval."""

from __future__ import annotations

import json

import pytest

import reactor_rt
from reactor_rt.bundled import available, bundled_path, load_model
from reactor_rt.errors import CheckpointError
from reactor_rt.tokenizer import HFTokenizer
from reactor_rt.training.eval_recall import fixed_eval

needs_tiny = pytest.mark.skipif("tiny" not in available(), reason="the tiny checkpoint is not bundled yet")


def test_unknown_bundled_name_is_a_clear_error():
    with pytest.raises(CheckpointError, match="unknown bundled model 'nope'"):
        load_model("nope")


@needs_tiny
def test_tiny_loads_in_eval_mode_with_its_tokenizer_and_is_small():
    model = reactor_rt.load_model("tiny")
    assert not model.training
    assert isinstance(model.tokenizer, HFTokenizer)
    assert model.tokenizer.vocab_size <= model.config.vocab_size
    total = sum(p.stat().st_size for p in bundled_path("tiny").rglob("*") if p.is_file())
    assert total <= 20 * 1024 * 1024, total


@needs_tiny
def test_tiny_reproduces_its_recorded_fixed_eval():
    recorded = json.loads((bundled_path("tiny") / "fixed_eval.json").read_text())
    got = fixed_eval(load_model("tiny"))
    assert got["ks"] == recorded["ks"] and got["n"] == recorded["n"]
    for mode in ("memory_correct", "reset_correct"):
        for k, count in recorded[mode].items():
            # greedy decoding is deterministic; allow one flipped near-tie per cell across machines
            assert abs(got[mode][k] - count) <= 1, (mode, k, got[mode][k], count)
    # and the model really remembers: recall with memory far above the reset ablation
    assert got["memory_correct"]["1"] >= 0.8 * recorded["n"]
    assert sum(got["reset_correct"].values()) <= 0.1 * recorded["n"] * len(recorded["ks"])


@needs_tiny
def test_compare_with_bundled_reports_identity_and_difference(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from reactor_rt.cli_train import compare_with_bundled

    assert compare_with_bundled("micro", bundled_path("tiny")) is None  # not a bundled name
    assert "identical" in compare_with_bundled("tiny", bundled_path("tiny"))
    copy = tmp_path / "copy"
    shutil.copytree(bundled_path("tiny"), copy)
    weights = load_file(str(copy / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 0.5
    save_file(weights, str(copy / "model.safetensors"))
    assert "max |weight difference| 0.5" in compare_with_bundled("tiny", copy)

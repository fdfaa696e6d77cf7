"""scripts/device_numerics.py: the bundled model in another dtype against CPU float32."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "device_numerics.py"


def load_script():
    spec = importlib.util.spec_from_file_location("device_numerics", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bfloat16_on_cpu_stays_close_to_float32_and_remembers_as_much(tmp_path, capsys):
    out = tmp_path / "numerics.json"
    assert load_script().main(["--device", "cpu", "--dtype", "bfloat16", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert "device numerics" in capsys.readouterr().out
    assert r["dtype"] == "bfloat16" and len(r["stm_by_turn"]) == 16
    assert r["decoder_logits_same_stm"]["rel"] < 0.05 and r["encoder"]["rel"] < 0.05
    assert max(t["rel"] for t in r["stm_by_turn"]) < 0.05  # no drift over 16 chained updates
    assert r["decoder_argmax_agreement"] >= 0.95
    for k, n in r["fixed_eval_recorded"].items():  # recall as recorded beside the checkpoint, within 2 of 25
        assert abs(r["fixed_eval_device"][k] - n) <= 2, k


def test_a_missing_device_is_refused_with_a_clear_message(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert load_script().main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err

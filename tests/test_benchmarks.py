"""The benchmark package imports and its cheapest measurements run on tiny sizes (a smoke test)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import attention_variants, conversation_scaling, memory_footprint, suite  # noqa: E402
from benchmarks.baseline import StatelessChat, StatelessDecoder, build_rxt, random_ids  # noqa: E402


def test_baseline_kv_cache_matches_rereading():
    model = build_rxt("tiny")
    base = StatelessDecoder.from_rxt(model, max_seq_len=200)
    reread, kv = StatelessChat(base, "reread"), StatelessChat(base, "kv")
    history = random_ids(40, 1)
    reread.load_history(history)
    kv.load_history(history)
    for turn in range(3):
        query = random_ids(6, 100 + turn)
        assert kv.turn(query, 5) == reread.turn(query, 5)
    assert kv.history == reread.history and len(kv.history) == 40 + 3 * 11
    # the kv mode has fed everything but the last answer token; rewinding restores the state
    assert kv.cache.length == len(kv.history) - 1
    mark = kv.mark()
    kv.turn(random_ids(6, 7), 4)
    kv.rewind(mark)
    assert kv.mark() == mark


def test_baseline_shares_the_rxt_decoder_weights():
    model = build_rxt("tiny")
    base = StatelessDecoder.from_rxt(model, max_seq_len=64)
    assert torch.equal(base.embedding.weight, model.embedding.weight)
    assert torch.equal(base.layers[0].self_attn.qkv.weight, model.decoder_layers[0].self_attn.qkv.weight)
    assert base.layers[0].cross_attn is None and base.config.max_seq_len == 64


def test_conversation_scaling_tiny(tmp_path):
    r = conversation_scaling.measure(quick=True, turns=8, query_len=4, answer_len=3, repeats=1)
    assert r["turns"] == [1, 2, 4, 8]
    assert r["history_tokens"] == [0, 7, 21, 49]
    for name in conversation_scaling.SYSTEMS:
        assert len(r["cpu_ms"][name]) == 4 and all(ms > 0 for ms in r["cpu_ms"][name])
        assert set(r["ratios"][name]) == {8}
    assert r["total_interpolated"]
    text = conversation_scaling.markdown(r)
    assert "| 8 | 49 |" in text and "Total cost" in text
    assert conversation_scaling.plot(r, tmp_path / "c.png").stat().st_size > 1000


def test_memory_footprint_from_real_tensors():
    r = memory_footprint.measure(turns=(1, 2), query_len=4, answer_len=4)
    one, two = r["rows"]
    c = build_rxt("tiny").config
    assert one["stm_bytes"] == two["stm_bytes"] == c.layers * c.stm_slots * c.dim * 4
    per_token = 2 * c.layers * c.kv_heads * c.head_dim * 4
    assert one["kv_bytes"] == 8 * per_token and two["kv_bytes"] == 16 * per_token


def test_attention_variants_small():
    r = attention_variants.measure(quick=True, lengths=(64,))
    assert set(r["cpu_ms"][64]) == set(attention_variants.VARIANTS)
    assert attention_variants.goal(r) is None  # 16k not run
    assert "xSQA" in attention_variants.markdown(r)


def test_suite_writes_results(tmp_path):
    out = tmp_path / "RESULTS.md"
    assert suite.main(["--quick", "--only", "memory", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Goals" in text and "STM vs KV cache" in text and "torch" in text
    assert (tmp_path / "memory_footprint.png").exists()


def test_runtime_overhead_report_states_both_issues_goals():
    from benchmarks.runtime_overhead import report

    r = {"tokens": 64, "turns": 6, "direct_turn_ms": 100.0, "reactor_turn_ms": 112.0, "direct_ttft_ms": 3.0,
         "reactor_ttft_ms": 7.0, "direct_answer_ms": 95.0, "reactor_answer_ms": 99.0, "answer_overhead": 99 / 95,
         "overhead": 1.12, "extra_ttft_ms": 4.0, "tokens_per_s": {1: 100.0, 4: 300.0, 16: 500.0, 64: 700.0},
         "speedup": {1: 1.0, 4: 3.0, 16: 5.0, 64: 7.0}, "overhead_ci": (1.08, 1.16),
         "answer_overhead_ci": (1.01, 1.07), "extra_ttft_ci": (3.5, 4.5)}
    text = report(r)
    assert "<= 15 % / <= 10 %: met / NOT met (+12.0 %)" in text and "1.080-1.160x" in text
    assert "extra TTFT <= 5 ms: met" in text
    assert "16 streams >= 4x / >= 6x one stream: met / NOT met" in text and "64" in text
    assert "compiled" not in text
    assert "decode steps compiled on both paths (--compile)" in report({**r, "compiled": True})
    assert "direct batched calls" not in text  # a run without the direct path's figures
    text = report({**r, "direct_tokens_per_s": {1: 120.0, 16: 540.0}, "direct_speedup": {1: 1.0, 16: 4.5}})
    assert "(6x is 600 tokens/s; direct batched calls, no runtime, reach 540: 4.50x their one stream)" in text
    row_16 = next(line for line in text.splitlines() if line.startswith("16 "))
    assert row_16.split()[-2:] == ["540.0", "4.50x"]
    row_4 = next(line for line in text.splitlines() if line.startswith("4 "))
    assert row_4.split()[-2:] == ["-", "-"]



def test_the_results_put_the_direct_batched_calls_beside_the_reactors_streams(monkeypatch, tmp_path):
    from benchmarks import runtime_overhead

    async def fake_measure(quick, tokens):
        return {"tokens": 64, "turns": 6, "direct_turn_ms": 100.0, "reactor_turn_ms": 108.0, "direct_ttft_ms": 9.0,
                "reactor_ttft_ms": 11.0, "direct_answer_ms": 93.0, "reactor_answer_ms": 97.0,
                "answer_overhead": 97 / 93, "overhead": 1.08, "extra_ttft_ms": 2.0,
                "overhead_ci": (1.05, 1.11), "answer_overhead_ci": (1.02, 1.06), "extra_ttft_ci": (1.5, 2.5),
                "tokens_per_s": {1: 500.0, 4: 1200.0, 16: 2500.0, 64: 3400.0},
                "speedup": {1: 1.0, 4: 2.4, 16: 4.9, 64: 6.8},
                "direct_tokens_per_s": {1: 600.0, 16: 3100.0}, "direct_speedup": {1: 1.0, 16: 5.2}}

    monkeypatch.setattr(runtime_overhead, "measure", fake_measure)
    text, goals = suite._runtime(True, tmp_path)
    assert "| 16 | 2500.0 | 4.90x | 3100.0 | 5.20x |" in text and "| 4 | 1200.0 | 2.40x | — | — |" in text
    by_name = {name: (measured, met) for name, measured, met in goals}
    assert by_name["16 streams >= 6x the tokens/s of one stream (Reactor)"][1] is False
    measured, met = by_name["16 streams / one stream, direct batched calls (the model alone, no runtime)"]
    assert met is None and measured == "5.20x (3100 vs 600 tokens/s; 6x the Reactor's one stream would be 3000)"

def test_direct_streams_batched_end_where_lone_conversations_end():
    from benchmarks.runtime_overhead import DirectSession, DirectStreams, build_model

    model = build_model()
    produced, stms = DirectStreams(model, capacity=4).run(streams=3, turns=2, tokens=4)
    assert produced == 3 * 2 * 4
    lone = DirectSession(model)
    for _ in range(2):
        lone.turn(4)
    assert len(stms) == 3
    for stm in stms:
        torch.testing.assert_close(stm, lone.stm[0], atol=1e-5, rtol=1e-5)
    assert not torch.equal(stms[0], model.init_stm(1)[0])


def test_runtime_overhead_compile_flag_reaches_both_paths(monkeypatch):
    from benchmarks import runtime_overhead

    seen = {}

    async def fake_measure(quick, tokens, compile_decode):
        seen.update(quick=quick, tokens=tokens, compile_decode=compile_decode)
        raise SystemExit(0)

    monkeypatch.setattr(runtime_overhead, "measure", fake_measure)
    with pytest.raises(SystemExit):
        runtime_overhead.main(["--quick", "--compile"])
    assert seen == {"quick": True, "tokens": 64, "compile_decode": True}
    made = []
    monkeypatch.setattr(runtime_overhead, "DecodeBatch", lambda model, capacity, compile: made.append(compile))
    runtime_overhead.DirectSession(runtime_overhead.build_model(), compile_decode=True)
    runtime_overhead.DirectSession(runtime_overhead.build_model())
    assert made == [True, False]  # the direct calls' engine compiles only when asked


def test_overheads_compare_neighbouring_turns():
    from benchmarks.runtime_overhead import paired

    # the host slows down half way: each Reactor turn is 10 % over the direct turn beside it (but one
    # pair that straddles the change), while the ratio of the two medians says +120 %
    direct = [100.0, 100.0, 100.0, 200.0, 200.0]
    reactor = [110.0, 110.0, 220.0, 220.0, 220.0]
    assert abs(paired(reactor, direct, ratio=True) - 1.1) < 1e-9
    assert paired([12.0, 13.0, 11.0], [10.0, 10.0, 10.0], ratio=False) == 2.0


def test_the_median_confidence_interval_is_the_binomial_order_statistics():
    from benchmarks.timing import median_ci

    assert median_ci([float(i) for i in range(1, 101)]) == (40.0, 61.0)  # the textbook ranks for n = 100
    assert median_ci([float(i) for i in range(1, 61)]) == (22.0, 39.0)
    assert median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few samples for 95 %: the whole range
    low, high = median_ci([5.0] * 7 + [1.0, 9.0])
    assert low == high == 5.0
    with pytest.raises(ValueError):
        median_ci([])


def test_the_report_says_which_event_loop_rays_actors_run(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "uvloop" else None)
    monkeypatch.delenv("RAY_USE_UVLOOP", raising=False)
    assert suite.actor_event_loop() == "uvloop"
    monkeypatch.setenv("RAY_USE_UVLOOP", "0")
    assert suite.actor_event_loop().startswith("asyncio")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv("RAY_USE_UVLOOP")
    assert suite.actor_event_loop() == "asyncio (uvloop not installed)"


def test_decode_speed_reports_a_compiled_step_that_cannot_compile_without_failing(monkeypatch):
    """Without a C++ compiler the compiled row says so; the traced and eager figures and goals still come."""
    from benchmarks import decode_speed
    from reactor_rt.model import compiled_step

    def broken(self, *args):
        raise OSError("no compiler")

    monkeypatch.setattr(compiled_step.CompiledRowStep, "__call__", broken)
    monkeypatch.setattr(decode_speed, "BATCHES", (1,))
    r = decode_speed.measure(quick=True, preset="tiny")
    assert r["compiled_ms"] is None and "could not compile" in r["compile_error"]
    compiled = [g for g in decode_speed.goals(r) if "compiled" in g[0]]
    assert len(compiled) == 1 and compiled[0][1].startswith("not measured") and compiled[0][2] is False
    assert "not measured" in decode_speed.markdown(r) and r["precache_ms"]["cpu"] > 0
    assert r["traced_ms"]["cpu"] > 0 and set(r["step_ms"]) == {"traced", "eager"}


def test_the_benchmarks_set_the_actors_openmp_spin_before_torch_loads():
    import os
    import subprocess

    from reactor_rt.openmp import OPENMP_SPIN_COUNT

    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    code = "import os, sys, benchmarks; print('torch' in sys.modules, os.environ['GOMP_SPINCOUNT'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["False", OPENMP_SPIN_COUNT]

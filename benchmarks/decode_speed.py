"""Decode speed of RxT: ms/token at batch 1 (traced, eager, compiled; with vs without the memory K/V
pre-cache), and batched steps.

    python -m benchmarks.decode_speed [--quick]

The default step on a CPU is the traced graph (DecodeBatch's default; reactor_rt/model/traced_step.py);
beside it the eager step (``trace=False``) and the one compiled with torch.compile (``compile=True``,
opt-in; its compile time is printed; left out where it cannot compile, e.g. without a C++ compiler).
With the pre-cache (the design) each interaction projects the STM's memory cross-attention keys/values
once; without it, every decode step projects them again (``cache_memory_kv=False``): that pair is
measured traced (the goal's) and eager. The per-token runs come from benchmarks/model_speed.py
(`decode_per_token`: prefill a 16-token prompt, then time the decode steps). Batched: one DecodeBatch
step over 1, 4 and 16 rows of different lengths, traced and eager. Medians of thread-CPU ms (one torch
thread) over round-robin runs after a warm-up round; wall ms beside them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.baseline import build_rxt, random_ids
from benchmarks.model_speed import decode_per_token
from benchmarks.timing import Clock, Timing, interleaved, median_timing
from reactor_rt.model import DecodeBatch, ReactiveTransformer

__all__ = ["GOAL_MS_PER_TOKEN", "goals", "main", "markdown", "measure"]

GOAL_MS_PER_TOKEN = 1.5
BATCHES = (1, 4, 16)


def _batched_step(model: ReactiveTransformer, stm: torch.Tensor, rows: int, tokens: int,
                  trace: bool) -> Callable[[], Timing]:
    """A run that fills `rows` rows (prompts of 8, 9, ... tokens) and times `tokens` steps; ms per step."""
    db = DecodeBatch(model, capacity=rows, trace=trace)

    def run() -> Timing:
        slots = [db.add(random_ids(8 + i, i), stm=stm, max_new_tokens=tokens + 1) for i in range(rows)]
        db.step()  # emits the prefills' tokens: no forward
        with Clock() as c:
            for _ in range(tokens):
                db.step()
        for s in slots:
            db.remove(s)
        return Timing(c.ms.wall / tokens, c.ms.cpu / tokens)

    return run


def measure(quick: bool = False, preset: str = "tiny") -> dict[str, Any]:
    """ms/token with and without the memory pre-cache, and ms per batched step; returns the figures."""
    torch.set_num_threads(1)
    repeats, tokens = (9, 32) if quick else (11, 64)
    model = build_rxt(preset)
    stm = model.init_stm(1) + 0.5 * torch.randn(model.init_stm(1).shape)  # a non-trivial memory
    prompt = random_ids(16, 1)
    with torch.no_grad():
        traced = decode_per_token(model, stm, prompt, tokens, trace=True)
        pre = decode_per_token(model, stm, prompt, tokens, trace=False)
        traced_no_pre = decode_per_token(model, stm, prompt, tokens, cache_memory_kv=False, trace=True)
        no_pre = decode_per_token(model, stm, prompt, tokens, cache_memory_kv=False, trace=False)
        runs = {"traced": lambda: Timing(*traced()), "traced_no_precache": lambda: Timing(*traced_no_pre()),
                "precache": lambda: Timing(*pre()), "no_precache": lambda: Timing(*no_pre())}
        started, compile_error = time.perf_counter(), None
        try:
            compiled = decode_per_token(model, stm, prompt, tokens, compile=True)
            runs["compiled"] = lambda: Timing(*compiled())
        except RuntimeError as exc:
            compile_error = str(exc).split(";")[0]
        compile_s = time.perf_counter() - started
        samples = interleaved(runs, repeats)
        steps = interleaved({f"{mode} {b}": _batched_step(model, stm, b, tokens, mode == "traced")
                             for b in BATCHES for mode in ("traced", "eager")}, repeats)
    per_token = {name: median_timing(s) for name, s in samples.items()}
    step = {mode: {b: median_timing(steps[f"{mode} {b}"])._asdict() for b in BATCHES} for mode in ("traced", "eager")}
    return {
        "preset": preset, "repeats": repeats, "tokens": tokens,
        "traced_ms": per_token["traced"]._asdict(), "traced_best_cpu_ms": min(s.cpu for s in samples["traced"]),
        "traced_no_precache_ms": per_token["traced_no_precache"]._asdict(),
        "precache_ms": per_token["precache"]._asdict(), "no_precache_ms": per_token["no_precache"]._asdict(),
        "precache_best_cpu_ms": min(s.cpu for s in samples["precache"]),
        "compiled_ms": per_token["compiled"]._asdict() if "compiled" in per_token else None,
        "compiled_best_cpu_ms": min(s.cpu for s in samples["compiled"]) if "compiled" in samples else None,
        "compile_s": compile_s, "compile_error": compile_error,
        "step_ms": step,
    }


def goals(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) for the decode speed and the pre-cache saving."""
    traced, pre, no_pre = r["traced_ms"]["cpu"], r["precache_ms"]["cpu"], r["no_precache_ms"]["cpu"]
    traced_no_pre = r["traced_no_precache_ms"]["cpu"]
    compiled_goal = f"decode <= {GOAL_MS_PER_TOKEN} ms/token, `{r['preset']}`, batch 1, compiled (`DecodeBatch(compile=True)`)"
    if r["compiled_ms"] is None:
        compiled_row = (compiled_goal, f"not measured: {r['compile_error']}", False)
    else:
        compiled = r["compiled_ms"]["cpu"]
        compiled_row = (compiled_goal, f"{compiled:.3f} ms/token (median CPU; best run {r['compiled_best_cpu_ms']:.3f}; "
                        f"eager / compiled {pre / compiled:.2f}x; {r['compile_s']:.0f} s to compile)",
                        compiled <= GOAL_MS_PER_TOKEN)
    return [
        (f"decode <= {GOAL_MS_PER_TOKEN} ms/token, `{r['preset']}`, batch 1 (traced, the default)",
         f"{traced:.3f} ms/token (median CPU; best run {r['traced_best_cpu_ms']:.3f}; eager / traced "
         f"{pre / traced:.2f}x)", traced <= GOAL_MS_PER_TOKEN),
        (f"decode <= {GOAL_MS_PER_TOKEN} ms/token, `{r['preset']}`, batch 1, eager (`trace=False`)",
         f"{pre:.3f} ms/token (median CPU; best run {r['precache_best_cpu_ms']:.3f})", pre <= GOAL_MS_PER_TOKEN),
        compiled_row,
        ("memory K/V pre-caching saves ~20-25 % of decode time (architecture claim)",
         f"{100 * (1 - traced / traced_no_pre):.1f} % saved, traced ({traced_no_pre:.3f} -> {traced:.3f} ms/token); "
         f"eager {100 * (1 - pre / no_pre):.1f} % ({no_pre:.3f} -> {pre:.3f})", 1 - traced / traced_no_pre >= 0.20),
    ]


def markdown(r: dict[str, Any]) -> str:
    """The figures as Markdown tables."""
    traced, pre, no_pre = r["traced_ms"], r["precache_ms"], r["no_precache_ms"]
    traced_no_pre = r["traced_no_precache_ms"]
    lines = [
        f"`{r['preset']}` preset, batch 1, 16-token prompt then {r['tokens']} decode steps; 1 torch thread; "
        f"median of {r['repeats']} round-robin runs after a warm-up round.",
        "",
        "| decode, per token | CPU ms | wall ms | vs eager with pre-cache (CPU) |",
        "|---|---:|---:|---:|",
        f"| traced step (the default on a CPU), KV cache + memory K/V pre-cache | {traced['cpu']:.3f} | "
        f"{traced['wall']:.3f} | {traced['cpu'] / pre['cpu']:.2f}x |",
        f"| traced step, KV cache, memory K/V projected every token | {traced_no_pre['cpu']:.3f} | "
        f"{traced_no_pre['wall']:.3f} | {traced_no_pre['cpu'] / pre['cpu']:.2f}x |",
        f"| eager step, KV cache + memory K/V pre-cache | {pre['cpu']:.3f} | {pre['wall']:.3f} | 1.00x |",
        f"| eager step, KV cache, memory K/V projected every token | {no_pre['cpu']:.3f} | {no_pre['wall']:.3f} | "
        f"{no_pre['cpu'] / pre['cpu']:.2f}x |",
        _compiled_line(r, pre["cpu"]),
        "",
        "| batched decode step (engine, no runtime) | traced CPU ms/step | CPU ms/token | tokens/s vs 1 row "
        "| eager CPU ms/step | tokens/s vs 1 row |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    tr, ea = r["step_ms"]["traced"], r["step_ms"]["eager"]
    for b in tr:
        lines.append(f"| {b} row{'s' * (b > 1)} | {tr[b]['cpu']:.3f} | {tr[b]['cpu'] / b:.3f} | "
                     f"{b * tr[1]['cpu'] / tr[b]['cpu']:.2f}x | {ea[b]['cpu']:.3f} | {b * ea[1]['cpu'] / ea[b]['cpu']:.2f}x |")
    return "\n".join(lines)


def _compiled_line(r: dict[str, Any], eager_cpu: float) -> str:
    if r["compiled_ms"] is None:
        return f"| KV cache + pre-cache, compiled step (`compile=True`) | not measured: {r['compile_error']} | | |"
    c = r["compiled_ms"]
    return (f"| KV cache + pre-cache, compiled step (`compile=True`; {r['compile_s']:.0f} s to compile) | "
            f"{c['cpu']:.3f} | {c['wall']:.3f} | {c['cpu'] / eager_cpu:.2f}x |")


def main(argv: list[str] | None = None) -> int:
    """Measure and print the tables."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and tokens")
    args = parser.parse_args(argv)
    r = measure(args.quick)
    print(markdown(r))
    for g in goals(r):
        print(g)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

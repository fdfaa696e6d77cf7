"""Attention variants: forward time of one bidirectional (encoder-style) attention layer.

    python -m benchmarks.attention_variants [--quick]

The project's own `Attention` module (fused QKV projection, RoPE on queries and keys,
F.scaled_dot_product_attention, output projection) at dim 256 with 8 heads of 32, batch 1, no mask.
The variants differ only in head counts (query heads, key/value heads):

    MHA 8/8, GQA 8/2, MQA 8/1, SQA 4/2, sSQA 4/4 (50 % / 50 %), xSQA 2/2 (25 % / 25 %)

SQA cuts the *query* heads, so the score and value matmuls shrink with it (GQA/MQA only shrink the
key/value projections and cache). Medians of thread-CPU ms with one torch thread, variants run
round-robin at each length; wall ms beside them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from benchmarks.plots import figure, save
from benchmarks.timing import Clock, Timing, interleaved, median_timing
from reactor_rt.model.attention import Attention, RotaryEmbedding

__all__ = ["DIM", "HEADS", "QUICK_LONG", "VARIANTS", "goal", "main", "markdown", "measure", "plot"]

DIM, HEADS = 256, 8
VARIANTS = {"MHA": (8, 8), "GQA": (8, 2), "MQA": (8, 1), "SQA": (4, 2), "sSQA": (4, 4), "xSQA": (2, 2)}
GOAL_LENGTH, GOAL_SPEEDUP = 16384, 1.5
QUICK_LONG = ["GQA", "SQA", "sSQA", "xSQA"]  # quick mode above 4k tokens: MHA, MQA skipped


def _forward_run(attn: Attention, x: torch.Tensor, cis: torch.Tensor):  # type: ignore[no-untyped-def]
    @torch.inference_mode()
    def run() -> Timing:
        with Clock() as c:
            q, k, v = attn.project_qkv(x, cis)
            attn.attend(q, k, v)  # bidirectional: no mask, not causal
        return c.ms

    return run


def measure(quick: bool = False, lengths: tuple[int, ...] = (1024, 4096, 16384)) -> dict[str, Any]:
    """Median forward ms of each variant at each length; returns the figures."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    modules = {name: Attention(DIM, HEADS, hq, hkv, fused=True).eval() for name, (hq, hkv) in VARIANTS.items()}
    rope = RotaryEmbedding(DIM // HEADS, max(lengths))
    plan = {}  # length -> (repeats, warm-up rounds, variants)
    for t in lengths:
        if t <= 1024:
            plan[t] = (5, 1, list(VARIANTS)) if quick else (9, 2, list(VARIANTS))
        elif t <= 4096:
            plan[t] = (3, 1, list(VARIANTS)) if quick else (5, 1, list(VARIANTS))
        else:  # seconds per call: quick runs only what the goal compares, relying on the warm-up at 4k
            plan[t] = (2, 0, QUICK_LONG) if quick else (3, 1, list(VARIANTS))
    cpu: dict[int, dict[str, float]] = {}
    wall: dict[int, dict[str, float]] = {}
    for t in lengths:
        x = torch.randn(1, t, DIM)
        repeats, warmup, names = plan[t]
        runs = {name: _forward_run(modules[name], x, rope.tables(t)) for name in names}
        samples = interleaved(runs, repeats, warmup)
        med = {name: median_timing(s) for name, s in samples.items()}
        cpu[t] = {name: m.cpu for name, m in med.items()}
        wall[t] = {name: m.wall for name, m in med.items()}
    return {"quick": quick, "lengths": list(lengths), "plan": plan, "cpu_ms": cpu, "wall_ms": wall}


def goal(r: dict[str, Any]) -> tuple[str, str, bool] | None:
    """(goal, measured, met) for SQA >= 1.5x faster than GQA at 16k tokens; None if 16k was not run."""
    if GOAL_LENGTH not in r["cpu_ms"]:
        return None
    row = r["cpu_ms"][GOAL_LENGTH]
    speedup = row["GQA"] / row["SQA"]
    measured = (f"SQA {speedup:.2f}x faster than GQA (sSQA {row['GQA'] / row['sSQA']:.2f}x, "
                f"xSQA {row['GQA'] / row['xSQA']:.2f}x)")
    return f"SQA >= {GOAL_SPEEDUP}x faster than GQA at {GOAL_LENGTH // 1024}k tokens", measured, speedup >= GOAL_SPEEDUP


def _tokens(t: int) -> str:
    return f"{t // 1024}k" if t % 1024 == 0 else str(t)


def _speedups(row: dict[str, float], name: str) -> str:
    if name not in row:
        return "skipped"
    vs_mha = f"{row['MHA'] / row[name]:.2f}x" if "MHA" in row else "-"
    return f"{row['GQA'] / row[name]:.2f}x / {vs_mha}"


def markdown(r: dict[str, Any]) -> str:
    """The figures as Markdown tables."""
    reps = ", ".join(f"{_tokens(t)}: {rep} runs after {w} warm-up round{'s' * (w != 1)}"
                     + ("" if len(names) == len(VARIANTS) else f", {'/'.join(names)} only")
                     for t, (rep, w, names) in r["plan"].items())
    lines = [
        f"One attention layer forward (projections + RoPE + SDPA + output), dim {DIM}, {HEADS} heads of "
        f"{DIM // HEADS}, batch 1, bidirectional; 1 torch thread; medians, round-robin ({reps}).",
        "",
        "Thread-CPU ms (wall ms in brackets):",
        "",
        "| variant | query/kv heads | " + " | ".join(f"{_tokens(t)} tokens" for t in r["lengths"]) + " |",
        "|---|---|" + "---:|" * len(r["lengths"]),
    ]
    for name, (hq, hkv) in VARIANTS.items():
        cells = [f"{r['cpu_ms'][t][name]:.1f} ({r['wall_ms'][t][name]:.1f})" if name in r["cpu_ms"][t] else "skipped"
                 for t in r["lengths"]]
        lines.append(f"| {name} | {hq}/{hkv} | " + " | ".join(cells) + " |")
    lines += ["", "Speed-up over GQA / over MHA (CPU):", "",
              "| variant | " + " | ".join(_tokens(t) for t in r["lengths"]) + " |",
              "|---|" + "---:|" * len(r["lengths"])]
    for name in VARIANTS:
        cells = [_speedups(r["cpu_ms"][t], name) for t in r["lengths"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(r: dict[str, Any], path: str | Path) -> Path:
    """Forward time per variant and length (log scale) -> a PNG at path."""
    fig, ax = figure(figsize=(5.5, 3.5), dpi=90)
    for name in VARIANTS:
        lengths = [t for t in r["lengths"] if name in r["cpu_ms"][t]]
        ax.plot(lengths, [r["cpu_ms"][t][name] for t in lengths], "-o", label=name, markersize=4)
    ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel="CPU ms per forward",
           title=f"attention layer forward, dim {DIM}, {HEADS} heads")
    ax.set_xticks(r["lengths"], [_tokens(t) for t in r["lengths"]])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the tables and write the plot."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats; above 4k tokens only GQA and the SQA variants")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--plot", default=str(Path(__file__).with_name("attention_variants.png")))
    args = parser.parse_args(argv)
    r = measure(args.quick, tuple(args.lengths))
    print(markdown(r))
    print(goal(r))
    print(f"plot: {plot(r, args.plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

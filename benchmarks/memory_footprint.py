"""Memory per conversation: RxT's STM (constant) vs the stateless baseline's KV cache at turn N.

    python -m benchmarks.memory_footprint [--turns 1 8 32 128]

Bytes are read off real tensors: the STM after N real memory updates (encode + update_memory of N
interactions), the memory K/V pre-cache and one-row DecodeBatch KV cache RxT uses while answering,
and the baseline's KV cache allocated for exactly the N-turn history and filled by prefilling it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from benchmarks.baseline import StatelessDecoder, build_rxt, random_ids
from benchmarks.plots import figure, save
from reactor_rt.model import DecodeBatch

__all__ = ["main", "markdown", "measure", "plot"]


@torch.inference_mode()
def measure(turns: tuple[int, ...] = (1, 8, 32, 128), query_len: int = 16, answer_len: int = 16,
            preset: str = "tiny") -> dict[str, Any]:
    """Bytes held per conversation after each of `turns` turns; returns the figures."""
    torch.set_num_threads(1)
    model = build_rxt(preset)
    per_turn = query_len + answer_len
    base = StatelessDecoder.from_rxt(model, max_seq_len=max(turns) * per_turn)
    stm = model.init_stm(1)
    db = DecodeBatch(model, capacity=1)  # the self-attention cache of the interaction being answered
    rows = []
    done = 0
    for n in sorted(turns):
        while done < n:  # real memory updates: the STM is written once per interaction
            interaction = random_ids(per_turn, done)[None]
            stm = model.update_memory(stm, model.encode(interaction))
            done += 1
        mem_kv = model.memory_kv(stm)
        history = random_ids(n * per_turn, 10_000 + n)
        cache = base.new_cache(capacity=history.numel())
        base(history[None], cache)  # prefill: the cache now holds the whole history
        rows.append({
            "turn": n, "history_tokens": history.numel(),
            "stm_bytes": stm.nbytes,
            "rxt_turn_bytes": stm.nbytes + mem_kv.k.nbytes + mem_kv.v.nbytes + db.k_cache.nbytes + db.v_cache.nbytes,
            "kv_bytes": cache.used_bytes, "kv_allocated": cache.allocated_bytes,
            "history_ids_bytes": history.nbytes,
        })
    return {"preset": preset, "query_len": query_len, "answer_len": answer_len, "rows": rows,
            "stm_shape": list(stm.shape), "dtype": str(stm.dtype).removeprefix("torch."),
            "decode_cache_len": db.max_len}


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


def goal_line(r: dict[str, Any]) -> str:
    """One sentence: STM vs the baseline's KV cache at the last turn."""
    last = r["rows"][-1]
    return (f"turn {last['turn']}: baseline KV cache {_kib(last['kv_bytes'])} vs RxT STM {_kib(last['stm_bytes'])} "
            f"({last['kv_bytes'] / last['stm_bytes']:.1f}x)")


def markdown(r: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    lines = [
        f"`{r['preset']}` preset, {r['dtype']}; {r['query_len']}+{r['answer_len']} tokens per turn. STM shape "
        f"{tuple(r['stm_shape'])} (batch, layers, slots, dim). RxT while answering also holds the memory K/V "
        f"pre-cache and a {r['decode_cache_len']}-position KV cache of the current interaction (both constant).",
        "",
        "| turn N | history tokens | RxT STM | RxT while answering | baseline KV cache | KV cache / STM |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['turn']} | {row['history_tokens']} | {_kib(row['stm_bytes'])} | {_kib(row['rxt_turn_bytes'])} "
            f"| {_kib(row['kv_bytes'])} | {row['kv_bytes'] / row['stm_bytes']:.2f}x |"
        )
    return "\n".join(lines)


def plot(r: dict[str, Any], path: str | Path) -> Path:
    """Bytes per conversation vs turn -> a PNG at path."""
    turns = [row["turn"] for row in r["rows"]]
    fig, ax = figure(figsize=(5.5, 3.5), dpi=90)
    ax.plot(turns, [row["stm_bytes"] / 1024 for row in r["rows"]], "-o", label="RxT STM")
    ax.plot(turns, [row["rxt_turn_bytes"] / 1024 for row in r["rows"]], "--.", label="RxT while answering")
    ax.plot(turns, [row["kv_bytes"] / 1024 for row in r["rows"]], "-s", label="baseline KV cache")
    ax.set(xscale="log", yscale="log", xlabel="turn", ylabel="KiB per conversation",
           title=f"memory per conversation ({r['preset']})")
    ax.set_xticks(turns, [str(t) for t in turns])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table and write the plot."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--turns", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--plot", default=str(Path(__file__).with_name("memory_footprint.png")))
    args = parser.parse_args(argv)
    r = measure(tuple(args.turns))
    print(markdown(r))
    print(goal_line(r))
    print(f"plot: {plot(r, args.plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-turn latency over a long conversation: RxT vs a stateless decoder-only baseline of the same blocks.

    python -m benchmarks.conversation_scaling [--quick] [--turns 128]

Every turn is a `query_len`-token query and an `answer_len`-token greedy answer (untrained models, [EOS]
disabled, so every system does exactly that work). Systems, measured round-robin at each sampled turn:

* RxT: memory K/V pre-cache, prefill the query, generate the answer (DecodeBatch), encode query +
  answer, update the STM. "answer only" is the part the user waits for (the update runs afterwards).
  Its decode steps run eagerly here (``trace=False``), as the baselines' do: the comparison is of the
  architectures, not of how a step is run (traced, a 1-row step takes ~0.6x the time; decode_speed).
* stateless, re-reading: prefill history + query from scratch, generate the answer.
* stateless, persistent KV cache: prefill only the new tokens, generate the answer over the cached
  history (prefix caching).

The RxT conversation is real: every turn is run once (untimed) and the STM before each sampled turn is
kept. The baselines' cost depends only on the history length, so they start each sampled turn from a
history of random tokens of exactly the length the conversation has reached. Then `repeats` rounds
(after one untimed round) each time every sampled turn of every system from its saved state, so load
drift on the shared machine spreads over all turns and systems alike. Figures are medians of
thread-CPU ms (one torch thread), wall ms beside them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.baseline import StatelessChat, StatelessDecoder, build_rxt, random_ids
from benchmarks.plots import figure, save
from benchmarks.timing import Clock, Timing, median_timing
from reactor_rt.model import DecodeBatch, ReactiveTransformer

__all__ = ["SYSTEMS", "RxTChat", "main", "markdown", "measure", "plot"]

SYSTEMS = {
    "rxt": "RxT (answer + memory update)",
    "rxt_answer": "RxT answer only (update in background)",
    "reread": "stateless, re-reads history",
    "kv": "stateless, persistent KV cache",
}
RATIO_TURNS = (8, 32, 128)


class RxTChat:
    """One RxT conversation: each turn answers from the STM, then writes query + answer into it."""

    def __init__(self, model: ReactiveTransformer) -> None:
        self.model = model
        self.db = DecodeBatch(model, capacity=1, trace=False)  # eager, like the baselines (module doc)
        self.stm = model.init_stm(1)

    @torch.inference_mode()
    def turn(self, query: torch.Tensor, answer_len: int) -> tuple[Timing, Timing]:
        """One interaction; returns (answer time, answer + memory update time) and advances the STM."""
        model = self.model
        with Clock() as total:
            with Clock() as answer_clock:
                slot = self.db.add(query, memory_kv=model.memory_kv(self.stm), max_new_tokens=answer_len)
                answer: list[int] = []
                while self.db.active:
                    answer += [o.token for o in self.db.step()]
                self.db.remove(slot)
            interaction = torch.cat([query, torch.tensor(answer)])[None]  # (1, Q + A)
            self.stm = model.update_memory(self.stm, model.encode(interaction))
        return answer_clock.ms, total.ms


def sampled_turns(quick: bool, last: int) -> list[int]:
    """Turns to time: powers of two (quick), or 1-4 then every 4th turn."""
    if not quick:
        return sorted({*range(1, min(last, 4) + 1), *range(4, last + 1, 4), last})
    turns, t = [], 1
    while t < last:
        turns.append(t)
        t *= 2
    return [*turns, last]


def measure(quick: bool = False, turns: int = 128, query_len: int = 16, answer_len: int = 16,
            repeats: int | None = None, preset: str = "tiny") -> dict[str, Any]:
    """Time the three systems side by side at the sampled turns; returns the figures (ms)."""
    torch.set_num_threads(1)
    # the host's speed swings within seconds: more rounds in quick mode too (medians), it is cheap
    repeats = repeats or 15
    model = build_rxt(preset)
    per_turn = query_len + answer_len
    base = StatelessDecoder.from_rxt(model, max_seq_len=turns * per_turn + 1)
    rxt = RxTChat(model)
    sample = sampled_turns(quick, turns)
    # the state before each sampled turn: RxT's STM from one real conversation (every turn run), the
    # baselines' histories of random tokens of the length reached
    stms: dict[int, torch.Tensor] = {}
    for n in range(1, sample[-1] + 1):
        if n in sample:
            stms[n] = rxt.stm
        if n < sample[-1]:
            rxt.turn(random_ids(query_len, n + 100_000), answer_len)
    histories = {n: random_ids((n - 1) * per_turn, 10_000 + n) for n in sample}
    reread = StatelessChat(base, "reread")
    kv_chats = {}
    for n in sample:
        chat = StatelessChat(base, "kv", capacity=(n - 1) * per_turn + query_len + answer_len + 1)
        chat.load_history(histories[n])
        kv_chats[n] = (chat, chat.mark())
    queries = {n: random_ids(query_len, n) for n in sample}

    def run_rxt(n: int) -> dict[str, Timing]:
        rxt.stm = stms[n]
        answer, total = rxt.turn(queries[n], answer_len)
        return {"rxt_answer": answer, "rxt": total}

    def run_reread(n: int) -> dict[str, Timing]:
        reread.load_history(histories[n])  # untimed: only sets the token list
        with Clock() as c:
            reread.turn(queries[n], answer_len)
        return {"reread": c.ms}

    def run_kv(n: int) -> dict[str, Timing]:
        chat, mark = kv_chats[n]
        chat.rewind(mark)
        with Clock() as c:
            chat.turn(queries[n], answer_len)
        return {"kv": c.ms}

    samples: dict[str, dict[int, list[Timing]]] = {name: {n: [] for n in sample} for name in SYSTEMS}
    # round-robin over turns and systems alike: a round times every sampled turn of every system, so
    # load drift during the run spreads over all turns (a turn-N / turn-1 ratio compares like with like)
    for round_ in range(repeats + 1):  # round 0: warm-up, untimed
        for n in sample:
            for run in (run_rxt, run_reread, run_kv):
                for name, t in run(n).items():
                    if round_:
                        samples[name][n].append(t)
    samples_by_turn = {name: [samples[name][n] for n in sample] for name in SYSTEMS}
    med = {name: [median_timing(s) for s in samples_by_turn[name]] for name in SYSTEMS}
    cpu = {name: [t.cpu for t in med[name]] for name in SYSTEMS}
    all_turns = np.arange(1, turns + 1)
    # total cost of the whole conversation: the sum over every turn (linear interpolation between the
    # sampled turns in quick mode, where not every turn is timed)
    totals = {name: float(np.interp(all_turns, sample, cpu[name]).sum()) for name in SYSTEMS}
    # turns 8, 32, 128 when sampled; else (a short run) the last turn
    ratio_turns = [t for t in RATIO_TURNS if t in sample] or sample[-1:]
    ratios = {name: {t: cpu[name][sample.index(t)] / cpu[name][0] for t in ratio_turns} for name in SYSTEMS}
    return {
        "preset": preset, "quick": quick, "query_len": query_len, "answer_len": answer_len,
        "repeats": repeats, "turns": sample, "last_turn": turns,
        "history_tokens": [(n - 1) * per_turn for n in sample],
        "cpu_ms": cpu, "wall_ms": {name: [t.wall for t in med[name]] for name in SYSTEMS},
        "total_cpu_ms": totals, "total_interpolated": len(sample) < turns, "ratios": ratios,
        "params": {"rxt": model.num_parameters(), "rxt_decoder": _decoder_params(model),
                   "baseline": sum(p.numel() for p in base.parameters())},
    }


def _decoder_params(model: ReactiveTransformer) -> int:
    parts = [model.embedding, model.decoder_layers, model.decoder_norm]
    return sum(p.numel() for part in parts for p in part.parameters())


def goal(r: dict[str, Any]) -> tuple[str, str, bool]:
    """(goal, measured, met) for RxT turn-last / turn-1 <= 1.1."""
    last = r["turns"][-1]
    ratio = r["cpu_ms"]["rxt"][-1] / r["cpu_ms"]["rxt"][0]
    reread = r["cpu_ms"]["reread"][-1] / r["cpu_ms"]["reread"][0]
    kv = r["cpu_ms"]["kv"][-1] / r["cpu_ms"]["kv"][0]
    measured = (f"RxT {ratio:.2f}x (answer only {r['cpu_ms']['rxt_answer'][-1] / r['cpu_ms']['rxt_answer'][0]:.2f}x);"
                f" re-reading baseline {reread:.2f}x; KV-cache baseline {kv:.2f}x")
    return f"RxT turn-{last} / turn-1 latency <= 1.1", measured, ratio <= 1.1


def markdown(r: dict[str, Any]) -> str:
    """The figures as Markdown tables."""
    p = r["params"]
    lines = [
        f"`{r['preset']}` preset, untrained, greedy; {r['query_len']}-token query + {r['answer_len']}-token "
        f"answer per turn; 1 torch thread; median of {r['repeats']} rounds after a warm-up round, each round "
        "timing every sampled turn of every system (round-robin over turns and systems). "
        f"Parameters: RxT {p['rxt'] / 1e6:.2f}M in all (decoder {p['rxt_decoder'] / 1e6:.2f}M), "
        f"stateless baseline {p['baseline'] / 1e6:.2f}M (RxT's decoder minus memory cross-attention).",
        "",
        "RxT turn = memory K/V pre-cache + query prefill + answer + encode + STM update, in a real conversation "
        "(the STM carries over every turn). Re-reading baseline = prefill history + query, then answer. KV-cache "
        "baseline = prefill only the new tokens over the cached history (prefix caching), then answer. The "
        "baselines start each sampled turn from a random history of the length the conversation has reached "
        "(their cost depends only on that length). Same query at each turn for all systems.",
        "",
        "Per-turn latency, thread-CPU ms (wall ms in brackets):",
        "",
        "| turn | history tokens | " + " | ".join(SYSTEMS.values()) + " |",
        "|---:|---:|" + "---:|" * len(SYSTEMS),
    ]
    for i, n in enumerate(r["turns"]):
        cells = [f"{r['cpu_ms'][s][i]:.1f} ({r['wall_ms'][s][i]:.1f})" for s in SYSTEMS]
        lines.append(f"| {n} | {r['history_tokens'][i]} | " + " | ".join(cells) + " |")
    lines += ["", "Ratio turn-N / turn-1 (CPU):", "",
              "| system | " + " | ".join(f"turn {t}" for t in r["ratios"]["rxt"]) + " |",
              "|---|" + "---:|" * len(r["ratios"]["rxt"])]
    for s, label in SYSTEMS.items():
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}x" for v in r["ratios"][s].values()) + " |")
    how = "interpolated linearly between the sampled turns" if r["total_interpolated"] else "every turn timed"
    rxt_total = r["total_cpu_ms"]["rxt"]
    lines += ["", f"Total cost of the {r['last_turn']}-turn conversation, CPU seconds ({how}):", "",
              "| system | total s | vs RxT |", "|---|---:|---:|"]
    for s, label in SYSTEMS.items():
        lines.append(f"| {label} | {r['total_cpu_ms'][s] / 1000:.2f} | {r['total_cpu_ms'][s] / rxt_total:.2f}x |")
    return "\n".join(lines)


def plot(r: dict[str, Any], path: str | Path) -> Path:
    """Per-turn latency and cumulative cost curves -> a PNG at path."""
    turns = np.arange(1, r["last_turn"] + 1)
    fig, (left, right) = figure(1, 2, figsize=(10, 3.8), dpi=90)
    styles = {"rxt": "-o", "rxt_answer": "--.", "reread": "-s", "kv": "-^"}
    for s, label in SYSTEMS.items():
        left.plot(r["turns"], r["cpu_ms"][s], styles[s], label=label, markersize=4)
        cumulative = np.cumsum(np.interp(turns, r["turns"], r["cpu_ms"][s])) / 1000
        right.plot(turns, cumulative, styles[s][:-1] if s != "rxt_answer" else "--", label=label)
    left.set(title="latency of turn N", xlabel="turn", ylabel="CPU ms per turn")
    right.set(title="cumulative cost of the conversation", xlabel="turn", ylabel="CPU seconds")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.suptitle(f"RxT vs stateless baseline ({r['preset']}, {r['query_len']}+{r['answer_len']} tokens/turn)",
                 fontsize=10)
    return save(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its tables and write the plot."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="sample turns 1, 2, 4, ... instead of every turn")
    parser.add_argument("--turns", type=int, default=128)
    parser.add_argument("--plot", default=str(Path(__file__).with_name("conversation_latency.png")))
    args = parser.parse_args(argv)
    r = measure(args.quick, args.turns)
    print(markdown(r))
    print(goal(r))
    print(f"plot: {plot(r, args.plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

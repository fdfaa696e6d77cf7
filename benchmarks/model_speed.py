"""Model speed on this CPU: decode ms/token (with/without the memory K/V pre-cache and the self-attention
KV cache), memory-update ms, per-turn time over a long conversation, MoE dense vs sparse paths.

    .venv/bin/python -m benchmarks.model_speed [--quick] [--preset tiny] [--threads 1]

Every figure is a median over repeats after a warm-up, given twice: wall-clock ms and the CPU ms of the
benchmark thread. With one torch thread every op runs on that thread, so CPU ms is what a step costs
on a free core; wall ms also counts the time other processes take the core away (this 2-core machine
is shared), so compare ratios on the CPU column. The model is untrained: its [EOS] is disabled so that
every answer has exactly the requested length (the work per token is the same).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from reactor_rt.model import DecodeBatch, MemoryKV, ReactiveTransformer, RxTConfig
from reactor_rt.model.layers import MoE
from reactor_rt.tokenizer import ByteTokenizer

__all__ = ["main"]

Timing = tuple[float, float]  # (wall ms, cpu ms)


class _NoEosTokenizer(ByteTokenizer):
    """Byte tokenizer whose [EOS] can never be sampled, so answers run to their budget."""

    def __init__(self) -> None:
        super().__init__()
        self.eos_id = -1


class _Clock:
    """Wall and thread-CPU time of a block, in ms."""

    def __enter__(self) -> _Clock:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = 1000 * (time.perf_counter() - self.wall)
        self.cpu = 1000 * (time.thread_time() - self.cpu)

    @property
    def ms(self) -> Timing:
        return self.wall, self.cpu


def _median(samples: list[Timing]) -> Timing:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def _time_calls(fn: Callable[[], object], repeats: int, warmup: int = 2) -> Timing:
    """Median ms of one call of fn."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        with _Clock() as c:
            fn()
        samples.append(c.ms)
    return _median(samples)


def _interleaved(runs: dict[str, Callable[[], Timing]], repeats: int) -> dict[str, list[Timing]]:
    """Samples of each run, taken round-robin, so that load changes on the shared machine hit every
    run alike and the ratios stay fair."""
    for run in runs.values():
        run()  # warm-up
    samples: dict[str, list[Timing]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(run())
    return samples


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(8, 260, (n,), generator=torch.Generator().manual_seed(seed))


def decode_per_token(
    model: ReactiveTransformer, stm: torch.Tensor, prompt: torch.Tensor, tokens: int, cache_memory_kv: bool = True,
    compile: bool = False, trace: bool | None = None,
) -> Callable[[], Timing]:
    """A run that prefills, then times `tokens` KV-cached decode steps; returns ms/token. compile=True:
    the compiled one-row step (`DecodeBatch(compile=True)`; compiled here, before any run); trace: as
    `DecodeBatch`'s (None: traced on a CPU, with the memory pre-cache)."""
    db = DecodeBatch(model, capacity=1, cache_memory_kv=cache_memory_kv, compile=compile, trace=trace)

    def run() -> Timing:
        slot = db.add(prompt, stm=stm, max_new_tokens=tokens + 1)
        db.step()  # the prefill's token: no forward for it
        with _Clock() as c:
            for _ in range(tokens):
                db.step()
        db.remove(slot)
        return c.wall / tokens, c.cpu / tokens

    return run


def decode_uncached_per_token(
    model: ReactiveTransformer, mem: MemoryKV, prompt: torch.Tensor, tokens: int
) -> Callable[[], Timing]:
    """Greedy decoding that re-runs the decoder over the whole sequence for every token (no KV cache)."""

    def run() -> Timing:
        seq = prompt[None]
        with _Clock() as c:
            for _ in range(tokens):
                nxt = model.decode(seq, memory_kv=mem)[:, -1].argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], dim=1)
        return c.wall / tokens, c.cpu / tokens

    return run


def conversation_turn_times(
    model: ReactiveTransformer, turns: int, query_len: int, answer_len: int, conversations: int
) -> list[list[Timing]]:
    """ms of each turn of several conversations run side by side (turn by turn, so that they share the
    machine's load): prefill the query, generate the answer, encode query+answer, update the STM.
    Returns, per turn, one timing per conversation."""
    db = DecodeBatch(model, capacity=1)
    stms = [model.init_stm(1) for _ in range(conversations)]
    out = []
    for turn in range(turns):
        row = []
        for i in range(conversations):
            query = _ids(query_len, i * 1000 + turn)
            with _Clock() as c:
                slot = db.add(query, memory_kv=model.memory_kv(stms[i]), max_new_tokens=answer_len)
                answer = []
                while db.active:
                    answer += [o.token for o in db.step()]
                db.remove(slot)
                interaction = torch.cat([query, torch.tensor(answer)])[None]
                stms[i] = model.update_memory(stms[i], model.encode(interaction))
            row.append(c.ms)
        out.append(row)
    return out


def moe_paths(dim: int, ff_dim: int, experts: int, top_k: int, sizes: list[int], repeats: int) -> list[str]:
    """CPU ms of one MoE layer forward for n tokens through the one-token, dense and sparse paths."""
    torch.manual_seed(0)
    moe = MoE(dim, ff_dim, experts, top_k).eval()
    lines = []
    for n in sizes:
        x = torch.randn(n, dim)
        _, w, idx = moe.route(x)
        paths = {"dense": moe._dense, "sparse": moe._sparse}
        if n == 1:
            paths["one-token"] = moe._single
        cells = [
            f"{name} {_time_calls(lambda f=f, x=x, w=w, idx=idx: f(x, w, idx), repeats * 20)[1]:.3f}"
            for name, f in paths.items()
        ]
        lines.append(f"  n={n:<4d} " + "  ".join(cells))
    return lines


def _row(label: str, t: Timing, base: Timing | None = None) -> str:
    ratio = "" if base is None else f" {t[0] / base[0]:8.2f}x {t[1] / base[1]:8.2f}x"
    return f"  {label:50s} {t[0]:8.3f} {t[1]:8.3f}{ratio}"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and turns (a smoke run)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest at batch 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 9
    turns = [1, 8] if args.quick else [1, 8, 32, 64]
    tokens = 32 if args.quick else 64

    torch.manual_seed(0)
    model = ReactiveTransformer(RxTConfig.preset(args.preset), _NoEosTokenizer()).eval()
    cfg = model.config
    stm = model.init_stm(1) + 0.5 * torch.randn(model.init_stm(1).shape)
    prompt = _ids(16, 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model_speed: preset={args.preset} params={model.num_parameters() / 1e6:.2f}M "
          f"threads={torch.get_num_threads()} batch=1, prompt 16 tokens, {tokens} new tokens, "
          f"median of {repeats}; load average at start {load:.1f} on {os.cpu_count()} CPUs")
    head = f"  {'':50s} {'wall ms':>8s} {'cpu ms':>8s}"
    with torch.no_grad():
        mem = model.memory_kv(stm)
        # eager steps, like the full recompute's: this table compares the caches (decode_speed the steps)
        samples = _interleaved({
            "fast": decode_per_token(model, stm, prompt, tokens, trace=False),
            "no_mem": decode_per_token(model, stm, prompt, tokens, cache_memory_kv=False, trace=False),
            "no_kv": decode_uncached_per_token(model, mem, prompt, tokens),
        }, repeats)
        fast, no_mem, no_kv = (_median(samples[k]) for k in ("fast", "no_mem", "no_kv"))
        best = min(s[1] for s in samples["fast"])
        print()
        print("decode, batch 1, eager steps, ms per token (ratios against the first row; variants run round-robin)")
        print(f"{head} {'wall':>9s} {'cpu':>9s}")
        print(_row("KV cache + memory K/V pre-cache", fast, fast))
        print(_row("KV cache, memory K/V projected every token", no_mem, fast))
        print(_row("no KV cache (full recompute), memory pre-cache", no_kv, fast))
        print(f"  goal <= 2 ms/token: median cpu {fast[1]:.3f} ms ({'met' if fast[1] <= 2.0 else 'NOT met'}), "
              f"best run {best:.3f} ms")

        interaction = _ids(16 + 32, 2)[None]
        enc = model.encode(interaction)
        print()
        print("memory, 48-token interaction")
        print(head)
        print(_row("update_memory (memory attention + gate)", _time_calls(lambda: model.update_memory(stm, enc),
                                                                          repeats * 3)))
        print(_row("encode + update_memory", _time_calls(
            lambda: model.update_memory(stm, model.encode(interaction)), repeats * 3)))
        print(_row("memory_kv pre-cache (once per interaction)", _time_calls(lambda: model.memory_kv(stm),
                                                                             repeats * 3)))

        per_turn = conversation_turn_times(model, max(turns), 16, 32, 3 if args.quick else 5)
        print()
        print("per turn: 16-token query + 32-token answer + encode + memory update (must stay flat);")
        print("  median over the conversations and the turns t-2..t+2")
        print(head)
        for t in turns:
            window = [x for row in per_turn[max(0, t - 3) : t + 2] for x in row]
            print(_row(f"turn {t}", _median(window)))

        print()
        print("batched decode step (KV cache + memory pre-cache; rows of different lengths; round-robin)")
        print(f"{head} {'cpu ms/token':>13s}")

        def step_run(b: int) -> Callable[[], Timing]:
            db = DecodeBatch(model, capacity=b)

            def run() -> Timing:
                slots = [db.add(_ids(8 + i, i), stm=stm, max_new_tokens=tokens + 1) for i in range(b)]
                db.step()
                with _Clock() as c:
                    for _ in range(tokens):
                        db.step()
                for s in slots:
                    db.remove(s)
                return c.wall / tokens, c.cpu / tokens

            return run

        batches = (1, 4, 16)
        samples = _interleaved({str(b): step_run(b) for b in batches}, repeats)
        for b in batches:
            t = _median(samples[str(b)])
            print(_row(f"batch {b}, per step", t) + f" {t[1] / b:13.3f}")

        if cfg.is_moe:
            print()
            print(f"MoE layer paths, cpu ms (dim {cfg.dim}, ff {cfg.ff_dim}, {cfg.moe_experts} experts "
                  f"top-{cfg.moe_top_k}); dense runs up to {MoE.dense_tokens(cfg.moe_experts)} tokens")
            for line in moe_paths(cfg.dim, cfg.ff_dim, cfg.moe_experts, cfg.moe_top_k, [1, 2, 4, 8, 16, 64],
                                  repeats):
                print(line)


if __name__ == "__main__":
    main()

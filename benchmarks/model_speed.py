"""Model speed on this CPU: decode ms/token (with/without the memory K/V pre-cache and the self-attention
KV cache), memory-update ms, per-turn time over a long conversation, MoE dense vs sparse paths.

    .venv/bin/python benchmarks/model_speed.py [--quick] [--preset tiny] [--threads 1]

Every figure is a median over repeats after a warm-up. The model is untrained: its [EOS] is disabled so
that every answer has exactly the requested length (the work per token is the same).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from reactor_rt.model import DecodeBatch, MemoryKV, ReactiveTransformer, RxTConfig
from reactor_rt.model.layers import MoE
from reactor_rt.tokenizer import ByteTokenizer

__all__ = ["main"]


class _NoEosTokenizer(ByteTokenizer):
    """Byte tokenizer whose [EOS] can never be sampled, so answers run to their budget."""

    def __init__(self) -> None:
        super().__init__()
        self.eos_id = -1


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(8, 260, (n,), generator=torch.Generator().manual_seed(seed))


def decode_per_token(
    model: ReactiveTransformer, stm: torch.Tensor, prompt: torch.Tensor, tokens: int, cache_memory_kv: bool = True
) -> Callable[[], float]:
    """A run that prefills, then times `tokens` cached decode steps; returns ms/token."""
    db = DecodeBatch(model, capacity=1, cache_memory_kv=cache_memory_kv)

    def run() -> float:
        slot = db.add(prompt, stm=stm, max_new_tokens=tokens + 1)
        db.step()  # the prefill's token: no forward for it
        t = time.perf_counter()
        for _ in range(tokens):
            db.step()
        elapsed = time.perf_counter() - t
        db.remove(slot)
        return 1000 * elapsed / tokens

    return run


def decode_uncached_per_token(
    model: ReactiveTransformer, mem: MemoryKV, prompt: torch.Tensor, tokens: int
) -> Callable[[], float]:
    """Greedy decoding that re-runs the decoder over the whole sequence for every token (no KV cache)."""

    def run() -> float:
        seq = prompt[None]
        t = time.perf_counter()
        for _ in range(tokens):
            nxt = model.decode(seq, memory_kv=mem)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
        return 1000 * (time.perf_counter() - t) / tokens

    return run


def _median_of(run: Callable[[], float], repeats: int) -> float:
    run()  # warm-up
    return statistics.median(run() for _ in range(repeats))


def conversation_turn_times(
    model: ReactiveTransformer, turns: int, query_len: int, answer_len: int, seed: int
) -> list[float]:
    """ms of each turn: prefill the query, generate the answer, encode query+answer, update the STM."""
    db = DecodeBatch(model, capacity=1)
    stm = model.init_stm(1)
    out = []
    for turn in range(turns):
        query = _ids(query_len, seed * 1000 + turn)
        t = time.perf_counter()
        slot = db.add(query, memory_kv=model.memory_kv(stm), max_new_tokens=answer_len)
        answer = []
        while db.active:
            answer += [o.token for o in db.step()]
        db.remove(slot)
        interaction = torch.cat([query, torch.tensor(answer)])[None]
        stm = model.update_memory(stm, model.encode(interaction))
        out.append(1000 * (time.perf_counter() - t))
    return out


def moe_paths(dim: int, ff_dim: int, experts: int, top_k: int, sizes: list[int], repeats: int) -> list[str]:
    """ms of one MoE layer forward for n tokens through the one-token, dense and sparse paths."""
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
            f"{name} {_median_ms(lambda f=f, x=x, w=w, idx=idx: f(x, w, idx), repeats * 20):.3f}"
            for name, f in paths.items()
        ]
        lines.append(f"  n={n:<4d} " + "  ".join(cells))
    return lines


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    print(f"model_speed: preset={args.preset} params={model.num_parameters() / 1e6:.2f}M "
          f"threads={torch.get_num_threads()} batch=1 prompt=16 tokens, {tokens} new tokens, "
          f"median of {repeats}")
    with torch.no_grad():
        mem = model.memory_kv(stm)
        fast = _median_of(decode_per_token(model, stm, prompt, tokens), repeats)
        no_mem = _median_of(decode_per_token(model, stm, prompt, tokens, cache_memory_kv=False), repeats)
        no_kv = _median_of(decode_uncached_per_token(model, mem, prompt, tokens), repeats)
        print()
        print(f"{'decode (batch 1)':44s} {'ms/token':>9s} {'vs cached':>10s}")
        print(f"{'  KV cache + memory K/V pre-cache':44s} {fast:9.3f} {1.0:9.2f}x")
        print(f"{'  KV cache, memory K/V projected per token':44s} {no_mem:9.3f} {no_mem / fast:9.2f}x")
        print(f"{'  no KV cache (full recompute), memory pre-cache':44s} {no_kv:9.3f} {no_kv / fast:9.2f}x")
        goal = "met" if fast <= 2.0 else "NOT met"
        print(f"  goal <= 2 ms/token: {goal}")

        interaction = _ids(16 + 32, 2)[None]
        enc = model.encode(interaction)
        upd = _median_ms(lambda: model.update_memory(stm, enc), repeats * 3)
        enc_upd = _median_ms(lambda: model.update_memory(stm, model.encode(interaction)), repeats * 3)
        kv_ms = _median_ms(lambda: model.memory_kv(stm), repeats * 3)
        print()
        print(f"{'memory (48-token interaction)':44s} {'ms':>9s}")
        print(f"{'  update_memory (memory attention + gate)':44s} {upd:9.3f}")
        print(f"{'  encode + update_memory':44s} {enc_upd:9.3f}")
        print(f"{'  memory_kv pre-cache (once per interaction)':44s} {kv_ms:9.3f}")

        runs = [conversation_turn_times(model, max(turns), 16, 32, seed) for seed in range(3 if args.quick else 5)]
        print()
        print("per turn (16-token query + 32-token answer + encode + memory update), ms; must stay flat")
        for t in turns:
            print(f"  turn {t:3d}: {statistics.median(r[t - 1] for r in runs):8.2f}")

        print()
        print("batched decode step (KV cache + memory pre-cache), ms/step and ms/token")
        for b in (1, 4, 16):
            db = DecodeBatch(model, capacity=b)

            def step_run(db: DecodeBatch = db, b: int = b) -> float:
                slots = [db.add(_ids(8 + i, i), stm=stm, max_new_tokens=tokens + 1) for i in range(b)]
                db.step()
                t = time.perf_counter()
                for _ in range(tokens):
                    db.step()
                elapsed = time.perf_counter() - t
                for s in slots:
                    db.remove(s)
                return 1000 * elapsed / tokens

            ms = _median_of(step_run, repeats)
            print(f"  batch {b:3d}: {ms:8.3f} ms/step {ms / b:8.3f} ms/token")

        if cfg.is_moe:
            print()
            print(f"MoE layer paths (dim {cfg.dim}, ff {cfg.ff_dim}, {cfg.moe_experts} experts top-{cfg.moe_top_k}), "
                  f"ms; dense is used up to {MoE.dense_limit // cfg.moe_experts} tokens")
            for line in moe_paths(cfg.dim, cfg.ff_dim, cfg.moe_experts, cfg.moe_top_k, [1, 2, 4, 8, 16, 64],
                                  repeats):
                print(line)


if __name__ == "__main__":
    main()

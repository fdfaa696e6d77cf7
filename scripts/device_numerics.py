"""The bundled model's numerics on another device or dtype, against CPU float32 on the same inputs.

    python scripts/device_numerics.py [--device cuda] [--dtype float32|bfloat16] [--json FILE]

Checks what a researcher moving the model to a GPU needs to trust, each side by side with the CPU
float32 reference: decoder logits and encoder layers (max abs / relative difference, argmax
agreement); the STM over 16 chained memory updates (does the difference grow turn after turn?);
greedy continuous-batching generation (tokens identical? first divergence per row); the bundled
model's fixed recall evaluation (counts of correct answers, as recorded beside the checkpoint); and,
for information, decode time per step at 1 and 16 rows on the device.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from typing import Any

import torch

from reactor_rt.bundled import bundled_path, load_model
from reactor_rt.model import DecodeBatch, ReactiveTransformer
from reactor_rt.template import build_prompt
from reactor_rt.training.eval_recall import fixed_eval, pad_rows, play_turns, recall_dialogues

__all__ = ["compare", "main"]

TURNS = 16  # chained memory updates
ROWS = 8  # dialogues, and generation rows


def _diff(ref: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    """Max abs difference, and that relative to the reference's largest magnitude."""
    got = got.detach().to("cpu", torch.float32)
    ref = ref.detach().to(torch.float32)
    err = float((got - ref).abs().max())
    return {"max_abs": err, "rel": err / max(float(ref.abs().max()), 1e-12)}


def _interactions(ref: ReactiveTransformer) -> list[list[list[int]]]:
    """TURNS turns of ROWS held-out recall dialogues, answered by the reference model (its own answers,
    as at inference): the inputs every comparison below shares."""
    dialogues = recall_dialogues(TURNS - 2, ROWS, seed=11)  # fact, TURNS-2 fillers, question
    return play_turns(ref, dialogues).interactions


def _stm_chain(model: ReactiveTransformer, turns: list[list[list[int]]], device: torch.device) -> list[torch.Tensor]:
    """The STM after each turn (ROWS rows), updated from the given interactions."""
    pad = model.tokenizer.pad_id
    stm = model.init_stm(ROWS)
    out = []
    for t in range(TURNS):
        ids, mask = pad_rows([turns[i][t] for i in range(ROWS)], pad, device)
        stm = model.update_memory(stm, model.encode(ids, attention_mask=mask), attention_mask=mask)
        out.append(stm)
    return out


def _generate(model: ReactiveTransformer, prompts: list[list[int]], stm: torch.Tensor, tokens: int) -> list[list[int]]:
    """Greedy answers of all prompts decoded together in one DecodeBatch (rows joining one by one)."""
    db = DecodeBatch(model, capacity=len(prompts))
    slots = [db.add(torch.tensor(p), memory_kv=model.memory_kv(stm[i : i + 1]), max_new_tokens=tokens)
             for i, p in enumerate(prompts)]
    got: dict[int, list[int]] = {s: [] for s in slots}
    while db.active:
        for out in db.step():
            got[out.slot].append(out.token)
    return [got[s] for s in slots]


def _first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _decode_ms(model: ReactiveTransformer, rows: int, device: torch.device, steps: int = 64) -> float:
    """Milliseconds per batched decode step with ``rows`` rows (after a warm-up)."""
    prompt = torch.tensor(build_prompt(model.tokenizer, "What is my city?"))
    kv = model.memory_kv(model.init_stm(1))
    db = DecodeBatch(model, capacity=rows)
    db.eos_id = -1  # every row runs the whole budget (the trained model would stop at [EOS])
    for _ in range(rows):
        db.add(prompt, memory_kv=kv, max_new_tokens=steps + 8)
    for _ in range(4):
        db.step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        db.step()
    sync()
    return 1000 * (time.perf_counter() - t0) / steps


@torch.inference_mode()
def compare(device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Every comparison above; returns the figures."""
    dev = torch.device(device)
    ref = load_model()
    dut = copy.deepcopy(ref).to(dev, dtype)
    turns = _interactions(ref)
    report: dict[str, Any] = {"device": str(dev), "dtype": str(dtype).removeprefix("torch."),
                              "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                              "torch": torch.__version__}

    # STM over chained updates: the difference after each turn
    ref_chain, dut_chain = _stm_chain(ref, turns, torch.device("cpu")), _stm_chain(dut, turns, dev)
    report["stm_by_turn"] = [_diff(r, d) for r, d in zip(ref_chain, dut_chain, strict=True)]

    # encoder layers and decoder logits on the last turn, each side reading its own STM
    last = [turns[i][-1] for i in range(ROWS)]
    width = min(len(r) for r in last)
    ids = torch.tensor([r[:width] for r in last])
    report["encoder"] = _diff(ref.encode(ids), dut.encode(ids.to(dev)))
    ref_logits = ref.decode(ids, ref_chain[-2])
    dut_logits = dut.decode(ids.to(dev), dut_chain[-2])
    report["decoder_logits"] = _diff(ref_logits, dut_logits)
    report["decoder_argmax_agreement"] = float(
        (ref_logits.argmax(-1) == dut_logits.argmax(-1).cpu()).float().mean())
    # the same STM on both sides: the decoder alone
    report["decoder_logits_same_stm"] = _diff(ref_logits, dut.decode(ids.to(dev), ref_chain[-2].to(dev, dtype)))

    # greedy continuous batching: each row from its own STM
    prompts = [build_prompt(ref.tokenizer, q) for q in ("What is my city?", "What is my name?", "Tell me a story.",
                                                        "What is my color?", "Hello!", "What do I like?",
                                                        "Where do I live?", "What is my pet?")]
    ref_tokens = _generate(ref, prompts, ref_chain[-1], 24)
    dut_tokens = _generate(dut, prompts, dut_chain[-1], 24)
    report["generation_identical_rows"] = sum(a == b for a, b in zip(ref_tokens, dut_tokens, strict=True))
    report["generation_rows"] = len(prompts)
    report["generation_first_divergence"] = [_first_divergence(a, b)
                                             for a, b in zip(ref_tokens, dut_tokens, strict=True)]

    # the bundled model's fixed recall evaluation: on the device vs as recorded (CPU)
    recorded = json.loads((bundled_path() / "fixed_eval.json").read_text())
    report["fixed_eval_recorded"] = recorded["memory_correct"]
    report["fixed_eval_device"] = fixed_eval(dut)["memory_correct"]

    report["decode_ms_per_step"] = {str(rows): _decode_ms(dut, rows, dev) for rows in (1, 16)}
    return report


def _table(r: dict[str, Any]) -> str:
    stm = r["stm_by_turn"]
    lines = [
        f"device numerics: {r['device_name']} ({r['device']}, {r['dtype']}, torch {r['torch']}) vs CPU float32",
        f"  encoder layers           max abs {r['encoder']['max_abs']:.3g}  rel {r['encoder']['rel']:.3g}",
        f"  decoder logits (own STM) max abs {r['decoder_logits']['max_abs']:.3g}  rel {r['decoder_logits']['rel']:.3g}"
        f"  argmax agreement {100 * r['decoder_argmax_agreement']:.1f} %",
        f"  decoder logits (same STM) max abs {r['decoder_logits_same_stm']['max_abs']:.3g}",
        "  STM after turn 1/4/8/16    rel " + " / ".join(f"{stm[t]['rel']:.3g}" for t in (0, 3, 7, 15)),
        f"  greedy batched generation: {r['generation_identical_rows']}/{r['generation_rows']} rows identical; "
        f"first divergence {r['generation_first_divergence']}",
        f"  fixed recall eval (correct of 25, k=0/1/4/8): device {r['fixed_eval_device']} "
        f"recorded {r['fixed_eval_recorded']}",
        "  decode ms/step: " + ", ".join(f"{k} rows {v:.2f}" for k, v in r["decode_ms_per_step"].items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print it (and write it as JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: pass --device cpu (e.g. with --dtype bfloat16)", file=sys.stderr)
        return 2
    report = compare(args.device, getattr(torch, args.dtype))
    print(_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Recall evaluation on held-out dialogues: accuracy by the number of intervening turns.

Each dialogue is a fact, k filler turns and the question about the fact (`DialogueGenerator.
recall_dialogue`), with values from the held-out split only. The model runs the real inference path:
it answers every turn greedily from the current STM, then query + *its own* answer are encoded and
written into memory. The question's answer is scored with `recall_correct`.

The ablation resets the STM before every turn (the decoder always reads the initial STM): whatever
it gets right, it got right without memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from reactor_rt.model import ReactiveTransformer, Sampler
from reactor_rt.template import build_prompt
from reactor_rt.training.dialogues import Dialogue, DialogueGenerator
from reactor_rt.training.loop import step_seed
from reactor_rt.training.recall import recall_correct

__all__ = [
    "DEFAULT_KS",
    "FIXED_EVAL",
    "PlayedTurns",
    "RecallReport",
    "answer_dialogues",
    "evaluate_recall",
    "fixed_eval",
    "format_table",
    "pad_rows",
    "play_turns",
    "recall_dialogues",
]

DEFAULT_KS: tuple[int, ...] = (0, 1, 2, 4, 8)
# the small eval recorded beside a trained checkpoint (fixed_eval.json) and re-checked by the tests
FIXED_EVAL: dict[str, Any] = {"ks": (0, 1, 4, 8), "n": 25, "seed": 7}


@dataclass
class RecallReport:
    """Accuracy (0..1) per k for the model with memory and with the STM reset before every turn."""

    ks: list[int]
    n: int
    seed: int
    memory: dict[int, float]
    reset: dict[int, float]
    examples: dict[int, list[dict[str, str]]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["memory"] = {str(k): v for k, v in self.memory.items()}
        d["reset"] = {str(k): v for k, v in self.reset.items()}
        d["examples"] = {str(k): v for k, v in self.examples.items()}
        return d


def recall_dialogues(k: int, n: int, seed: int) -> list[Dialogue]:
    """The fixed held-out dialogues of one cell (k intervening turns), the same for every model."""
    gen = DialogueGenerator("heldout", seed=step_seed(seed, "recall", k))
    return [gen.recall_dialogue(k) for _ in range(n)]


def pad_rows(rows: Sequence[list[int]], pad_id: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Right-pad token rows -> (ids (B, T), mask (B, T), True on real tokens), on ``device``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids.to(device), mask.to(device)


@torch.no_grad()
def answer_dialogues(
    model: ReactiveTransformer,
    dialogues: Sequence[Dialogue],
    reset_stm: bool = False,
    max_new_tokens: int = 24,
    sampler: Sampler | None = None,
    generator: torch.Generator | None = None,
) -> list[list[str]]:
    """Run dialogues of equal length through the model turn by turn; returns the answer texts.

    Memory path as at inference: answer from STM(t-1), then encode query + own answer and update.
    With ``reset_stm`` every turn reads the initial STM (and no update is needed).
    """
    return play_turns(model, dialogues, reset_stm, max_new_tokens, sampler, generator).answers


@dataclass
class PlayedTurns:
    """What `play_turns` produced, per dialogue and turn."""

    answers: list[list[str]]  # the answer texts
    interactions: list[list[list[int]]]  # [BOS][Q] query [A] answer [EOS]: what the memory update encoded
    prompt_lengths: list[list[int]]  # tokens of [BOS][Q] query [A]: the answer starts there
    ended: list[list[bool]]  # the model generated the [EOS]; False: cut at the token budget, [EOS] added


@torch.no_grad()
def play_turns(
    model: ReactiveTransformer,
    dialogues: Sequence[Dialogue],
    reset_stm: bool = False,
    max_new_tokens: int = 24,
    sampler: Sampler | None = None,
    generator: torch.Generator | None = None,
) -> PlayedTurns:
    """`answer_dialogues`, with each turn's interaction ids ([BOS][Q] q [A] answer [EOS]) and what a
    policy-gradient update needs: where each answer starts, and whether its closing [EOS] was generated
    or only added to close the interaction.

    An answer is the generated ids up to its first [EOS], kept as generated ([PAD] included: sampling
    may produce one mid-answer, and the runtime encodes it too); only the padding after a row that was
    cut short is dropped.
    """
    if len({len(d) for d in dialogues}) != 1:
        raise ValueError("answer_dialogues needs dialogues of one length")
    tok = model.tokenizer
    sampler = sampler or Sampler(temperature=0.0)
    b, n = len(dialogues), len(dialogues[0])
    init = model.init_stm(b)
    stm = init
    played = PlayedTurns(*([[] for _ in range(b)] for _ in range(4)))
    for t in range(n):
        prompts = [build_prompt(tok, d.turns[t].query) for d in dialogues]
        read = init if reset_stm else stm
        out = model.generate(
            [torch.tensor(p) for p in prompts],
            read,
            max_new_tokens=max_new_tokens,
            sampler=sampler,
            generator=generator,
        )
        rows = []
        for i, p in enumerate(prompts):
            new = [int(x) for x in out[i]]
            ended = tok.eos_id in new
            if ended:
                new = new[: new.index(tok.eos_id)]
            else:  # generate pads the rows shorter than the longest; those are not the model's tokens
                while new and new[-1] == tok.pad_id:
                    new.pop()
            played.answers[i].append(tok.decode(new))
            rows.append([*p, *new, tok.eos_id])
            played.interactions[i].append(rows[-1])
            played.prompt_lengths[i].append(len(p))
            played.ended[i].append(ended)
        if not reset_stm and t < n - 1:
            ids, mask = pad_rows(rows, tok.pad_id, stm.device)  # the model's device (a GPU too)
            stm = model.update_memory(stm, model.encode(ids, attention_mask=mask), attention_mask=mask)
    return played


def _score(dialogues: Sequence[Dialogue], answers: list[list[str]]) -> list[bool]:
    out = []
    for d, a in zip(dialogues, answers, strict=True):
        q = d.turns[-1]
        assert q.attribute is not None and q.value is not None
        out.append(recall_correct(a[-1], q.attribute, q.value))
    return out


@torch.no_grad()
def evaluate_recall(
    model: ReactiveTransformer,
    ks: Sequence[int] = DEFAULT_KS,
    n: int = 200,
    seed: int = 1234,
    ablation: bool = True,
    batch_size: int = 200,
    n_examples: int = 0,
) -> RecallReport:
    """Recall accuracy per k on ``n`` held-out dialogues a cell, with memory and (optionally) reset."""
    was_training = model.training
    model.eval()
    memory: dict[int, float] = {}
    reset: dict[int, float] = {}
    examples: dict[int, list[dict[str, str]]] = {}
    for k in ks:
        dialogues = recall_dialogues(k, n, seed)
        for mode in ("memory", "reset") if ablation else ("memory",):
            correct: list[bool] = []
            for start in range(0, n, batch_size):
                chunk = dialogues[start : start + batch_size]
                answers = answer_dialogues(model, chunk, reset_stm=mode == "reset")
                correct += _score(chunk, answers)
                if mode == "memory" and n_examples and start == 0:
                    examples[k] = [
                        {"fact": d.turns[0].query, "question": d.turns[-1].query, "answer": a[-1]}
                        for d, a in list(zip(chunk, answers, strict=True))[:n_examples]
                    ]
            (memory if mode == "memory" else reset)[k] = sum(correct) / len(correct)
    model.train(was_training)
    return RecallReport(list(ks), n, seed, memory, reset, examples)


def fixed_eval(model: ReactiveTransformer) -> dict[str, Any]:
    """The small fixed evaluation (`FIXED_EVAL`): counts of correct answers per k, memory and reset."""
    ks, n, seed = FIXED_EVAL["ks"], FIXED_EVAL["n"], FIXED_EVAL["seed"]
    r = evaluate_recall(model, ks=ks, n=n, seed=seed, batch_size=n)
    return {
        **FIXED_EVAL,
        "ks": list(ks),
        "memory_correct": {str(k): round(r.memory[k] * n) for k in ks},
        "reset_correct": {str(k): round(r.reset[k] * n) for k in ks},
    }


def format_table(report: RecallReport) -> str:
    """A Markdown table: one row with memory, one with the STM reset before every turn."""
    head = "| intervening turns k | " + " | ".join(str(k) for k in report.ks) + " |"
    rule = "|---|" + "---|" * len(report.ks)
    rows = [
        head,
        rule,
        "| with memory | " + " | ".join(f"{100 * report.memory[k]:.1f} %" for k in report.ks) + " |",
    ]
    if report.reset:
        rows.append(
            "| STM reset before each turn | "
            + " | ".join(f"{100 * report.reset[k]:.1f} %" for k in report.ks)
            + " |"
        )
    return "\n".join(rows) + f"\n\n(held-out values, greedy, {report.n} dialogues a cell, seed {report.seed})"

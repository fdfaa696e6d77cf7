"""Turn dialogues and texts into padded tensors with the masks every stage needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from reactor_rt.template import answer_start, build_interaction
from reactor_rt.tokenizer import Tokenizer
from reactor_rt.training.dialogues import Dialogue

__all__ = [
    "DialogueBatch",
    "TextBatch",
    "collate_dialogues",
    "collate_interactions",
    "collate_texts",
    "mask_token_id",
]


@dataclass
class TextBatch:
    """Right-padded token rows. ``target`` marks the ids that count in a loss (e.g. answer + [EOS])."""

    ids: Tensor  # (B, T) long
    mask: Tensor  # (B, T) bool, True = real token
    target: Tensor  # (B, T) bool


@dataclass
class DialogueBatch:
    """B dialogues of the same number of turns N, every interaction right-padded to one length T."""

    ids: Tensor  # (B, N, T) long
    mask: Tensor  # (B, N, T) bool, True = real token
    target: Tensor  # (B, N, T) bool, True = an answer token or the closing [EOS]
    turn_weight: Tensor  # (B, N) float: question turns weigh more
    dialogues: list[Dialogue]

    @property
    def shape(self) -> tuple[int, int, int]:
        b, n, t = self.ids.shape
        return b, n, t


def mask_token_id(tok: Tokenizer) -> int:
    """The [MASK] id of a trained BPE tokenizer; falls back to [UNK] (the byte tokenizer has no [MASK])."""
    backend = getattr(tok, "backend", None)
    if backend is not None:
        found = backend.token_to_id("[MASK]")  # type: ignore[attr-defined]
        if found is not None:
            return int(found)
    unk = getattr(tok, "unk_id", None)
    return int(unk) if unk is not None else int(tok.pad_id)


def _pad(rows: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int) -> TextBatch:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    target = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
        target[i, start : len(row)] = True
    return TextBatch(ids, mask, target)


def collate_texts(tok: Tokenizer, texts: Sequence[str], max_len: int) -> TextBatch:
    """``[BOS] text [EOS]`` rows (cut to ``max_len``); every token after [BOS] is a target."""
    rows = [[*[tok.bos_id, *tok.encode(t)][: max_len - 1], tok.eos_id] for t in texts]
    return _pad(rows, [1] * len(rows), tok.pad_id)


def collate_interactions(tok: Tokenizer, pairs: Sequence[tuple[str, str]], max_len: int) -> TextBatch:
    """``[BOS][Q] query [A] answer [EOS]`` rows; the answer tokens and [EOS] are the targets."""
    rows, starts = [], []
    for query, answer in pairs:
        ids = build_interaction(tok, query, answer)
        if len(ids) > max_len:
            raise ValueError(f"interaction of {len(ids)} tokens exceeds max_len {max_len}: {query!r}")
        rows.append(ids)
        starts.append(answer_start(tok, ids))
    return _pad(rows, starts, tok.pad_id)


def collate_dialogues(
    tok: Tokenizer, dialogues: Sequence[Dialogue], max_len: int, question_weight: float = 3.0
) -> DialogueBatch:
    """Stack dialogues of equal length into (B, N, T) tensors plus per-turn loss weights."""
    n_turns = {len(d) for d in dialogues}
    if len(n_turns) != 1:
        raise ValueError(f"a batch needs dialogues of one length, got {sorted(n_turns)}")
    (n,) = n_turns
    flat = collate_interactions(tok, [(t.query, t.answer) for d in dialogues for t in d.turns], max_len)
    b, t = len(dialogues), flat.ids.shape[1]
    weight = torch.tensor(
        [[question_weight if turn.kind == "question" else 1.0 for turn in d.turns] for d in dialogues]
    )
    return DialogueBatch(
        ids=flat.ids.view(b, n, t),
        mask=flat.mask.view(b, n, t),
        target=flat.target.view(b, n, t),
        turn_weight=weight,
        dialogues=list(dialogues),
    )

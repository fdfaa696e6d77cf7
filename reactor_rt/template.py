"""The RxT interaction template: `[BOS][Q] query [A] answer [EOS]` (with `[R] reasoning` before `[A]`)."""

from __future__ import annotations

from collections.abc import Sequence

from reactor_rt.tokenizer import Tokenizer

__all__ = ["answer_start", "build_interaction", "build_prompt", "split_interaction"]


def build_prompt(tok: Tokenizer, query: str, reasoning: str | None = None) -> list[int]:
    """Decoder prompt: `[BOS][Q] query [A]`, or `[BOS][Q] query [R] reasoning [A]`."""
    ids = [tok.bos_id, tok.query_id, *tok.encode(query)]
    if reasoning is not None:
        ids += [tok.reasoning_id, *tok.encode(reasoning)]
    ids.append(tok.answer_id)
    return ids


def build_interaction(tok: Tokenizer, query: str, answer: str, reasoning: str | None = None) -> list[int]:
    """A whole interaction (encoder input, training target): the prompt, the answer, then `[EOS]`."""
    return [*build_prompt(tok, query, reasoning), *tok.encode(answer), tok.eos_id]


def answer_start(tok: Tokenizer, ids: Sequence[int]) -> int:
    """Index of the first answer token (just after the last `[A]`); for answer-only loss masks."""
    for i in range(len(ids) - 1, -1, -1):
        if int(ids[i]) == tok.answer_id:
            return i + 1
    raise ValueError("the sequence has no [A] token")


def split_interaction(tok: Tokenizer, ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """Split an interaction's ids into (prompt incl. `[A]`, answer without `[EOS]`/padding)."""
    start = answer_start(tok, ids)
    answer = [int(i) for i in ids[start:]]
    for stop in (tok.eos_id, tok.pad_id):
        if stop in answer:
            answer = answer[: answer.index(stop)]
    return [int(i) for i in ids[:start]], answer

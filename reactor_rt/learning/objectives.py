"""The two live-learning objectives on one interaction, reading a given (or re-derived) STM.

* supervised: cross-entropy on a corrected answer, `[BOS][Q] query [A] correction [EOS]` with the loss
  on the answer tokens and [EOS] only (the training stages' `masked_token_loss`);
* reinforce: REINFORCE on the model's own answer tokens, loss = advantage * mean NLL, where
  advantage = reward - running baseline, clamped to [-1, 1] by the learner (minimising it raises the
  answer's probability when the reward beats the baseline, lowers it otherwise).

Both report the answer's mean NLL, so loss_before/loss_after mean the same thing for either kind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from reactor_rt.learning.example import LearningExample
from reactor_rt.model import ReactiveTransformer
from reactor_rt.template import build_interaction, build_prompt
from reactor_rt.training.losses import masked_token_loss

__all__ = ["REWARD_BOUND", "AnswerBatch", "RunningBaseline", "answer_batch", "answer_nll", "read_stm", "source_ids"]


@dataclass(frozen=True)
class AnswerBatch:
    """One interaction's ids (1, T) and its answer mask (1, T): True on the answer tokens and [EOS]."""

    ids: Tensor
    target: Tensor

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])


def answer_batch(model: ReactiveTransformer, example: LearningExample) -> AnswerBatch:
    """The sequence the example's loss is taken on: the correction, or else the model's own answer (with
    [EOS] unless it was cut short). The target may be empty: an empty answer cut short."""
    tok = model.tokenizer
    prompt = build_prompt(tok, example.query)
    if example.correction is not None:
        answer, ended = tok.encode(example.correction), True
    else:
        answer = _own_answer_ids(model, example.answer, example.answer_ids)
        ended = example.answer_ended  # an answer cut short: its [EOS] was never the model's choice
    ids = [*prompt, *answer, *([tok.eos_id] if ended else [])]  # build_interaction's layout
    # the answer starts where the prompt ends: a model's own answer may hold an [A] token itself, and
    # searching for the last [A] (answer_start) then left the tokens before it out of the loss
    start = len(prompt)
    target = torch.zeros(1, len(ids), dtype=torch.bool)
    target[0, start:] = True
    device = model.embedding.weight.device
    return AnswerBatch(torch.tensor([ids], dtype=torch.long, device=device), target.to(device))


def _own_answer_ids(model: ReactiveTransformer, text: str, logged: Sequence[int] | None) -> list[int]:
    tok = model.tokenizer
    ids = [int(i) for i in logged] if logged is not None else tok.encode(text)
    # a logged answer may end with [EOS] and padding (generate() pads a row only after its [EOS]); the
    # caller appends [EOS] once, if it was generated. Only [EOS] ends it: cutting at a [PAD] the model
    # generated mid-answer scored a prefix (followed by an [EOS]) that the model never produced
    if tok.eos_id in ids:
        ids = ids[: ids.index(tok.eos_id)]
    return ids


def source_ids(model: ReactiveTransformer, example: LearningExample) -> Tensor | None:
    """The previous interaction (1, T) whose memory update wrote the example's STM, if logged."""
    if example.source is None:
        return None
    ids = build_interaction(model.tokenizer, example.source.query, example.source.answer)
    return torch.tensor([ids], dtype=torch.long, device=model.embedding.weight.device)


def read_stm(model: ReactiveTransformer, example: LearningExample, through_memory: bool) -> Tensor:
    """The STM the answer reads, (1, L, S, D).

    through_memory: re-derive it as update_memory(stm_before, encode(previous interaction)) so that the
    loss reaches the memory-attention network (and the encoder); else the logged STM, as a constant.
    """
    if through_memory and example.source is not None:
        prev = source_ids(model, example)
        assert prev is not None
        encoded = model.encode(prev)  # (L, 1, T, D)
        return model.update_memory(example.source.stm_before.to(encoded).unsqueeze(0), encoded)
    return example.stm.detach().to(model.embedding.weight).unsqueeze(0)


def answer_nll(model: ReactiveTransformer, batch: AnswerBatch, stm: Tensor) -> tuple[Tensor, Tensor]:
    """(mean NLL of the answer tokens, MoE balance loss) for one interaction reading stm (1, L, S, D)."""
    logits, aux = model.decode_with_aux(batch.ids[:, :-1], stm)  # (1, T-1, V)
    return masked_token_loss(logits, batch.ids, batch.target), aux


REWARD_BOUND = 1.0
"""The largest |reward| that enters the running baseline (see `RunningBaseline`)."""


class RunningBaseline:
    """Exponential moving average of the rewards seen: REINFORCE's variance-reducing baseline.

    Starts at 0, so the first reward's sign decides the first step's direction (starting at the first
    reward would make the first advantage exactly zero).

    The feedback schema gives rewards no range, so what enters the average is clipped to
    [-bound, bound] (`REWARD_BOUND`, 1.0: the learner's step size already saturates at |advantage| = 1,
    so rewards are meant on a unit scale). One huge reward then moves the baseline by at most
    (1 - momentum) * bound, instead of turning hundreds of later positive rewards into un-learning steps.
    The advantage itself uses the reward as given.
    """

    def __init__(
        self, momentum: float = 0.9, value: float = 0.0, count: int = 0, bound: float = REWARD_BOUND
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"baseline momentum must be in [0, 1), got {momentum}")
        if not bound > 0.0:
            raise ValueError(f"baseline bound must be > 0, got {bound}")
        self.momentum, self.value, self.count, self.bound = momentum, value, count, bound

    def advantage(self, reward: float) -> float:
        """reward - baseline (NaN in, NaN out: the caller rejects a non-finite loss)."""
        return float(reward) - self.value

    def update(self, reward: float) -> None:
        """Fold one (finite) reward into the average."""
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward}")
        clipped = max(-self.bound, min(self.bound, float(reward)))
        self.value = self.momentum * self.value + (1.0 - self.momentum) * clipped
        self.count += 1

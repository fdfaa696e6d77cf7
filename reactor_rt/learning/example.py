"""What one live-learning update needs (`LearningExample`) and what it reports (`LearningResult`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

__all__ = ["REJECT_REASONS", "LearningExample", "LearningResult", "MemorySource"]

# Why an update can be rejected (LearningResult.reason); the weights are unchanged in every case.
REJECT_REASONS = (
    "rate_limited",  # the token bucket is empty: too many updates per minute
    "no_signal",  # a reward equal to the running baseline (zero advantage): nothing to learn
    "too_long",  # the interaction does not fit the model's max_seq_len
    "no_memory_path",  # params="memory" but the example has no MemorySource: no gradient reaches memory
    "non_finite_loss",  # NaN/inf loss (e.g. a NaN reward)
    "non_finite_grad",  # NaN/inf gradient norm
    "loss_exploded",  # loss_after > max_loss_ratio * loss_before
)


@dataclass(frozen=True)
class MemorySource:
    """How the STM an answer read was written: ``stm == update_memory(stm_before, encode(interaction))``.

    Only needed to train the memory-attention network (params "memory" or "all"): the gradient then flows
    from the answer's loss through the memory update. stm_before: (layers, slots, dim); query/answer: the
    previous interaction's text (encoded as ``[BOS][Q] query [A] answer [EOS]``).
    """

    stm_before: Tensor
    query: str
    answer: str


@dataclass(frozen=True)
class LearningExample:
    """One feedback item, rebuilt from a logged interaction.

    query/answer: the interaction's text (answer = what the model said). stm: the STM the answer read,
    (layers, slots, dim). reward and/or correction: the feedback; with a correction the update is
    supervised on it (the reward is then unused), with only a reward it is a policy-gradient step on the
    model's own answer; an empty (or all-blank) correction is refused. answer_ids: the exact answer token
    ids the model produced (without [EOS]), when logged; re-tokenising the text is used otherwise.
    target: the interaction id, echoed in the result. answer_ended: whether the model ended its answer
    with [EOS]; False when it was cut short at its token limit: a reward then scores the answer tokens
    only, since the policy never chose to stop there (reinforcing that [EOS] would teach it to stop at
    whatever limit the client set).
    """

    query: str
    answer: str
    stm: Tensor
    reward: float | None = None
    correction: str | None = None
    answer_ids: Sequence[int] | None = None
    source: MemorySource | None = None
    target: str | None = None
    answer_ended: bool = True

    def __post_init__(self) -> None:
        if self.reward is None and self.correction is None:
            raise ValueError("a LearningExample needs a reward or a correction")
        if self.correction is not None and not self.correction.strip():
            # it would be learned as "answer nothing" (the loss on [EOS] alone), the reward ignored
            raise ValueError("a correction must not be empty; leave it out to give only a reward")
        if self.stm.dim() != 3:
            raise ValueError(f"stm must be (layers, slots, dim), got {tuple(self.stm.shape)}")

    @property
    def kind(self) -> Literal["supervised", "reinforce"]:
        """"supervised" when there is a correction, else "reinforce"."""
        return "supervised" if self.correction is not None else "reinforce"


@dataclass(frozen=True)
class LearningResult:
    """Outcome of `LiveLearner.apply`.

    weights_version: the version after the call (bumped only when accepted). loss_before/loss_after:
    the example's answer-token cross-entropy (mean NLL; for a reward, of the model's own answer) before
    the first and after the last gradient step; NaN when the update never ran. reason: one of
    `REJECT_REASONS` when rejected, else None; detail: a sentence for people (the rx.error message).
    """

    weights_version: int
    loss_before: float
    loss_after: float
    accepted: bool
    reason: str | None = None
    detail: str | None = None
    kind: Literal["supervised", "reinforce"] = "supervised"
    steps: int = 0
    target: str | None = None

    @classmethod
    def rejected(
        cls,
        version: int,
        reason: str,
        detail: str,
        example: LearningExample,
        loss_before: float = math.nan,
        loss_after: float = math.nan,
        steps: int = 0,
    ) -> LearningResult:
        """A rejection: the weights stayed at `version`."""
        return cls(version, loss_before, loss_after, False, reason, detail, example.kind, steps, example.target)

"""Masked, weighted next-token cross-entropy shared by the stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["masked_token_loss", "token_logprobs"]


def masked_token_loss(
    logits: Tensor, ids: Tensor, target: Tensor, row_weight: Tensor | None = None
) -> Tensor:
    """Mean cross-entropy of predicting ``ids[:, j+1]`` from ``logits[:, j]`` where ``target[:, j+1]``.

    logits (R, T-1, V) from decoding ``ids[:, :-1]``; ids and target (R, T); row_weight (R,) scales
    whole rows (e.g. question turns 3x). The mean is over the weighted target tokens.
    """
    labels = ids[:, 1:]  # (R, T-1)
    weight = target[:, 1:].float()  # (R, T-1)
    if row_weight is not None:
        weight = weight * row_weight[:, None]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    total = weight.sum().clamp_min(1e-8)
    return (ce.view_as(weight) * weight).sum() / total


def token_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """log p(ids[:, j+1] | prefix) for every position: (R, T-1)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)

"""Stage 3: self-supervised memory-attention pre-training.

There is no label for "the right STM", so a pseudo-target is used: a weighted mean of the previous
STM and the new encoded interaction (mean-pooled over its real tokens, per layer). The weight of the
new data is high at the first step (an empty memory should take in the interaction) and decays over
the following steps (an established memory should change less), with a little jitter. The loss is the
negative cosine similarity between the memory-attention output and that target, compared per layer on
the *slot mean* of the memory: pulling every slot to the same pooled vector would collapse the slots
into one (a probe of that variant left the decoder unable to find the memory again in stage 4), while
the slot mean states the intent — the memory as a whole moves towards the new data by weight w — and
leaves the slots free to specialise. The encoder is not trained here (its outputs are detached); only
the memory-attention network learns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from reactor_rt.model import ReactiveTransformer
from reactor_rt.training.batches import DialogueBatch

__all__ = ["MemoryPretrainConfig", "memory_pretrain_loss", "new_data_weight", "pseudo_target"]


@dataclass(frozen=True)
class MemoryPretrainConfig:
    """Weights of the new data per step: ``first`` at step 0, then ``start - decay * t`` (>= floor)."""

    first: float = 0.9
    start: float = 0.5
    decay: float = 0.05
    floor: float = 0.1
    jitter: float = 0.05
    stm_noise: float = 0.1  # relative noise on the previous STM, so slots do not collapse together


def new_data_weight(t: int, cfg: MemoryPretrainConfig, gen: torch.Generator) -> float:
    """Weight of the new interaction in the target at update number ``t`` (0-based), with jitter."""
    base = cfg.first if t == 0 else max(cfg.floor, cfg.start - cfg.decay * (t - 1))
    jitter = (torch.rand((), generator=gen).item() * 2 - 1) * cfg.jitter
    return float(min(1.0, max(0.0, base + jitter)))


def pseudo_target(stm: Tensor, encoded: Tensor, mask: Tensor, weight: float) -> Tensor:
    """(1 - w) * STM + w * mean-pooled encoded layer, broadcast over the slots.

    stm (B, L, S, D); encoded (L, B, T, D); mask (B, T) -> (B, L, S, D).
    """
    m = mask.to(encoded.dtype)[None, :, :, None]  # (1, B, T, 1)
    pooled = (encoded * m).sum(2) / m.sum(2).clamp_min(1.0)  # (L, B, D)
    pooled = pooled.permute(1, 0, 2)[:, :, None, :]  # (B, L, 1, D)
    return (1 - weight) * stm + weight * pooled


def memory_pretrain_loss(
    model: ReactiveTransformer, batch: DialogueBatch, cfg: MemoryPretrainConfig, gen: torch.Generator
) -> tuple[Tensor, dict[str, float]]:
    """Negative cosine similarity of each update against its pseudo-target, over a dialogue's turns."""
    b, n, t = batch.shape
    with torch.no_grad():
        encoded = model.encode(batch.ids.view(b * n, t), attention_mask=batch.mask.view(b * n, t))
        encoded = encoded.view(encoded.shape[0], b, n, t, -1)  # (L, B, N, T, D)
    stm = model.init_stm(b)
    losses = []
    for step in range(n):
        enc, mask = encoded[:, :, step], batch.mask[:, step]
        prev = stm.detach()
        rms = prev.pow(2).mean(-1, keepdim=True).sqrt()
        prev = prev + cfg.stm_noise * rms * torch.randn(prev.shape, generator=gen)
        new = model.update_memory(prev, enc, attention_mask=mask)
        target = pseudo_target(prev, enc, mask, new_data_weight(step, cfg, gen))
        # (B, L, D) slot means; see the module docstring for why not per slot
        losses.append(-F.cosine_similarity(new.mean(2), target.detach().mean(2), dim=-1).mean())
        stm = new
    loss = torch.stack(losses).mean()
    return loss, {"cos": float(-loss.detach())}

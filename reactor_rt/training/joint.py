"""Stages 1 and 2: joint LM pre-training and joint interaction SFT.

Both train the encoder (masked LM) and the decoder (autoregressive) on the same sequences with the
shared embedding. The decoder's memory cross-attention reads the encoder's layer outputs, detached
and noised, in place of an STM: the decoder learns to *use* memory-like context, while the noise and
the encoder's masked input keep it from simply copying. Stage 1 runs on natural text, stage 2 on
``[BOS][Q] query [A] answer [EOS]`` interactions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from reactor_rt.model import ReactiveTransformer
from reactor_rt.model.memory import MemoryKV
from reactor_rt.training.batches import TextBatch, mask_token_id
from reactor_rt.training.losses import masked_token_loss

__all__ = ["JointConfig", "joint_loss", "mask_for_mlm", "memory_from_hidden"]


@dataclass(frozen=True)
class JointConfig:
    """Knobs of the joint encoder/decoder objective."""

    mask_prob: float = 0.15
    noise_std: float = 0.15  # relative to the hidden states' RMS
    mlm_weight: float = 1.0
    moe_aux_weight: float = 0.01


def mask_for_mlm(
    ids: Tensor,
    mask: Tensor,
    mask_id: int,
    special_ids: frozenset[int],
    vocab: int,
    prob: float,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """BERT-style corruption of real, non-special positions -> (corrupted ids, positions to predict).

    Of the chosen positions 80 % become [MASK], 10 % a random regular token, 10 % stay.
    """
    specials = torch.tensor(sorted(special_ids), dtype=ids.dtype)
    candidates = mask & ~torch.isin(ids, specials)
    chosen = candidates & (torch.rand(ids.shape, generator=gen) < prob)
    kind = torch.rand(ids.shape, generator=gen)
    first_regular = max(special_ids) + 1  # our tokenizers put every special token first
    random_ids = torch.randint(first_regular, vocab, ids.shape, generator=gen)
    out = ids.clone()
    out[chosen & (kind < 0.8)] = mask_id
    swap = chosen & (kind >= 0.8) & (kind < 0.9)
    out[swap] = random_ids[swap]
    return out, chosen


def memory_from_hidden(model: ReactiveTransformer, hidden: Tensor, mask: Tensor) -> MemoryKV:
    """Decoder memory K/V from per-layer hidden states (L, B, T, D): one "slot" per real token.

    Padding rows are zeroed (a zero slot's key and value are zero: it only dilutes attention slightly).
    """
    hidden = hidden * mask[None, :, :, None].to(hidden.dtype)
    ks, vs = zip(*(layer.memory_kv(hidden[i]) for i, layer in enumerate(model.decoder_layers)), strict=True)
    return MemoryKV(torch.stack(ks), torch.stack(vs))


def joint_loss(
    model: ReactiveTransformer,
    batch: TextBatch,
    cfg: JointConfig,
    gen: torch.Generator,
    decoder_target: Callable[[TextBatch], Tensor] | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Encoder MLM + decoder AR (reading the noised, detached encoder outputs); returns (loss, stats).

    ``decoder_target`` picks which tokens the decoder loss counts (default: batch.target).
    """
    tok = model.tokenizer
    specials = tok.special_ids | {mask_token_id(tok)}
    corrupted, chosen = mask_for_mlm(
        batch.ids, batch.mask, mask_token_id(tok), specials, model.config.vocab_size, cfg.mask_prob, gen
    )
    hidden = model.encode(corrupted, attention_mask=batch.mask)  # (L, B, T, D)
    logits_mlm = model.mlm_logits(hidden[-1])  # (B, T, V)
    mlm = F.cross_entropy(logits_mlm[chosen], batch.ids[chosen]) if chosen.any() else logits_mlm.sum() * 0.0
    # the decoder reads what the encoder made of the (masked) text, detached and noised
    memory = hidden.detach()
    rms = memory.pow(2).mean(dim=-1, keepdim=True).sqrt()
    memory = memory + cfg.noise_std * rms * torch.randn(memory.shape, generator=gen)
    mem = memory_from_hidden(model, memory, batch.mask)
    logits, aux = model.decode_with_aux(batch.ids[:, :-1], memory_kv=mem, attention_mask=batch.mask[:, :-1])
    target = batch.target if decoder_target is None else decoder_target(batch)
    ar = masked_token_loss(logits, batch.ids, target)
    loss = ar + cfg.mlm_weight * mlm + cfg.moe_aux_weight * aux
    return loss, {"ar": float(ar.detach()), "mlm": float(mlm.detach())}

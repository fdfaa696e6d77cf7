"""Which parameters live learning may change, and how a serving model takes the changed ones.

* "decoder" (the default): the decoder layers (self-attention, memory cross-attention, FFN/MoE), an
  imported model's stateless decoder layers and own output head, and the final decoder norm. The shared embedding is *not* included: it is also the encoder's input and
  the tied output head, so changing it would move the encoded interactions under a memory-attention
  network trained on the old ones, and every actor would need every swap. Decoder-only updates touch
  the decoder actor alone.
* "memory": the memory-attention network (its attention layers, norms, null key/value and residual
  gates). Its gradient comes through the memory update that wrote the STM (`MemorySource`).
* "all": everything the objectives reach: shared embedding, decoder, encoder, memory attention (not the
  MLM head, which no live objective uses, nor the learned initial STM).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from reactor_rt.model import ReactiveTransformer

__all__ = ["PARAM_SETS", "ParamSet", "apply_serving_state", "select_parameters"]

ParamSet = Literal["decoder", "memory", "all"]
PARAM_SETS: tuple[str, ...] = ("decoder", "memory", "all")

_PREFIXES: dict[str, tuple[str, ...]] = {
    "decoder": ("decoder_layers.", "stateless_layers.", "final_stateless_layers.", "decoder_norm.", "head."),
    "memory": ("memory_attention.",),
    "all": ("embedding.", "decoder_layers.", "stateless_layers.", "final_stateless_layers.", "decoder_norm.",
            "head.", "encoder_layers.", "memory_attention."),
}


def select_parameters(model: ReactiveTransformer, params: str) -> dict[str, nn.Parameter]:
    """The named parameters of one set ("decoder", "memory" or "all"), in the model's order."""
    if params not in _PREFIXES:
        raise ValueError(f"params must be one of {PARAM_SETS}, got {params!r}")
    prefixes = _PREFIXES[params]
    return {n: p for n, p in model.named_parameters() if n.startswith(prefixes)}


@torch.no_grad()
def apply_serving_state(model: ReactiveTransformer, state: dict[str, Tensor]) -> None:
    """Copy a learner's `state_dict_for_serving()` into a serving model, in place.

    Every name and shape is checked before anything is written, so a bad state leaves the model as it
    was (ValueError). Callers swap between interactions; caches derived from the weights (e.g. memory
    cross-attention keys/values) must be dropped by the caller.
    """
    own = dict(model.named_parameters())
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise ValueError(f"unknown parameters in serving state: {unknown[:5]}")
    wrong = sorted(n for n, t in state.items() if t.shape != own[n].shape)
    if wrong:
        raise ValueError(f"shape mismatch in serving state: {wrong[:5]}")
    for name, tensor in state.items():
        own[name].copy_(tensor)

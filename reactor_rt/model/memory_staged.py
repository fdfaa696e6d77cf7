"""Staged memory update (``memory_update="staged"``): the layout of imported RxLM checkpoints.

Each STM layer goes through two attention stages, each closed by its own residual gate:

1. consolidation (variants other than "simple"): the normalised slots attend to the slots themselves
   ("self"), to the normalised mean of all layers ("interlayer"; with ``memory_groups`` > 1 the mean
   of the layer's group), or to a gated mix of both ("gated-self-interlayer"); no positions anywhere;
2. write: the normalised result attends to the normalised encoded layer, RoPE on the keys only.

The gate here summarises a slot (its mean, or a learned projection) instead of gating each element,
and may be a tanh gate ``(1 + G) * new + (1 - G) * old`` or no gate at all (``old + new``). Those
options exist for parity with imported models; the native fused layout (memory.py) is the default and
the one the design recommends (a plain residual lets the STM grow without bound).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reactor_rt.model.attention import Attention, RotaryEmbedding
from reactor_rt.model.config import RxTConfig
from reactor_rt.model.layers import RMSNorm
from reactor_rt.model.memory import MemoryPlan

__all__ = ["SlotGate", "StagedMemoryAttention", "StagedMemoryLayer"]


class SlotGate(nn.Module):
    """Residual gate over a slot summary: `mix(old, new)` for one STM layer (B, S, D).

    kind "none": old + new. "static": G = act(w). "elementwise": G = act(w * status(old + new)), status
    a slot's mean (or a learned projection). "linear": G = act(Linear_S(status(old + new))), mixing slots.
    per_slot: one gate per slot (else one per layer).
    """

    def __init__(self, config: RxTConfig) -> None:
        super().__init__()
        c = config
        self.kind, self.per_slot = c.residual_gate, c.gate_per_slot
        self.tanh = c.gate_activation == "tanh"
        self.status_proj = nn.Linear(c.dim, 1) if c.gate_slot_status == "linear" else None
        if self.kind == "linear":
            self.proj = nn.Linear(c.stm_slots, c.stm_slots if self.per_slot else 1)
        elif self.kind in ("static", "elementwise"):
            shape = (c.stm_slots, 1) if self.per_slot else (1, 1)
            self.weight = nn.Parameter(torch.full(shape, float(c.gate_init)))

    def _status(self, x: Tensor) -> Tensor:
        if self.kind == "linear":  # (B, S)
            return x.mean(-1) if self.status_proj is None else self.status_proj(x).squeeze(-1)
        if self.status_proj is not None:  # (B, S, 1)
            return self.status_proj(x)
        return x.mean(-1, keepdim=True) if self.per_slot else x.mean((-2, -1), keepdim=True)

    def forward(self, old: Tensor, new: Tensor) -> Tensor:
        if self.kind == "none":
            return old + new
        if self.kind == "static":
            logit = self.weight
        elif self.kind == "elementwise":
            logit = self.weight * self._status(new + old)
        else:
            logit = self.proj(self._status(new + old)).unsqueeze(-1)  # (B, S or 1, 1)
        if self.tanh:
            g = torch.tanh(logit)
            return (1 + g) * new + (1 - g) * old
        g = torch.sigmoid(logit)
        return g * new + (1 - g) * old


class StagedMemoryLayer(nn.Module):
    """Consolidation stage (optional) and write stage for one STM layer."""

    def __init__(self, config: RxTConfig) -> None:
        super().__init__()
        c = config
        self.variant = c.memory_attention
        bias = c.memory_attn_out_bias
        if self.variant != "simple":
            self.pre_norm = RMSNorm(c.dim, c.norm_eps)
            pq, pkv = c.heads_of("memory_pre")
            self.pre_attn = Attention(c.dim, c.heads, pq, pkv, fused=False, out_bias=bias)
            self.pre_gate = SlotGate(c)
            if self.variant == "gated-self-interlayer":
                self.mix_gate = SlotGate(c)
        self.stm_norm = RMSNorm(c.dim, c.norm_eps)
        self.enc_norm = RMSNorm(c.dim, c.norm_eps)
        mq, mkv = c.heads_of("memory")
        self.attn = Attention(c.dim, c.heads, mq, mkv, fused=False, out_bias=bias)
        self.gate = SlotGate(c)

    def forward(self, stm: Tensor, mean: Tensor | None, encoded: Tensor, cis: Tensor, mask: Tensor | None) -> Tensor:
        """stm (B, S, D) raw layer, mean (B, S, D) normalised layer mean or None, encoded (B, T, D),
        cis (T, 1, hd/2), mask (B, 1, 1, T) bool or None -> new STM layer (B, S, D)."""
        if self.variant != "simple":
            s = self.pre_norm(stm)
            if self.variant == "self":
                ctx = s
            elif self.variant == "interlayer":
                assert mean is not None
                ctx = mean
            else:
                assert mean is not None
                ctx = self.mix_gate(s, mean)
            k, v = self.pre_attn.project_kv(ctx)
            stm = self.pre_gate(stm, self.pre_attn.attend(self.pre_attn.project_q(s), k, v))
        q = self.attn.project_q(self.stm_norm(stm))  # no RoPE: slots have no order
        k, v = self.attn.project_kv(self.enc_norm(encoded), cis)  # RoPE on the keys only
        return self.gate(stm, self.attn.attend(q, k, v, mask))


class StagedMemoryAttention(nn.Module):
    """The staged memory-attention network: one StagedMemoryLayer per STM layer."""

    def __init__(self, config: RxTConfig, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.layers = nn.ModuleList(StagedMemoryLayer(config) for _ in range(config.layers))
        self.uses_mean = config.memory_attention in ("interlayer", "gated-self-interlayer")
        if self.uses_mean:
            self.mean_norm = RMSNorm(config.dim, config.norm_eps)
        self.groups = config.memory_groups
        self.rope = rope

    def forward(self, stm: Tensor, encoded: Tensor, mask: Tensor | None = None) -> Tensor:
        """stm (B, L, S, D), encoded (L, B, T, D), mask (B, T) bool True = real token -> new stm."""
        if encoded.shape[0] != stm.shape[1] or encoded.shape[1] != stm.shape[0]:
            raise ValueError(f"encoded {tuple(encoded.shape)} does not match stm {tuple(stm.shape)}")
        cis = self.rope.tables(encoded.shape[2])
        per_group = len(self.layers) // self.groups
        means = None
        if self.uses_mean:  # (B, G, S, D): normalised mean of each group of layers of the old STM
            means = self.mean_norm(stm.unflatten(1, (self.groups, per_group)).mean(2))
        attn_mask = None if mask is None else mask.bool()[:, None, None, :]
        new = [
            layer(stm[:, i], None if means is None else means[:, i // per_group], encoded[i], cis, attn_mask)
            for i, layer in enumerate(self.layers)
        ]
        return torch.stack(new, dim=1)

    def prepare(self, stm: Tensor) -> MemoryPlan:
        """A plan that holds only the STM: this layout computes its whole update in `write`."""
        return MemoryPlan(stm, None)

    def write(self, plan: MemoryPlan, encoded: Tensor, mask: Tensor | None = None) -> Tensor:
        """`forward` on the plan's STM."""
        return self(plan.stm, encoded, mask)

"""Short-Term Memory write path: Memory Norm, memory-attention variants and the residual gate.

Memory attention: queries from the (normalised) STM layer, keys/values from the encoded interaction of
the same layer. The STM is a set, so RoPE goes on the keys only (encoded tokens have positions, slots
don't). The residual gate then mixes old and new: `new = (1 - G) * old + G * update`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reactor_rt.model.attention import Attention, RotaryEmbedding
from reactor_rt.model.config import RxTConfig
from reactor_rt.model.layers import RMSNorm

__all__ = ["MemoryAttention", "MemoryAttentionLayer", "MemoryKV", "MemoryNorm", "MemoryPlan", "ResidualGate"]


class MemoryNorm(RMSNorm):
    """RMS norm of an STM layer before it is read (memory attention and memory cross-attention)."""


class ResidualGate(nn.Module):
    """Sigmoid gate G in `new = (1 - G) * old + G * update`; a convex mix, so the STM stays bounded.

    kind: "static" (G from learned weights only: one value per slot, or per layer),
    "elementwise" (G = sigmoid(w * (old + update) + b): one gate per element, w and b per slot or per
    layer), "linear" (G = sigmoid(Linear(old + update) + b): one gate per slot from its contents, or
    one per layer from the slot mean). per_slot picks per-slot parameters (the recommended default).
    """

    def __init__(self, kind: str, slots: int, dim: int, per_slot: bool, bias_init: float) -> None:
        super().__init__()
        self.kind, self.per_slot = kind, per_slot
        shape = (slots, 1) if per_slot else (1, 1)
        # Bias init: sigmoid(-1) ~ 0.27, so a fresh (untrained, noisy) memory-attention network overwrites
        # only about a quarter of each slot per update: the memory is not wiped by early random updates,
        # gradients flow along the old-memory path through long update chains (like an LSTM forget-gate
        # bias), and the STM stays bounded from the first step.
        self.bias = nn.Parameter(torch.full(shape, float(bias_init)))
        if kind == "elementwise":
            self.weight = nn.Parameter(torch.zeros(shape))
        elif kind == "linear":
            self.proj = nn.Linear(dim, 1, bias=False)
            nn.init.zeros_(self.proj.weight)
        elif kind != "static":
            raise ValueError(f"unknown residual gate kind {kind!r}")

    def gate(self, old: Tensor, update: Tensor) -> Tensor:
        """G in (0, 1), broadcastable to old (B, S, D): static (S or 1, 1), elementwise (B, S, D),
        linear (B, S or 1, 1)."""
        if self.kind == "static":
            logit = self.bias
        elif self.kind == "elementwise":
            logit = self.weight * (old + update) + self.bias  # (B, S, D)
        else:
            mixed = old + update
            if not self.per_slot:
                mixed = mixed.mean(-2, keepdim=True)
            logit = self.proj(mixed) + self.bias
        return torch.sigmoid(logit)

    def forward(self, old: Tensor, update: Tensor) -> Tensor:
        g = self.gate(old, update)
        return old + g * (update - old)  # == (1 - g) * old + g * update


class MemoryAttentionLayer(nn.Module):
    """Writes one encoded layer into one STM layer; `variant` picks what the slots see first.

    simple: STM attends to the encoded data only. self: the slots first attend to each other.
    interlayer: the slots first attend to the mean of all (normalised) STM layers.
    gated-self-interlayer: a sigmoid gate picks, per slot, between the layer itself and the interlayer
    mean as keys/values of that first attention.
    """

    def __init__(self, config: RxTConfig) -> None:
        super().__init__()
        c = config
        self.variant = c.memory_attention
        self.stm_norm = MemoryNorm(c.dim, c.norm_eps)
        self.enc_norm = RMSNorm(c.dim, c.norm_eps)
        self.pre = None
        if self.variant != "simple":
            self.pre = Attention(c.dim, c.heads, *c.heads_of("memory_pre"), fused=False)
            self.pre_norm = RMSNorm(c.dim, c.norm_eps)
        if self.variant == "gated-self-interlayer":
            self.mix = nn.Linear(2 * c.dim, 1)
        query_heads, kv_heads = c.heads_of("memory")
        self.attn = Attention(c.dim, c.heads, query_heads, kv_heads, fused=False)
        # a learned "attend to nothing" key/value: lets a slot take (almost) no update, and keeps the
        # softmax defined for fully padded rows
        self.null_k = nn.Parameter(torch.zeros(1, kv_heads, 1, c.head_dim))
        self.null_v = nn.Parameter(torch.zeros(1, kv_heads, 1, c.head_dim))
        self.gate = ResidualGate(c.residual_gate, c.stm_slots, c.dim, c.gate_per_slot, c.gate_bias_init)

    def forward(
        self,
        stm: Tensor,
        normed: Tensor,
        interlayer: Tensor,
        encoded: Tensor,
        cis: Tensor,
        mask: Tensor | None,
    ) -> Tensor:
        """stm (B, S, D) raw layer, normed = MemoryNorm(stm), interlayer (B, S, D) mean of normed layers,
        encoded (B, T, D), cis (T, 1, hd/2), mask (B, T) bool -> new STM layer (B, S, D)."""
        return self.write(stm, *self.prepare(normed, interlayer), encoded, cis, mask)

    def prepare(self, normed: Tensor, interlayer: Tensor) -> tuple[Tensor, Tensor | None]:
        """The part of `forward` that reads only the STM: the write's queries (B, Hq, S, hd), and what
        the consolidation step adds (B, S, D; None for "simple")."""
        s, consolidated = normed, None
        if self.pre is not None:
            if self.variant == "self":
                ctx = s
            elif self.variant == "interlayer":
                ctx = interlayer
            else:
                g = torch.sigmoid(self.mix(torch.cat([s, interlayer], dim=-1)))  # (B, S, 1)
                ctx = g * s + (1 - g) * interlayer
            k, v = self.pre.project_kv(ctx)
            consolidated = self.pre.attend(self.pre.project_q(s), k, v)  # what the slots learn from the STM
            s = self.pre_norm(s + consolidated)
        return self.attn.project_q(s), consolidated  # queries without RoPE: slots have no order

    def write(self, stm: Tensor, queries: Tensor, consolidated: Tensor | None, encoded: Tensor, cis: Tensor,
              mask: Tensor | None) -> Tensor:
        """The rest of `forward`, given what `prepare` made: attend to the encoded layer and gate."""
        k, v = self.attn.project_kv(self.enc_norm(encoded), cis)  # (B, Hkv, T, hd), RoPE on keys only
        b = k.shape[0]
        k = torch.cat([self.null_k.expand(b, -1, -1, -1), k], dim=2)  # (B, Hkv, 1+T, hd)
        v = torch.cat([self.null_v.expand(b, -1, -1, -1), v], dim=2)
        attn_mask = None
        if mask is not None:
            attn_mask = F.pad(mask, (1, 0), value=True)[:, None, None, :]  # (B, 1, 1, 1+T)
        update = self.attn.attend(queries, k, v, attn_mask)  # (B, S, D) what the slots take from the input
        if consolidated is not None:
            # the consolidation step writes too (not only steers the queries), as a stacked layer would
            update = update + consolidated
        return self.gate(stm, update)


class MemoryAttention(nn.Module):
    """The memory-attention network: one MemoryAttentionLayer per STM layer."""

    def __init__(self, config: RxTConfig, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(config) for _ in range(config.layers))
        self.rope = rope

    def forward(self, stm: Tensor, encoded: Tensor, mask: Tensor | None = None) -> Tensor:
        """stm (B, L, S, D), encoded (L, B, T, D), mask (B, T) bool True = real token -> new stm."""
        return self.write(self.prepare(stm), encoded, mask)

    def prepare(self, stm: Tensor) -> MemoryPlan:
        """What the update computes from stm (B, L, S, D) alone, before the encoded interaction exists."""
        normed = [layer.stm_norm(stm[:, i]) for i, layer in enumerate(self.layers)]
        interlayer = torch.stack(normed, 0).mean(0)  # (B, S, D)
        return MemoryPlan(stm, tuple(layer.prepare(normed[i], interlayer) for i, layer in enumerate(self.layers)))

    def write(self, plan: MemoryPlan, encoded: Tensor, mask: Tensor | None = None) -> Tensor:
        """The new stm from a `prepare` plan and encoded (L, B, T, D), mask (B, T)."""
        assert plan.layers is not None, "a plan made by this network's prepare"
        stm = plan.stm
        if encoded.shape[0] != stm.shape[1] or encoded.shape[1] != stm.shape[0]:
            raise ValueError(f"encoded {tuple(encoded.shape)} does not match stm {tuple(stm.shape)}")
        if mask is not None:
            # a 0/1 mask of any dtype means what encode() reads it as: a float one would reach attention as
            # an additive bias (padding attended), an integer one would be refused
            mask = mask.bool()
        cis = self.rope.tables(encoded.shape[2])
        new = [
            layer.write(stm[:, i], queries, consolidated, encoded[i], cis, mask)
            for i, (layer, (queries, consolidated)) in enumerate(zip(self.layers, plan.layers, strict=True))
        ]
        return torch.stack(new, dim=1)


@dataclass(frozen=True)
class MemoryPlan:
    """The part of a memory update that reads only the STM, made before the encoded interaction
    exists (`ReactiveTransformer.prepare_memory`): the runtime's memory updater computes it while the
    encoder encodes. ``stm`` (B, L, S, D) is the STM it was made from; ``layers`` holds each layer's
    write queries and consolidation output, or is None where the memory-attention layout computes all
    of its update at write time (the staged layout of imported checkpoints)."""

    stm: Tensor
    layers: tuple[tuple[Tensor, Tensor | None], ...] | None


@dataclass(frozen=True)
class MemoryKV:
    """Memory cross-attention keys/values of every decoder layer, computed once per interaction.

    k, v: (L, B, Hkv, S, hd). Slots carry no position, so permuting the STM slots permutes these rows
    the same way and leaves the decoder's output unchanged. Index rows with `kv[i]`, `kv[[0, 2]]`;
    stack per-stream entries with `MemoryKV.cat([...])`.
    """

    k: Tensor
    v: Tensor

    @property
    def batch_size(self) -> int:
        """Number of rows (B)."""
        return self.k.shape[1]

    def __len__(self) -> int:
        return self.batch_size

    def __getitem__(self, rows: int | slice | list[int] | Tensor) -> MemoryKV:
        if isinstance(rows, int):
            rows = slice(rows, rows + 1)
        return MemoryKV(self.k[:, rows], self.v[:, rows])

    @classmethod
    def cat(cls, parts: list[MemoryKV]) -> MemoryKV:
        """Stack the rows of several MemoryKV objects into one batch."""
        return cls(torch.cat([p.k for p in parts], dim=1), torch.cat([p.v for p in parts], dim=1))

    def to(self, *args: object, **kwargs: object) -> MemoryKV:
        """Move/cast like Tensor.to."""
        return MemoryKV(self.k.to(*args, **kwargs), self.v.to(*args, **kwargs))

"""Attention: rotary position embedding and one attention module for MHA / GQA / MQA / SQA.

The kind follows from the head counts (RxTConfig): `query_heads < heads` is Sparse Query Attention,
whose output projection takes the reduced width `query_heads * head_dim`; `kv_heads < query_heads`
shares each key/value head among a group of query heads (GQA, MQA at 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reactor_rt.model.linear import Linear

__all__ = ["Attention", "RotaryEmbedding", "apply_rope"]


class RotaryEmbedding(nn.Module):
    """Precomputed RoPE rotations as unit complex numbers `cis` (max_len, head_dim / 2).

    Channel pairs (2i, 2i+1) of a head rotate together: one complex multiply applies RoPE.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (T, hd/2)
        # not persistent: derived from the config, so checkpoints stay small and exact
        self.register_buffer("cis", torch.polar(torch.ones_like(angles), angles).to(torch.complex64),
                             persistent=False)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # Module.to(dtype) casts complex buffers too, dropping the imaginary part (torch only warns):
        # the rotations stay complex64 whatever the model's dtype, and only follow it to its device.
        cis = self._buffers.pop("cis")
        try:
            super()._apply(fn, recurse)
        finally:
            self._buffers["cis"] = cis
        self._buffers["cis"] = cis.to(fn(torch.empty(0, device=cis.device)).device)  # where fn sends tensors
        return self

    @property
    def max_len(self) -> int:
        """Number of positions the table covers."""
        return self.cis.shape[0]

    def tables(self, length: int, start: int = 0) -> Tensor:
        """Rotations for positions start .. start+length-1, shaped (T, 1, hd/2) to broadcast over
        (B, T, H, hd/2)."""
        if start + length > self.max_len:
            raise ValueError(f"sequence of {start + length} positions exceeds max_seq_len {self.max_len}")
        return self.cis[start : start + length, None]

    def at(self, positions: Tensor) -> Tensor:
        """Rotations for per-row positions (B,) of one-token steps -> (B, 1, 1, hd/2)."""
        return self.cis[positions][:, None, None]


def apply_rope(x: Tensor, cis: Tensor) -> Tensor:
    """Rotate x (B, T, H, hd) by cis (broadcastable to (B, T, H, hd/2)); returns a new tensor.

    cis may also be real: the same rotations as (cos, sin) pairs, (..., hd/2, 2) (`torch.view_as_real`
    of the complex table). That form is what torch.compile can trace (its compiler has no complex
    kernels); the complex multiply is fewer ops in eager mode.
    """
    if x.dtype != torch.float32:  # complex32 is poorly supported: rotate in float32
        return apply_rope(x.float(), cis).to(x.dtype)
    if not cis.is_complex():
        pairs = x.unflatten(-1, (-1, 2))  # (B, T, H, hd/2, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        cos, sin = cis[..., 0], cis[..., 1]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))  # (B, T, H, hd/2)
    return torch.view_as_real(pairs * cis).flatten(-2)


class Attention(nn.Module):
    """Multi-head attention with separate query / key-value head counts.

    `fused=True` (self-attention) projects q, k and v with one matmul; otherwise queries and keys/values
    come from different inputs (cross-attention), each with one projection.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        query_heads: int,
        kv_heads: int,
        fused: bool,
        out_bias: bool = False,
        out_gate: str | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = dim // heads
        self.query_heads = query_heads
        self.kv_heads = kv_heads
        self.fused = fused
        q_width, kv_width = query_heads * self.head_dim, kv_heads * self.head_dim
        self.q_width, self.kv_width = q_width, kv_width
        if fused:
            self.qkv = Linear(dim, q_width + 2 * kv_width, bias=False)
        else:
            self.q = Linear(dim, q_width, bias=False)
            self.kv = Linear(dim, 2 * kv_width, bias=False)
        self.out = Linear(q_width, dim, bias=out_bias)  # SQA: from the reduced width
        # gated attention (imported checkpoints): heads' output * act(Linear(query input)) before `out`
        self.gate: Linear | None = None
        if out_gate is not None:
            from reactor_rt.model.layers import ACTIVATIONS

            self.gate = Linear(dim, q_width, bias=False)
            self.gate_act = ACTIVATIONS[out_gate]

    def project_qkv(self, x: Tensor, cis: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention projections of x (B, T, D) -> q (B, Hq, T, hd), k, v (B, Hkv, T, hd).

        cis (from RotaryEmbedding) rotates queries and keys in one go; None = no positions.
        """
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, self.query_heads + 2 * self.kv_heads, self.head_dim)
        hq, hk = self.query_heads, self.query_heads + self.kv_heads
        qk = qkv[:, :, :hk] if cis is None else apply_rope(qkv[:, :, :hk], cis)
        return qk[:, :, :hq].transpose(1, 2), qk[:, :, hq:].transpose(1, 2), qkv[:, :, hk:].transpose(1, 2)

    def project_q(self, x: Tensor, cis: Tensor | None = None) -> Tensor:
        """Cross-attention queries of x (B, T, D) -> (B, Hq, T, hd), rotated when cis is given."""
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.query_heads, self.head_dim)
        return (q if cis is None else apply_rope(q, cis)).transpose(1, 2)

    def project_kv(self, ctx: Tensor, cis: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Cross-attention keys/values of ctx (B, S, D) -> k, v (B, Hkv, S, hd); keys rotated when cis
        is given."""
        b, s, _ = ctx.shape
        kv = self.kv(ctx).view(b, s, 2 * self.kv_heads, self.head_dim)
        k, v = kv[:, :, : self.kv_heads], kv[:, :, self.kv_heads :]
        if cis is not None:
            k = apply_rope(k, cis)
        return k.transpose(1, 2), v.transpose(1, 2)

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        gate_input: Tensor | None = None,
    ) -> Tensor:
        """Scaled dot-product attention and output projection -> (B, T, D).

        mask: bool, True = may attend, broadcastable to (B, Hq, T, S). gate_input (B, T, D): what the
        queries were projected from; needed only by a gated attention.
        """
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=self.kv_heads != self.query_heads
        )  # (B, Hq, T, hd)
        b, _, t, _ = y.shape
        y = y.transpose(1, 2).reshape(b, t, self.q_width)
        if self.gate is not None:
            assert gate_input is not None, "a gated attention needs gate_input"
            y = y * self.gate_act(self.gate(gate_input))
        return self.out(y)

"""Attention: rotary position embedding and one attention module for MHA / GQA / MQA / SQA.

The kind follows from the head counts (RxTConfig): `query_heads < heads` is Sparse Query Attention,
whose output projection takes the reduced width `query_heads * head_dim`; `kv_heads < query_heads`
shares each key/value head among a group of query heads (GQA, MQA at 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Attention", "RotaryEmbedding", "apply_rope"]


class RotaryEmbedding(nn.Module):
    """Precomputed RoPE tables: `cos`, `sin` of shape (max_len, head_dim), "rotate half" layout."""

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (T, hd/2)
        angles = torch.cat([angles, angles], dim=-1)  # (T, hd)
        # not persistent: derived from the config, so checkpoints stay small and exact
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    @property
    def max_len(self) -> int:
        """Number of positions the tables cover."""
        return self.cos.shape[0]

    def tables(self, length: int, start: int = 0) -> tuple[Tensor, Tensor]:
        """(cos, sin) of shape (length, head_dim) for positions start .. start+length-1."""
        if start + length > self.max_len:
            raise ValueError(f"sequence of {start + length} positions exceeds max_seq_len {self.max_len}")
        return self.cos[start : start + length], self.sin[start : start + length]

    def at(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """(cos, sin) gathered for per-row positions (B,) -> (B, 1, 1, head_dim), for one-token steps."""
        return self.cos[positions][:, None, None], self.sin[positions][:, None, None]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, H, T, hd) by the angles in cos/sin (broadcastable to x)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Multi-head attention with separate query / key-value head counts.

    `fused=True` (self-attention) projects q, k and v with one matmul; otherwise queries and keys/values
    come from different inputs (cross-attention), each with one projection.
    """

    def __init__(self, dim: int, heads: int, query_heads: int, kv_heads: int, fused: bool) -> None:
        super().__init__()
        self.head_dim = dim // heads
        self.query_heads = query_heads
        self.kv_heads = kv_heads
        self.fused = fused
        q_width, kv_width = query_heads * self.head_dim, kv_heads * self.head_dim
        self.q_width, self.kv_width = q_width, kv_width
        if fused:
            self.qkv = nn.Linear(dim, q_width + 2 * kv_width, bias=False)
        else:
            self.q = nn.Linear(dim, q_width, bias=False)
            self.kv = nn.Linear(dim, 2 * kv_width, bias=False)
        self.out = nn.Linear(q_width, dim, bias=False)  # SQA: from the reduced width

    def _heads(self, x: Tensor, n: int) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)  # (B, n, T, hd)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention projections of x (B, T, D) -> q (B, Hq, T, hd), k, v (B, Hkv, T, hd)."""
        q, k, v = self.qkv(x).split([self.q_width, self.kv_width, self.kv_width], dim=-1)
        return self._heads(q, self.query_heads), self._heads(k, self.kv_heads), self._heads(v, self.kv_heads)

    def project_q(self, x: Tensor) -> Tensor:
        """Cross-attention queries of x (B, T, D) -> (B, Hq, T, hd)."""
        return self._heads(self.q(x), self.query_heads)

    def project_kv(self, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys/values of ctx (B, S, D) -> k, v (B, Hkv, S, hd)."""
        k, v = self.kv(ctx).split(self.kv_width, dim=-1)
        return self._heads(k, self.kv_heads), self._heads(v, self.kv_heads)

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        """Scaled dot-product attention and output projection -> (B, T, D).

        mask: bool, True = may attend, broadcastable to (B, Hq, T, S).
        """
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=self.kv_heads != self.query_heads
        )  # (B, Hq, T, hd)
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, self.q_width))

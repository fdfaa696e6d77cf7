"""Feed-forward layers: RMSNorm, SwiGLU and a Mixture-of-Experts with a load-balancing loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MoE", "RMSNorm", "SwiGLU", "load_balancing_loss"]


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned per-channel scale."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class SwiGLU(nn.Module):
    """Gated FFN: down(silu(gate(x)) * up(x)), gate and up fused into one matmul."""

    def __init__(self, dim: int, ff_dim: int) -> None:
        super().__init__()
        self.ff_dim = ff_dim
        self.gate_up = nn.Linear(dim, 2 * ff_dim, bias=False)
        self.down = nn.Linear(ff_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        g, u = self.gate_up(x).split(self.ff_dim, dim=-1)
        return self.down(F.silu(g) * u)


def load_balancing_loss(probs: Tensor, top_idx: Tensor, experts: int, mask: Tensor | None = None) -> Tensor:
    """Switch-style balance loss: experts * sum_e(fraction routed to e * mean router prob of e).

    Equals 1.0 for perfectly uniform routing and grows as routing concentrates on few experts.
    probs (N, E), top_idx (N, k), mask (N,) bool True = real token.
    """
    chosen = F.one_hot(top_idx, experts).sum(1).to(probs.dtype)  # (N, E)
    if mask is not None:
        m = mask.to(probs.dtype)[:, None]
        count = m.sum().clamp_min(1.0)
        frac = (chosen * m).sum(0) / (count * top_idx.shape[1])
        mean_p = (probs * m).sum(0) / count
    else:
        frac = chosen.mean(0) / top_idx.shape[1]
        mean_p = probs.mean(0)
    return experts * (frac * mean_p).sum()


class MoE(nn.Module):
    """Mixture of SwiGLU experts: a linear router, top-k with renormalised weights, optional shared expert.

    Small token counts (decode steps) run every expert densely and weight them by the sparse top-k
    weights: a few large batched matmuls beat gathering tokens per expert when tokens are few.
    """

    # at most this many tokens x experts go the dense way (measured: benchmarks/model_speed.py)
    dense_limit = 256

    def __init__(self, dim: int, ff_dim: int, experts: int, top_k: int, shared_expert: bool = False) -> None:
        super().__init__()
        self.experts, self.top_k, self.ff_dim = experts, top_k, ff_dim
        self.router = nn.Linear(dim, experts, bias=False)
        self.w_gate_up = nn.Parameter(torch.randn(experts, dim, 2 * ff_dim) / math.sqrt(dim))
        self.w_down = nn.Parameter(torch.randn(experts, ff_dim, dim) / math.sqrt(ff_dim))
        self.shared = SwiGLU(dim, ff_dim) if shared_expert else None

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Router for x (N, D) -> probs (N, E), top-k weights (N, k) summing to 1, top-k indices (N, k)."""
        probs = self.router(x).float().softmax(dim=-1)
        weights, idx = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return probs, weights.to(x.dtype), idx

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (..., D), mask (...) bool True = real token -> (y like x, load-balancing loss scalar)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, D)
        probs, weights, idx = self.route(flat)
        if flat.shape[0] * self.experts <= self.dense_limit:
            y = self._dense(flat, weights, idx)
        else:
            y = self._sparse(flat, weights, idx)
        if self.shared is not None:
            y = y + self.shared(flat)
        aux = load_balancing_loss(probs, idx, self.experts, None if mask is None else mask.reshape(-1))
        return y.view(shape), aux

    def _expert(self, x: Tensor, w_gate_up: Tensor, w_down: Tensor) -> Tensor:
        g, u = (x @ w_gate_up).split(self.ff_dim, dim=-1)
        return (F.silu(g) * u) @ w_down

    def _dense(self, x: Tensor, weights: Tensor, idx: Tensor) -> Tensor:
        combine = torch.zeros(x.shape[0], self.experts, dtype=x.dtype, device=x.device)
        combine.scatter_(1, idx, weights)  # (N, E), zero for experts not chosen
        out = self._expert(x.unsqueeze(0), self.w_gate_up, self.w_down)  # (E, N, D)
        return torch.einsum("end,ne->nd", out, combine)

    def _sparse(self, x: Tensor, weights: Tensor, idx: Tensor) -> Tensor:
        flat_idx = idx.reshape(-1)  # (N*k,)
        order = flat_idx.argsort()
        counts = torch.bincount(flat_idx, minlength=self.experts).tolist()
        token = order // self.top_k
        w = weights.reshape(-1)[order]
        y = torch.zeros_like(x)
        start = 0
        for e, n in enumerate(counts):
            if n:
                rows = token[start : start + n]
                out = self._expert(x[rows], self.w_gate_up[e], self.w_down[e])
                y.index_add_(0, rows, out * w[start : start + n, None])
            start += n
        return y

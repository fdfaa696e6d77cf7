"""Feed-forward layers: RMSNorm, SwiGLU and a Mixture-of-Experts with a load-balancing loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reactor_rt.model.linear import Linear

__all__ = ["ACTIVATIONS", "MoE", "RMSNorm", "SwiGLU", "load_balancing_loss"]

# gate activations of the gated FFNs (silu is SwiGLU, the native choice; the rest for imported models)
ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned per-channel scale: x / (rms(x) + eps) * weight.

    rms(x) = ||x|| / sqrt(D): one fused vector_norm kernel, a third of the small ops F.rms_norm runs
    on CPU, which matters in one-token decode steps (13 norms a step). The constants 1/sqrt(D) and eps
    are 0-dim tensors: a Python number costs each op a conversion of its own (~4 of 11 µs a norm).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        # not in the state dict; moved and cast with the module
        self.register_buffer("_inv_sqrt_dim", torch.tensor(dim**-0.5), persistent=False)
        self.register_buffer("_eps", torch.tensor(eps), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self._inv_sqrt_dim
        return x * (self.weight / (rms + self._eps))


class SwiGLU(nn.Module):
    """Gated FFN: down(silu(gate(x)) * up(x)), gate and up fused into one matmul.

    activation swaps silu for another gate activation and bias adds biases (imported checkpoints).
    """

    def __init__(self, dim: int, ff_dim: int, activation: str = "silu", bias: bool = False) -> None:
        super().__init__()
        self.ff_dim = ff_dim
        self.act = ACTIVATIONS[activation]
        self.gate_up = Linear(dim, 2 * ff_dim, bias=bias)
        self.down = Linear(ff_dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        g, u = self.gate_up(x).split(self.ff_dim, dim=-1)
        return self.down(self.act(g) * u)


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

    Small token counts (decode steps) run every expert densely, as two plain matmuls over all experts'
    weights, and weight the outputs by the sparse top-k weights (zero for experts not chosen): at a few
    tokens this beats gathering tokens per expert. Large token counts go the sparse way.
    """

    # the dense path runs while tokens x experts <= dense_limit: on this CPU it beat gather/scatter up to
    # ~64 tokens with 4 experts and ~24 with 12 (benchmarks/model_speed.py prints the cross-over)
    dense_limit = 256

    @classmethod
    def dense_tokens(cls, experts: int) -> int:
        """The most tokens that take the dense path with this many experts (see ``dense_limit``)."""
        return cls.dense_limit // experts

    def __init__(
        self,
        dim: int,
        ff_dim: int,
        experts: int,
        top_k: int,
        shared_expert: bool = False,
        *,
        activation: str = "silu",
        shared_ff_dim: int | None = None,
        shared_bias: bool = False,
        global_bias: bool = False,
        shared_global_bias: bool = False,
        weighted_shared: bool = False,
        expert_bias: bool = False,
        shared_count: int = 1,
        router_bf16: bool = False,
    ) -> None:
        super().__init__()
        self.experts, self.top_k, self.ff_dim = experts, top_k, ff_dim
        self.act = ACTIVATIONS[activation]
        self.router = Linear(dim, experts, bias=False)
        # (D, E, 2F) and (E, F, D): both views the dense path needs, (D, E*2F) and (E*F, D), are free
        self.w_gate_up = nn.Parameter(torch.randn(dim, experts, 2 * ff_dim) / math.sqrt(dim))
        self.w_down = nn.Parameter(torch.randn(experts, ff_dim, dim) / math.sqrt(ff_dim))
        self.shared = (
            SwiGLU(dim, shared_ff_dim or ff_dim, activation, shared_bias)
            if shared_expert and shared_count == 1 else None
        )
        # several shared experts (imported checkpoints): mixed by a softmax gate over them
        self.shared_experts: nn.ModuleList | None = None
        if shared_expert and shared_count > 1:
            self.shared_experts = nn.ModuleList(
                SwiGLU(dim, shared_ff_dim or ff_dim, activation, shared_bias) for _ in range(shared_count)
            )
            self.shared_gate = Linear(dim, shared_count, bias=False)
        self.n_shared = shared_count if shared_expert else 0
        # imported checkpoints: learned output biases, and routed/shared outputs weighted k:S
        self.global_bias = nn.Parameter(torch.zeros(dim)) if global_bias else None
        self.shared_global_bias = nn.Parameter(torch.zeros(dim)) if shared_expert and shared_global_bias else None
        self.weighted_shared = weighted_shared and shared_expert
        # route in bfloat16 like a reference trained with a bf16 router (expert choices follow its rounding)
        self.router_bf16 = router_bf16
        # per-expert biases (imported checkpoints); None keeps the bias-free native experts
        self.b_gate_up = nn.Parameter(torch.zeros(experts, 2 * ff_dim)) if expert_bias else None
        self.b_down = nn.Parameter(torch.zeros(experts, dim)) if expert_bias else None

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Router for x (N, D) -> logits (N, E), top-k weights (N, k) summing to 1, top-k indices (N, k).

        softmax over the top-k logits equals the full softmax renormalised over the chosen experts.
        """
        if self.router_bf16:
            logits = F.linear(x.bfloat16(), self.router.weight.bfloat16())
            top, idx = logits.softmax(dim=-1).topk(self.top_k, dim=-1)
            return logits.to(x.dtype), (top / (top.sum(-1, keepdim=True) + 1e-9)).to(x.dtype), idx
        logits = self.router(x)
        top, idx = logits.topk(self.top_k, dim=-1)
        return logits, top.softmax(dim=-1), idx

    def forward(self, x: Tensor, mask: Tensor | None = None, need_aux: bool = True) -> tuple[Tensor, Tensor | None]:
        """x (..., D), mask (...) bool True = real token -> (y like x, load-balancing loss or None)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, D)
        logits, weights, idx = self.route(flat)
        # a graph (compiled or traced) takes the dense path: the others turn the expert choice into
        # Python ints, which a trace would fix
        graph = torch.compiler.is_compiling() or torch.jit.is_tracing()
        if flat.shape[0] == 1 and not graph:
            y = self._single(flat, weights, idx)
        elif graph or flat.shape[0] <= self.dense_tokens(self.experts):
            y = self._dense(flat, weights, idx)
        else:
            y = self._sparse(flat, weights, idx)
        if self.weighted_shared:
            y = y * (self.top_k / (self.top_k + self.n_shared))
        if self.global_bias is not None:
            y = y + self.global_bias
        s: Tensor | None = None
        if self.shared is not None:
            s = self.shared(flat)
        elif self.shared_experts is not None:
            mix = self.shared_gate(flat).softmax(dim=-1)  # (N, S)
            s = sum(mix[:, i : i + 1] * expert(flat) for i, expert in enumerate(self.shared_experts))
        if s is not None:
            if self.shared_global_bias is not None:
                s = s + self.shared_global_bias
            y = y + (s * (self.n_shared / (self.top_k + self.n_shared)) if self.weighted_shared else s)
        aux = None
        if need_aux:
            probs = logits.float().softmax(dim=-1)
            aux = load_balancing_loss(probs, idx, self.experts, None if mask is None else mask.reshape(-1))
        return y.view(shape), aux

    def _single(self, x: Tensor, weights: Tensor, idx: Tensor) -> Tensor:
        # one token (batch-1 decode): run just its k experts; reading k of E experts' weights is the cost
        y = None
        for j, e in enumerate(idx[0].tolist()):
            h = x @ self.w_gate_up[:, e]
            if self.b_gate_up is not None:
                h = h + self.b_gate_up[e]
            g, u = h.split(self.ff_dim, dim=-1)
            out = (self.act(g) * u) @ self.w_down[e]
            if self.b_down is not None:
                out = out + self.b_down[e]
            out = out * weights[:, j : j + 1]
            y = out if y is None else y + out
        assert y is not None
        return y

    def _dense(self, x: Tensor, weights: Tensor, idx: Tensor) -> Tensor:
        n, d = x.shape
        e, f = self.experts, self.ff_dim
        combine = x.new_zeros(n, e).scatter_(1, idx, weights)  # (N, E), zero for experts not chosen
        h = (x @ self.w_gate_up.view(d, e * 2 * f)).view(n, e, 2 * f)
        if self.b_gate_up is not None:
            h = h + self.b_gate_up
        g, u = h.split(f, dim=-1)
        act = self.act(g) * u * combine[:, :, None]  # (N, E, F)
        y = act.view(n, e * f) @ self.w_down.view(e * f, d)
        if self.b_down is not None:  # sum_e combine_e * b_e
            y = y + combine @ self.b_down
        return y

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
                h = x[rows] @ self.w_gate_up[:, e]
                if self.b_gate_up is not None:
                    h = h + self.b_gate_up[e]
                g, u = h.split(self.ff_dim, dim=-1)
                out = (self.act(g) * u) @ self.w_down[e]
                if self.b_down is not None:
                    out = out + self.b_down[e]
                y.index_add_(0, rows, out * w[start : start + n, None])
            start += n
        return y

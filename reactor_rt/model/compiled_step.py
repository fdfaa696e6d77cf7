"""A one-row decode step with static shapes, compiled with torch.compile.

A batch-1 decode step of a small model is mostly fixed cost per op: ~370 small tensor ops, each paying
Python, the dispatcher and a kernel call for a few hundred flops. torch.compile (inductor) turns the
step into generated C++ that fuses the element-wise work between the matmuls, which needs shapes
that stay the same from step to step: here self-attention reads the row's whole static cache with
the keys past its position masked out, and RoPE uses real (cos, sin) pairs (the compiler has no
complex kernels). The model's own modules run the step (`ReactiveTransformer.run_decoder`), so the
compiled step computes what the eager one does, up to float rounding.

Compiling takes seconds (15-25 s on a cold inductor cache, ~4 s on a warm one here) and, on a CPU,
needs a C++ compiler, so it is opt-in: ``DecodeBatch(model, compile=True)``. On a CPU the wrapper that
calls the kernels is generated as C++ as well (inductor's ``cpp_wrapper``): steps 0.2-0.3 ms (~20 %)
faster here than with its Python wrapper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from reactor_rt.model.memory import MemoryKV

if TYPE_CHECKING:
    from reactor_rt.model.rxt import ReactiveTransformer

__all__ = ["CompiledRowStep"]


class _StaticCacheHook:
    """Writes the row's new key/value at its position and attends over the whole cache, masked."""

    def __init__(self, k_cache: Tensor, v_cache: Tensor, pos: Tensor, keep: Tensor) -> None:
        self.k_cache, self.v_cache, self.pos, self.keep = k_cache, v_cache, pos, keep

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None, bool]:
        kc, vc = self.k_cache[layer], self.v_cache[layer]  # (1, H, M, hd)
        kc.index_copy_(2, self.pos, k)
        vc.index_copy_(2, self.pos, v)
        return kc, vc, self.keep, False


class CompiledRowStep:
    """The decoder's forward for one token of one row, compiled (see the module doc).

    ``step(ids, pos, k_cache, v_cache, mem_k, mem_v)``: ids (1, 1) long, pos (1,) long (the token's
    position), caches (L, 1, Hkv, M, hd) with the row's keys/values before ``pos`` (the new ones are
    written at ``pos``), memory keys/values (L, 1, Hkv, S, hd) -> logits (1, V). Shapes are fixed by
    the model and ``max_len``; other shapes would compile again.
    """

    def __init__(self, model: ReactiveTransformer, max_len: int) -> None:
        self.model = model
        self.max_len = max_len
        # (M, hd/2, 2): each position's rotation as (cos, sin)
        self._rotations = torch.view_as_real(model.rope.cis[:max_len]).contiguous()
        self._positions = torch.arange(max_len, device=self._rotations.device)
        # the C++ wrapper (module doc) costs a longer first compile (~17 s on a cold cache, ~4 s after)
        options = {"cpp_wrapper": self._rotations.device.type == "cpu"}
        self._compiled = torch.compile(self._forward, fullgraph=True, dynamic=False, options=options)

    def __call__(self, ids: Tensor, pos: Tensor, k_cache: Tensor, v_cache: Tensor, mem_k: Tensor,
                 mem_v: Tensor) -> Tensor:
        return self._compiled(ids, pos, k_cache, v_cache, mem_k, mem_v)

    def _forward(self, ids: Tensor, pos: Tensor, k_cache: Tensor, v_cache: Tensor, mem_k: Tensor,
                 mem_v: Tensor) -> Tensor:
        rotation = self._rotations.index_select(0, pos)[:, None, None]  # (1, 1, 1, hd/2, 2)
        keep = (self._positions <= pos).view(1, 1, 1, -1)  # the keys up to the row's position
        hook = _StaticCacheHook(k_cache, v_cache, pos, keep)
        logits, _ = self.model.run_decoder(ids, MemoryKV(mem_k, mem_v), rotation, hook, need_aux=False)
        return logits[:, -1]

"""The decoder's step for packed rows as one TorchScript graph: the eager step without its Python.

A decode step of a small model on a CPU is mostly fixed cost per op (~370 small ops a step for
`tiny`, a few hundred flops each): Python, module calls and the dispatcher, not arithmetic. Traced
once (`torch.jit.trace`, ~0.2 s), the same ops run from TorchScript's interpreter: on this machine a
1-row step of `tiny` took 1.1-1.3 ms against 2.0-2.9 eagerly, 16 rows 3.1 against 4.2. Unlike
`torch.compile` (compiled_step.py) it needs no C++ compiler and no seconds of compiling, so it is
what `DecodeBatch` runs by default on a CPU.

One graph serves any number of rows and any cache length: sizes are read from the inputs, which are
the rows' prefix of the cache (written in place at each row's position) and a mask of each row's
keys. What tracing fixes is control flow: a MoE layer takes its dense path (every expert, weighted;
`MoE.forward`), so `DecodeBatch` uses the graph only for as many rows as that path takes. Weights that
are not parameters are fixed as well (the transposed copies `Linear` multiplies by), so the graph is
traced again when any parameter changed in place or moved (`stale`). A parameter replaced by another
tensor object is not seen: new weights are copied in place (as `load_state_dict` and the learner do).

TorchScript is deprecated in favour of torch.compile and may leave torch one day: a trace that fails
makes `DecodeBatch` decode eagerly from then on (with a warning), as it does on other devices.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from reactor_rt.model.memory import MemoryKV

if TYPE_CHECKING:
    from reactor_rt.model.rxt import ReactiveTransformer

__all__ = ["TracedStep"]


class _PrefixCacheHook:
    """Writes each row's new key/value at its position in the rows' cache prefix (in place), then
    attends over the whole prefix with each row's own keys mask."""

    def __init__(self, k_cache: Tensor, v_cache: Tensor, at: Tensor, keep: Tensor) -> None:
        self.k_cache, self.v_cache, self.at, self.keep = k_cache, v_cache, at, keep

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None, bool]:
        kc, vc = self.k_cache[layer], self.v_cache[layer]  # (n, H, T, hd) views of the cache
        # a scatter along the positions: a quarter of the time of an indexed assignment
        kc.scatter_(2, self.at, k)
        vc.scatter_(2, self.at, v)
        return kc, vc, self.keep, False


class _Step(nn.Module):
    """What is traced: one token for each of n rows -> their next-token logits (n, V)."""

    def __init__(self, model: ReactiveTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, cis: Tensor, keep: Tensor, at: Tensor, k_cache: Tensor, v_cache: Tensor,
                mem_k: Tensor, mem_v: Tensor) -> Tensor:
        hook = _PrefixCacheHook(k_cache, v_cache, at, keep)
        logits, _ = self.model.run_decoder(ids, MemoryKV(mem_k, mem_v), cis, hook, need_aux=False)
        return logits[:, -1]


class TracedStep:
    """The decoder's forward for one token of each of n packed rows, traced (see the module doc).

    ``step(ids, cis, keep, at, k_cache, v_cache, mem_k, mem_v)``: ids (n, 1) long, cis (n, 1, 1, hd/2)
    the rows' RoPE rotations, keep (n, 1, 1, T) bool (a row's keys: positions <= its own), at (n, Hkv,
    1, hd) long: each row's position, expanded (`positions_index`), caches (L, n, Hkv, T, hd) (the new
    keys/values are written at those positions), memory keys/values (L, n, Hkv, S, hd) -> logits (n, V).
    Traced on the first call and again when the weights changed; raises what tracing raised.

    `TracedStep.of(model)` is the model's one traced step, shared by every decode batch on it (each
    trace costs ~0.2 s); it holds the model weakly, so it goes when the model goes.
    """

    @classmethod
    def of(cls, model: ReactiveTransformer) -> TracedStep:
        """The traced step of ``model`` (made on first use; traced on its first call)."""
        with _BY_MODEL_LOCK:
            step = _BY_MODEL.get(model)
            if step is None:
                step = _BY_MODEL[model] = cls(model)
            return step

    def __init__(self, model: ReactiveTransformer) -> None:
        self._model = weakref.ref(model)
        self._lock = threading.Lock()  # one trace at a time, for batches on several threads
        self._graph: torch.jit.ScriptModule | None = None
        self._params: list[Tensor] = []  # as of the trace: walking the modules each step costs ~0.3 ms
        self._weights: list[tuple[int, int]] = []

    def _weights_key(self) -> list[tuple[int, int]]:
        """Each parameter's storage and version: a move, a cast or an in-place change (an optimizer step,
        `load_state_dict`) alters it (~25 µs for `tiny`)."""
        key = []
        for p in self._params:
            try:
                version = p._version
            except RuntimeError:  # an inference tensor counts no versions (nor does Linear copy it)
                version = -1
            key.append((p.data_ptr(), version))
        return key

    @property
    def stale(self) -> bool:
        """Whether the next call traces (again): never traced, or the weights changed since."""
        return self._graph is None or self._weights != self._weights_key()

    @property
    def model(self) -> ReactiveTransformer:
        """The model this step traces (held weakly: RuntimeError once it is gone)."""
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this traced step is gone")
        return model

    def retrace(self) -> None:
        """Trace now, on small example inputs of two rows (~0.2 s)."""
        with self._lock:
            self._retrace()

    def _retrace(self) -> None:
        model = self.model
        c = model.config
        p = next(model.parameters())
        n, t = 2, 4
        mem_heads = c.heads_of("cross")[1]
        example = (
            torch.zeros(n, 1, dtype=torch.long, device=p.device),
            model.rope.cis[:n, None, None, :],
            torch.ones(n, 1, 1, t, dtype=torch.bool, device=p.device),
            self.positions_index(torch.arange(n, device=p.device)),
            torch.zeros(c.self_attention_layers, n, c.kv_heads, t, c.head_dim, dtype=p.dtype, device=p.device),
            torch.zeros(c.self_attention_layers, n, c.kv_heads, t, c.head_dim, dtype=p.dtype, device=p.device),
            torch.zeros(c.layers, n, mem_heads, c.stm_slots, c.head_dim, dtype=p.dtype, device=p.device),
            torch.zeros(c.layers, n, mem_heads, c.stm_slots, c.head_dim, dtype=p.dtype, device=p.device),
        )
        self._params = list(model.parameters())
        key = self._weights_key()
        step = _Step(model)
        with torch.inference_mode(), warnings.catch_warnings():
            # one eager run first: it brings each Linear's transposed copy up to date, which the trace
            # then holds as a constant (traced while being made, the copy would be made every step)
            step(*example)
            # torch's deprecation notice, and its TracerWarnings on the branches fixed by tracing
            # (the module doc says which, and DecodeBatch keeps to them)
            warnings.simplefilter("ignore")
            graph = torch.jit.trace(step, example, check_trace=False)
        self._graph, self._weights = graph, key

    def positions_index(self, pos: Tensor) -> Tensor:
        """The rows' positions (n,) as the ``at`` input: (n, Hkv, 1, hd), expanded (no copy)."""
        c = self.model.config
        return pos.view(-1, 1, 1, 1).expand(-1, c.kv_heads, 1, c.head_dim)

    def __call__(self, ids: Tensor, cis: Tensor, keep: Tensor, at: Tensor, k_cache: Tensor, v_cache: Tensor,
                 mem_k: Tensor, mem_v: Tensor) -> Tensor:
        if self.stale:
            with self._lock:
                if self.stale:  # not traced meanwhile by another batch's thread
                    self._retrace()
        assert self._graph is not None
        # TorchScript's profiling executor would specialise the graph to the cache length, which grows
        # every step: ~1.8 ms a 1-row step of `tiny` with it, ~1.2 without
        with torch.jit.optimized_execution(False):
            return self._graph(ids, cis, keep, at, k_cache, v_cache, mem_k, mem_v)


_BY_MODEL: weakref.WeakKeyDictionary[nn.Module, TracedStep] = weakref.WeakKeyDictionary()
_BY_MODEL_LOCK = threading.Lock()

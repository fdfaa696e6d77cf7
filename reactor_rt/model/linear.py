"""Linear layers that multiply by an (in, out) copy of their weight when autograd is off.

On this CPU a small-batch matmul whose right operand is stored (in, out) row-major runs 1.3-1.8x faster
than one on the transposed view of an (out, in) weight, which is what `F.linear` multiplies by: at 1
and 16 rows, i.e. decode steps (at hundreds of rows the two are alike). Weights stay (out, in) as
parameters, so state dicts, checkpoints, imports and training are unchanged; inference keeps a
transposed copy beside each, made on first use and made again whenever the weight changed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Linear", "TransposedWeight", "linear"]


class TransposedWeight:
    """A contiguous (in, out) copy of an (out, in) weight, rebuilt when the weight is not the one it was
    made from: another storage (moved, cast, replaced) or an in-place change (an optimizer step, a
    `load_state_dict`, live learning's weight push) — both show in the tensor's storage address and its
    version counter. Never pickled or deep-copied: a copy starts empty (Ray ships models by pickling)."""

    def __init__(self) -> None:
        self._entry: tuple[int, int, Tensor] | None = None  # (data_ptr, version, copy): replaced whole

    def get(self, weight: Tensor) -> Tensor | None:
        """The copy for ``weight`` (made now if the cached one is stale); None for an inference tensor,
        which counts no versions, so a change to it could not be seen."""
        entry = self._entry
        try:
            ptr, version = weight.data_ptr(), weight._version
        except RuntimeError:  # an inference tensor (a model built under torch.inference_mode)
            return None
        if entry is None or entry[0] != ptr or entry[1] != version:
            # a plain tensor even inside inference_mode: no_grad code may use it later
            with torch.inference_mode(False):
                entry = (ptr, version, weight.detach().t().contiguous())
            self._entry = entry  # one assignment: a thread reading meanwhile sees the old or the new one
        return entry[2]

    def __reduce__(self) -> tuple[type[TransposedWeight], tuple[()]]:
        return TransposedWeight, ()

    def __deepcopy__(self, memo: dict[int, object]) -> TransposedWeight:
        return TransposedWeight()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, transposed: TransposedWeight) -> Tensor:
    """`F.linear(x, weight, bias)`; with autograd off, as ``x @ transposed.get(weight) + bias``
    (not while torch.compile traces: its compiler lays out the matmuls itself)."""
    t = None if torch.is_grad_enabled() or torch.compiler.is_compiling() else transposed.get(weight)
    if t is None:
        return F.linear(x, weight, bias)
    y = x @ t
    return y if bias is None else y.add_(bias)  # y is new: adding in place saves one tensor


class Linear(nn.Linear):
    """`nn.Linear` (same parameters and state dict) that multiplies by a transposed copy of its weight
    when autograd is off (see the module's doc)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs: object) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)  # type: ignore[arg-type]
        self.transposed = TransposedWeight()

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self.transposed)

"""The memory updater: memory attention + residual gate, writing an encoded interaction into the STM."""

from __future__ import annotations

import ray
import torch

from reactor_rt.learning import apply_serving_state
from reactor_rt.model import ReactiveTransformer

__all__ = ["MemoryUpdaterActor", "MemoryUpdaterActorImpl", "MemoryUpdaterCore"]


class MemoryUpdaterCore:
    """Computes the next STM of one memory from its current STM and one encoded interaction."""

    def __init__(self, model: ReactiveTransformer) -> None:
        self.model = model.eval()

    @torch.inference_mode()
    def update(self, stm: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        """``stm``: ``(layers, slots, dim)``; ``encoded``: ``(layers, T, dim)`` -> the new STM."""
        new = self.model.update_memory(stm.unsqueeze(0), encoded.unsqueeze(1))  # (1, L, S, D)
        return new[0].contiguous()


class MemoryUpdaterActorImpl:
    """Ray actor named ``memory``; both arguments arrive resolved from Ray's object store."""

    def __init__(self, model: ReactiveTransformer, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        self.core = MemoryUpdaterCore(model)

    def update(self, stm: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        return self.core.update(stm, encoded)

    def set_weights(self, version: int, state: dict[str, torch.Tensor]) -> int:
        """Load learned parameters in place (the conductor swaps only between interactions)."""
        with torch.no_grad():
            apply_serving_state(self.core.model, state)
        return version

    def ping(self) -> bool:
        return True


MemoryUpdaterActor = ray.remote(MemoryUpdaterActorImpl)

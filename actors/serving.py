"""What the encoder and memory-updater actors share: a model served from ``self.core.model`` whose
learned weights are swapped in place."""

from __future__ import annotations

from typing import Any

import torch

from reactor_rt.learning import apply_serving_state

__all__ = ["ServingModelActor"]


class ServingModelActor:
    """Base of a synchronous model actor (``self.core.model`` is the served model)."""

    core: Any

    def set_weights(self, version: int, state: dict[str, torch.Tensor]) -> int:
        """Load learned parameters in place (the conductor swaps only between interactions)."""
        with torch.no_grad():
            apply_serving_state(self.core.model, state)
        return version

    def ping(self) -> bool:
        return True

"""What the encoder and memory-updater actors share: a model served from ``self.core.model`` whose
learned weights are swapped in place, and a local link for a conductor on the same node."""

from __future__ import annotations

from typing import Any

import torch

from reactor_rt.events.local_link import LinkHost
from reactor_rt.learning import apply_serving_state

__all__ = ["ServingModelActor"]


class ServingModelActor(LinkHost):
    """Base of a model actor (``self.core.model`` is the served model). Async so that its local link
    is served by the actor's event loop; the model calls hold no await, so calls still run one at a
    time, as in a synchronous actor."""

    core: Any

    weights_version = 0  # the learned weights loaded (0: the checkpoint's, e.g. after a restart)

    async def set_weights(self, version: int, state: dict[str, torch.Tensor]) -> int:
        """Load learned parameters in place (the conductor swaps only between interactions)."""
        with torch.no_grad():
            apply_serving_state(self.core.model, state)
        self.weights_version = version
        return version

    async def loaded_weights_version(self) -> int:
        """The learned weights this actor serves (0 after a restart, until they are pushed again)."""
        return self.weights_version

    async def ping(self) -> bool:
        return True

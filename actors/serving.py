"""What the encoder and memory-updater actors share: a model served from ``self.core.model`` whose
learned weights are swapped in place, and a local link for a conductor on the same node."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from reactor_rt.events.local_link import LinkHost
from reactor_rt.learning import apply_serving_state

__all__ = ["ServingModelActor", "intra_op_threads"]


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Run the block's torch ops on ``threads`` threads (at most the CPUs this process may use), then
    go back to the actor's own setting. For a big update batch while no answer is generated: the
    decoder's CPU is free then (see `RayEngine`)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted, before = max(1, min(threads, usable)), torch.get_num_threads()
    if wanted == before:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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

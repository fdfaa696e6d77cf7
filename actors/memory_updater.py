"""The memory updater: memory attention + residual gate, writing an encoded interaction into the STM."""

from __future__ import annotations

from typing import Any

import ray
import torch

from reactor_rt.actors.handles import tensor_from_wire, tensor_to_wire
from reactor_rt.actors.heap import settle_actor_process
from reactor_rt.actors.serving import ServingModelActor, intra_op_threads
from reactor_rt.events.local_link import LinkServer
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

    @torch.inference_mode()
    def update_many(self, stms: list[torch.Tensor], encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        """`update` for several memories in one padded forward (padding masked out)."""
        if len({e.shape[1] for e in encoded}) == 1:  # no padding: the unmasked path is faster
            new = self.model.update_memory(torch.stack(stms), torch.stack(encoded, dim=1))  # (B, L, S, D)
            return [row.contiguous() for row in new]
        width = max(e.shape[1] for e in encoded)
        layers, _, dim = encoded[0].shape
        batch = torch.zeros((layers, len(encoded), width, dim), dtype=encoded[0].dtype)
        mask = torch.zeros((len(encoded), width), dtype=torch.bool)
        for i, e in enumerate(encoded):
            batch[:, i, : e.shape[1]] = e
            mask[i, : e.shape[1]] = True
        new = self.model.update_memory(torch.stack(stms), batch, attention_mask=mask)  # (B, L, S, D)
        return [row.contiguous() for row in new]


class MemoryUpdaterActorImpl(ServingModelActor):
    """Ray actor named ``memory``; both arguments arrive resolved from Ray's object store (or, from a
    conductor on this node, over the local link)."""

    def __init__(self, model: ReactiveTransformer, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        self.core = MemoryUpdaterCore(model)
        self.link = LinkServer({"update_many": self._update_many_wired}, {})
        settle_actor_process()

    async def update(self, stm: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        return self.core.update(stm, encoded)

    async def _update_many_wired(self, encoded: list[list[Any]], stms: list[list[Any]],
                                 threads: int = 1) -> list[list[Any]]:
        """`update_many` over the local link: every STM given, tensors as ``tensor_to_wire`` fields."""
        # views of the received message: used here and dropped
        with intra_op_threads(threads):
            new = self.core.update_many([tensor_from_wire(s, copy=False) for s in stms],
                                        [tensor_from_wire(e, copy=False) for e in encoded])
        return [tensor_to_wire(t) for t in new]

    async def update_many(self, encoded: list[torch.Tensor], picks: list[tuple[int, int | None]],
                          *sources: torch.Tensor | list[torch.Tensor], threads: int = 1) -> list[torch.Tensor]:
        """Several updates at once, on ``threads`` torch threads (see `intra_op_threads`). ``sources``
        arrive resolved by Ray: STM tensors, or lists of them (an earlier `update_many` result);
        ``picks[i] = (source, index or None)`` is memory i's STM."""
        stms = [sources[s] if i is None else sources[s][i] for s, i in picks]  # type: ignore[index]
        with intra_op_threads(threads):
            return self.core.update_many(stms, encoded)


MemoryUpdaterActor = ray.remote(MemoryUpdaterActorImpl)

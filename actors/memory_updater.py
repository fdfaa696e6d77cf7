"""The memory updater: memory attention + residual gate, writing an encoded interaction into the STM."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import ray
import torch

from reactor_rt.actors.handles import tensor_from_wire, tensor_to_wire
from reactor_rt.actors.heap import settle_actor_process
from reactor_rt.actors.serving import ServingModelActor, intra_op_threads
from reactor_rt.events.local_link import LinkServer
from reactor_rt.model import ReactiveTransformer
from reactor_rt.model.memory import MemoryPlan

__all__ = ["MemoryUpdaterActor", "MemoryUpdaterActorImpl", "MemoryUpdaterCore"]

_KEPT_PLANS = 4  # prepared batches waiting for their update (one batch runs at a time)


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
        return self.update_prepared(self.prepare_many(stms), encoded)

    @torch.inference_mode()
    def prepare_many(self, stms: list[torch.Tensor]) -> MemoryPlan:
        """What `update_many` computes from these STMs alone (``(layers, slots, dim)`` each), before
        their interactions are encoded (see `ReactiveTransformer.prepare_memory`)."""
        return self.model.prepare_memory(torch.stack(stms))

    @torch.inference_mode()
    def update_prepared(self, plan: MemoryPlan, encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        """`update_many` of the STMs a `prepare_many` plan was made from, one encoded interaction each."""
        if len(encoded) != plan.stm.shape[0]:
            raise ValueError(f"{len(encoded)} encoded interactions for a plan of {plan.stm.shape[0]} memories")
        if len({e.shape[1] for e in encoded}) == 1:  # no padding: the unmasked path is faster
            new = self.model.update_prepared(plan, torch.stack(encoded, dim=1))  # (B, L, S, D)
            return [row.contiguous() for row in new]
        width = max(e.shape[1] for e in encoded)
        layers, _, dim = encoded[0].shape
        batch = torch.zeros((layers, len(encoded), width, dim), dtype=encoded[0].dtype)
        mask = torch.zeros((len(encoded), width), dtype=torch.bool)
        for i, e in enumerate(encoded):
            batch[:, i, : e.shape[1]] = e
            mask[i, : e.shape[1]] = True
        new = self.model.update_prepared(plan, batch, attention_mask=mask)  # (B, L, S, D)
        return [row.contiguous() for row in new]


class MemoryUpdaterActorImpl(ServingModelActor):
    """Ray actor named ``memory``; both arguments arrive resolved from Ray's object store (or, from a
    conductor on this node, over the local link)."""

    def __init__(self, model: ReactiveTransformer, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        self.core = MemoryUpdaterCore(model)
        self.link = LinkServer({"update_many": self._update_many_wired, "prepare_many": self._prepare_many_wired,
                                "update_prepared": self._update_prepared_wired}, {})
        # prepared batches by the memories and versions they update; a batch is taken by its update
        self._plans: OrderedDict[tuple[tuple[str, int], ...], MemoryPlan] = OrderedDict()
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

    async def _prepare_many_wired(self, versions: list[list[Any]], stms: list[list[Any]]) -> None:
        """The STM side of an update batch, sent (as a notification) before its interactions are encoded,
        so that it runs while the encoder encodes: ``versions`` ``[[memory_id, version], ...]`` name the
        STMs, and `update_prepared` takes the plan by them. A version's STM never changes, so the name
        is the content; plans of batches whose update never came are dropped, oldest first."""
        plan = self.core.prepare_many([tensor_from_wire(s, copy=False) for s in stms])
        self._plans[_plan_key(versions)] = plan
        while len(self._plans) > _KEPT_PLANS:
            self._plans.popitem(last=False)

    async def _update_prepared_wired(self, versions: list[list[Any]], encoded: list[list[Any]]) -> list[list[Any]]:
        """`update_many` for a batch prepared by `_prepare_many_wired` (raises LookupError when it was
        not: the caller then updates another way)."""
        plan = self._plans.pop(_plan_key(versions), None)
        if plan is None:
            raise LookupError(f"no prepared update for {len(versions)} memories here (the updater restarted, "
                              "or its weights changed since)")
        new = self.core.update_prepared(plan, [tensor_from_wire(e, copy=False) for e in encoded])
        return [tensor_to_wire(t) for t in new]

    async def set_weights(self, version: int, state: dict[str, torch.Tensor]) -> int:
        self._plans.clear()  # made with the weights being replaced
        return await super().set_weights(version, state)

    async def update_many(self, encoded: list[torch.Tensor], picks: list[tuple[int, int | None]],
                          *sources: torch.Tensor | list[torch.Tensor], threads: int = 1) -> list[torch.Tensor]:
        """Several updates at once, on ``threads`` torch threads (see `intra_op_threads`). ``sources``
        arrive resolved by Ray: STM tensors, or lists of them (an earlier `update_many` result);
        ``picks[i] = (source, index or None)`` is memory i's STM."""
        stms = [sources[s] if i is None else sources[s][i] for s, i in picks]  # type: ignore[index]
        with intra_op_threads(threads):
            return self.core.update_many(stms, encoded)


def _plan_key(versions: list[list[Any]]) -> tuple[tuple[str, int], ...]:
    return tuple((str(memory_id), int(version)) for memory_id, version in versions)


MemoryUpdaterActor = ray.remote(MemoryUpdaterActorImpl)

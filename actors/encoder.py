"""The encoder: turns a finished interaction (``[BOS][Q] query [A] answer [EOS]``) into encoded layers."""

from __future__ import annotations

from typing import Any

import ray
import torch

from reactor_rt.actors.handles import tensor_to_wire
from reactor_rt.actors.heap import settle_actor_process
from reactor_rt.actors.serving import ServingModelActor, intra_op_threads
from reactor_rt.events.local_link import LinkServer
from reactor_rt.model import ReactiveTransformer

__all__ = ["EncoderActor", "EncoderActorImpl", "EncoderCore"]


class EncoderCore:
    """Encodes one interaction; plain and synchronous."""

    def __init__(self, model: ReactiveTransformer) -> None:
        self.model = model.eval()

    @torch.inference_mode()
    def encode(self, interaction_ids: list[int]) -> torch.Tensor:
        """Return the encoder's layer outputs for one interaction: ``(layers, T, dim)``."""
        ids = torch.tensor(interaction_ids, dtype=torch.long).unsqueeze(0)  # (1, T)
        return self.model.encode(ids)[:, 0].contiguous()  # (L, 1, T, D) -> (L, T, D)

    @torch.inference_mode()
    def encode_many(self, interactions: list[list[int]]) -> list[torch.Tensor]:
        """`encode` for several interactions in one padded forward (padding masked out)."""
        if len({len(ids) for ids in interactions}) == 1:  # no padding: the unmasked path is faster
            ids = torch.tensor(interactions, dtype=torch.long)
            encoded = self.model.encode(ids)  # (L, B, T, D)
            return [encoded[:, i].contiguous() for i in range(len(interactions))]
        width = max(len(ids) for ids in interactions)
        ids = torch.full((len(interactions), width), self.model.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(interactions), width), dtype=torch.bool)
        for i, row in enumerate(interactions):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        encoded = self.model.encode(ids, attention_mask=mask)  # (L, B, T, D)
        return [encoded[:, i, : len(row)].contiguous() for i, row in enumerate(interactions)]


class EncoderActorImpl(ServingModelActor):
    """Ray actor named ``encoder``. Its result (small enough to travel inline) returns to the conductor,
    which sends it on with the memory updater's call: through Ray, or over local links when all three
    share a node."""

    def __init__(self, model: ReactiveTransformer, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        self.core = EncoderCore(model)
        self.link = LinkServer({"encode_many": self._encode_many_wired}, {})
        settle_actor_process()

    async def encode(self, interaction_ids: list[int]) -> torch.Tensor:
        return self.core.encode(interaction_ids)

    async def encode_many(self, interactions: list[list[int]], threads: int = 1) -> list[torch.Tensor]:
        """Several interactions in one forward, on ``threads`` torch threads (see `intra_op_threads`)."""
        with intra_op_threads(threads):
            return self.core.encode_many(interactions)

    async def _encode_many_wired(self, interactions: list[list[int]], threads: int = 1) -> list[list[Any]]:
        """`encode_many` over the local link: tensors as ``tensor_to_wire`` fields."""
        with intra_op_threads(threads):
            return [tensor_to_wire(t) for t in self.core.encode_many(interactions)]


EncoderActor = ray.remote(EncoderActorImpl)

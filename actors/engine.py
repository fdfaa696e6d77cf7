"""How the conductor reaches the model: one protocol, an in-process engine and a Ray engine.

The conductor's logic (ordering, queues, events) is the same whichever engine runs the model, so it is
tested in-process and served over Ray.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from reactor_rt.actors.decoder import DecoderCore, DecoderService
from reactor_rt.actors.encoder import EncoderCore
from reactor_rt.actors.handles import GenerateRequest, STMHandle
from reactor_rt.actors.memory_updater import MemoryUpdaterCore
from reactor_rt.actors.stm_store import STMRegistry
from reactor_rt.model import ReactiveTransformer
from reactor_rt.store import STMStore

__all__ = ["ActorSet", "InteractionEngine", "LocalEngine", "RayEngine"]


class InteractionEngine(Protocol):
    """What one interaction needs from the model side."""

    async def handle(self, memory_id: str) -> STMHandle:
        """The memory's latest version."""
        ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[list[int]]:
        """The answer's token ids, in chunks."""
        ...

    async def update(self, handle: STMHandle, interaction_ids: list[int], interaction: str) -> STMHandle:
        """Encode the interaction, update the memory, persist the new version, return its handle."""
        ...

    async def tensor(self, memory_id: str) -> tuple[int, torch.Tensor]:
        """``(version, stm)`` of the memory's latest version."""
        ...

    async def fork(self, src: str, dst: str) -> STMHandle:
        """Create memory ``dst`` as a copy of ``src``."""
        ...

    async def put(self, memory_id: str, stm: torch.Tensor, expected_version: int) -> STMHandle:
        """Store ``stm`` as the memory's next version (import)."""
        ...


class LocalEngine:
    """Runs decoder, encoder, memory update and store in this process (tests, embedded use)."""

    def __init__(self, model: ReactiveTransformer, store: STMStore, capacity: int = 16, chunk_tokens: int = 4) -> None:
        self.decoder = DecoderService(DecoderCore(model, capacity=capacity), chunk_tokens=chunk_tokens)
        self.encoder = EncoderCore(model)
        self.updater = MemoryUpdaterCore(model)
        with torch.no_grad():
            initial = model.init_stm(batch_size=1)[0]
        self.registry = STMRegistry(store, initial)
        self._tokens: dict[tuple[str, int], STMHandle] = {}

    def _handle(self, memory_id: str, version: int, stm: torch.Tensor) -> STMHandle:
        key = (memory_id, version)
        if key not in self._tokens:
            self._tokens[key] = STMHandle(memory_id, version, stm)
        return self._tokens[key]

    async def handle(self, memory_id: str) -> STMHandle:
        version, stm = self.registry.load(memory_id)
        return self._handle(memory_id, version, stm)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[list[int]]:
        async def load(handle: STMHandle) -> torch.Tensor:
            return handle.stm

        async for chunk in self.decoder.generate(request, load):
            yield chunk

    async def update(self, handle: STMHandle, interaction_ids: list[int], interaction: str) -> STMHandle:
        encoded = self.encoder.encode(interaction_ids)
        new = self.updater.update(handle.stm, encoded)
        version, stm = self.registry.commit(handle.memory_id, handle.version, new, interaction)
        return self._handle(handle.memory_id, version, stm)

    async def tensor(self, memory_id: str) -> tuple[int, torch.Tensor]:
        version, stm = self.registry.load(memory_id)
        return version, stm.clone()

    async def fork(self, src: str, dst: str) -> STMHandle:
        version, stm = self.registry.fork(src, dst)
        return self._handle(dst, version, stm)

    async def put(self, memory_id: str, stm: torch.Tensor, expected_version: int) -> STMHandle:
        version, stored = self.registry.commit(memory_id, expected_version, stm, None)
        return self._handle(memory_id, version, stored)


@dataclass(frozen=True)
class ActorSet:
    """Handles of the runtime's model actors."""

    decoder: Any
    encoder: Any
    memory: Any
    stm: Any


class RayEngine:
    """Calls the runtime's Ray actors. The encoded interaction and the new STM pass between actors
    through Ray's object store: this process only forwards references."""

    def __init__(self, actors: ActorSet) -> None:
        self.actors = actors

    async def handle(self, memory_id: str) -> STMHandle:
        return await self.actors.stm.handle.remote(memory_id)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[list[int]]:
        stream = self.actors.decoder.generate.options(num_returns="streaming").remote(request)
        async for ref in stream:
            yield await ref

    async def update(self, handle: STMHandle, interaction_ids: list[int], interaction: str) -> STMHandle:
        encoded = self.actors.encoder.encode.remote(interaction_ids)
        new_stm = self.actors.memory.update.remote(handle.stm, encoded)
        return await self.actors.stm.commit.remote(handle.memory_id, handle.version, new_stm, interaction)

    async def tensor(self, memory_id: str) -> tuple[int, torch.Tensor]:
        return await self.actors.stm.tensor.remote(memory_id)

    async def fork(self, src: str, dst: str) -> STMHandle:
        return await self.actors.stm.fork.remote(src, dst)

    async def put(self, memory_id: str, stm: torch.Tensor, expected_version: int) -> STMHandle:
        return await self.actors.stm.commit.remote(memory_id, expected_version, stm, None)

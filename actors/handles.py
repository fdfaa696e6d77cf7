"""Small value types passed between the conductor and the model actors."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GenerateRequest", "STMHandle", "new_token"]


def new_token() -> str:
    """A unique tag for one stored STM object, so caches never confuse two tensors of one version."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class STMHandle:
    """One version of one memory: ``(memory_id, version, stm)``.

    ``stm`` is a Ray ``ObjectRef`` when the runtime runs on Ray (one ``ray.put`` per version), or the
    tensor itself (``(layers, slots, dim)``) in the in-process engine. ``token`` is unique per stored
    object: the decoder keys its pre-computed memory keys/values on ``(memory_id, version, token)``.
    """

    memory_id: str
    version: int
    stm: Any
    token: str = field(default_factory=new_token)

    @property
    def cache_key(self) -> tuple[str, int, str]:
        return (self.memory_id, self.version, self.token)


@dataclass(frozen=True)
class GenerateRequest:
    """What the decoder needs for one answer: the prompt ids, the memory to read, and how to sample."""

    prompt: list[int]
    handle: STMHandle
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

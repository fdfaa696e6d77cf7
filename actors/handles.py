"""Small value types passed between the conductor and the model actors."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch

from reactor_rt.events.local_link import Blob

__all__ = ["GenerateRequest", "STMHandle", "new_token", "tensor_from_wire", "tensor_to_wire", "wire_copy"]


def new_token() -> str:
    """A unique tag for one stored STM object, so caches never confuse two tensors of one version."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class STMHandle:
    """One version of one memory: ``(memory_id, version, stm)``.

    ``stm`` is a Ray ``ObjectRef`` when the runtime runs on Ray (one ``ray.put`` per version), or the
    tensor itself (``(layers, slots, dim)``) in the in-process engine. ``token`` is unique per stored
    object, and the decoder keys its pre-computed memory keys/values on it alone: every memory not
    written yet (version 0) reads one object, the model's initial STM, under one token, so the first
    queries of new streams share one projection instead of fetching and projecting a copy each.
    """

    memory_id: str
    version: int
    stm: Any
    token: str = field(default_factory=new_token)

    @property
    def cache_key(self) -> str:
        """What the decoder's memory key/value cache is keyed on: the stored object's token."""
        return self.token

    def to_wire(self) -> list[Any]:
        """``[memory_id, version, token]``: the handle without its STM, for the local link."""
        return [self.memory_id, self.version, self.token]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> STMHandle:
        """The handle `to_wire` described, with ``stm=None``."""
        memory_id, version, token = fields
        return cls(memory_id, version, None, token)


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

    def to_wire(self) -> dict[str, Any]:
        """Plain fields for a message that cannot carry the STM reference (the local link)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "handle"}
        return {**fields, "handle": self.handle.to_wire()}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> GenerateRequest:
        """The request `to_wire` described; its handle has no STM reference (``stm=None``)."""
        fields = dict(fields)
        return cls(handle=STMHandle.from_wire(fields.pop("handle")), **fields)


def tensor_to_wire(tensor: torch.Tensor) -> list[Any]:
    """``[dtype, shape, data]`` of a CPU tensor, for the local link; ``data`` is a `Blob` of the tensor's
    own memory (or of a contiguous copy), so the tensor must not change once sent."""
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)  # any dtype (numpy has no bfloat16)
    return [str(tensor.dtype).removeprefix("torch."), list(tensor.shape), Blob(raw.numpy())]


def tensor_from_wire(fields: list[Any], copy: bool = True) -> torch.Tensor:
    """The tensor `tensor_to_wire` described: a copy that owns its memory, or with ``copy=False`` (for
    a tensor used at once and dropped) a view of the received bytes where they are aligned for its dtype
    (a long-lived view would keep the whole message it came in alive)."""
    dtype, shape, data = fields
    if dtype not in _WIRE_DTYPES:
        raise TypeError(f"unexpected tensor dtype {dtype!r}")
    kind = _WIRE_DTYPES[dtype]
    if not len(data):
        return torch.empty(shape, dtype=kind)
    raw = data.data if isinstance(data, Blob) else data
    if copy or not isinstance(data, Blob):
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(kind).reshape(shape)
    view = torch.frombuffer(raw, dtype=torch.uint8)
    if view.data_ptr() % kind.itemsize:  # (views of misaligned floats are slow, and not portable)
        view = view.clone()
    return view.view(kind).reshape(shape)


def wire_copy(fields: list[Any]) -> list[Any]:
    """`tensor_to_wire` fields with their own copy of the data: what is kept from a received message,
    which a view would keep alive whole."""
    dtype, shape, data = fields
    return [dtype, shape, Blob(bytes(data))]


_WIRE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64}

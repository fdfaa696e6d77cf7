"""STM tensor <-> safetensors bytes, with the dtype/shape checks that catch a corrupt blob.

safetensors only: a stored blob is data, never code (no pickle anywhere in the store).
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from reactor_rt.errors import StoreError

__all__ = ["STM_KEY", "decode_stm", "dtype_name", "encode_stm", "format_shape", "parse_shape"]

# The one tensor name inside every STM blob and every exported .safetensors STM file.
STM_KEY = "stm"


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``: the form kept next to each blob."""
    return str(dtype).removeprefix("torch.")


def format_shape(shape: torch.Size | tuple[int, ...]) -> str:
    """A shape as compact JSON, e.g. ``"[1,4,64,128]"``."""
    return json.dumps(list(shape), separators=(",", ":"))


def parse_shape(text: str, *, what: str) -> tuple[int, ...]:
    """Parse `format_shape` output; a malformed value raises `StoreError` mentioning ``what``."""
    try:
        shape = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what}: shape metadata {text!r:.80} is not valid JSON") from exc
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise StoreError(f"{what}: shape metadata {text!r:.80} is not a list of non-negative ints")
    return tuple(shape)


def encode_stm(stm: torch.Tensor, metadata: dict[str, str] | None = None) -> bytes:
    """Serialise one (CPU, contiguous) tensor as safetensors bytes under `STM_KEY`."""
    return st_save({STM_KEY: stm}, metadata=metadata)


def decode_stm(blob: bytes, *, dtype: str, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """Decode a blob and check it holds exactly one tensor of the recorded dtype and shape.

    ``what`` names the source (e.g. ``"memory 'alice'"``) in the `StoreError` raised on any mismatch.
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise StoreError(f"{what}: stored STM is {type(blob).__name__}, not bytes")
    try:
        tensors = st_load(bytes(blob))
    except Exception as exc:  # safetensors raises its own error type, or OverflowError/ValueError
        raise StoreError(f"{what}: stored STM bytes are not valid safetensors ({exc})") from exc
    if set(tensors) != {STM_KEY}:
        raise StoreError(f"{what}: stored STM holds tensors {sorted(tensors)!r:.80}, expected [{STM_KEY!r}]")
    stm = tensors[STM_KEY]
    if dtype_name(stm.dtype) != dtype:
        raise StoreError(f"{what}: stored STM has dtype {dtype_name(stm.dtype)}, metadata says {dtype!r:.40}")
    if tuple(stm.shape) != shape:
        raise StoreError(f"{what}: stored STM has shape {list(stm.shape)}, metadata says {list(shape)}")
    return stm

"""Export/import of one STM to a standalone ``.safetensors`` file (the seed of a fork, a backup).

The file holds exactly one tensor, named ``"stm"``, plus string metadata. safetensors only: loading a
file never runs code.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import struct
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as st_load

from reactor_rt.errors import StoreError
from reactor_rt.fsync import fsync_directory
from reactor_rt.store.codec import STM_KEY, encode_stm

__all__ = ["load_stm_file", "save_stm_file"]


def _check_metadata(metadata: object) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TypeError("metadata must be a dict[str, str]")
    return dict(metadata)


def save_stm_file(
    path: str | os.PathLike[str], stm: torch.Tensor, metadata: dict[str, str] | None = None
) -> None:
    """Write ``stm`` (any dtype/shape; saved from the CPU) and ``metadata`` to ``path``, atomically.

    The file is written next to ``path`` and renamed over it, so a crash never leaves half a file;
    the file and the rename are on disk when this returns.
    """
    if not isinstance(stm, torch.Tensor):
        raise TypeError(f"stm must be a torch.Tensor, not {type(stm).__name__}")
    meta = _check_metadata(metadata)
    target = Path(path)
    try:
        blob = encode_stm(stm.detach().to("cpu").contiguous(), meta)
    except Exception as exc:
        raise StoreError(f"cannot serialise the STM for {str(target)!r}: {exc}") from exc
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise StoreError(f"cannot write STM file {str(target)!r}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_directory(target.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StoreError(f"cannot write STM file {str(target)!r}: {exc}") from exc


def _header_metadata(blob: bytes) -> dict[str, str]:
    # safetensors layout: u64 little-endian header length, then the JSON header
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    return dict(header.get("__metadata__") or {})


def load_stm_file(path: str | os.PathLike[str]) -> tuple[torch.Tensor, dict[str, str]]:
    """Read a file written by `save_stm_file`: ``(stm, metadata)``, the tensor on the CPU.

    A missing, unreadable or malformed file, one that is not a regular file (a FIFO, a device), or one
    that does not hold exactly one ``"stm"`` tensor, raises `StoreError` naming the path.
    """
    name = os.fspath(path)
    try:
        # a FIFO would block the read until some writer comes, a device (/dev/zero) never ends
        if not stat.S_ISREG(os.stat(name).st_mode):
            raise StoreError(f"cannot read STM file {name!r}: it is not a regular file")
        blob = Path(name).read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read STM file {name!r}: {exc}") from exc
    try:
        tensors = st_load(blob)
        metadata = _header_metadata(blob)
    except Exception as exc:  # safetensors' own error, or a header that is not what it claims
        raise StoreError(f"STM file {name!r} is not a valid safetensors file ({exc})") from exc
    if set(tensors) != {STM_KEY}:
        raise StoreError(
            f"STM file {name!r} holds tensors {sorted(tensors)!r:.80}, expected exactly [{STM_KEY!r}]"
        )
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise StoreError(f"STM file {name!r} has non-string metadata")
    return tensors[STM_KEY], metadata

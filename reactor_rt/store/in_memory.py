"""`MemorySTMStore`: the STM store in a dict, for tests and throwaway runtimes (``memory://``).

Same semantics as the SQLite store, minus durability: everything is gone when the process ends (and,
inside Ray, when the owning actor restarts).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from reactor_rt.errors import StoreError
from reactor_rt.store.base import (
    DEFAULT_HISTORY_SIZE,
    STMStore,
    StoredSTM,
    check_history_size,
    copy_target_exists_error,
    stale_version_error,
)

__all__ = ["MemorySTMStore"]


@dataclass
class _Entry:
    version: int
    stm: torch.Tensor  # private: never handed out without a clone
    interaction: str | None
    updated_at: float
    # interaction id -> the version it produced, oldest first (so the bound drops the oldest)
    applied: OrderedDict[str, int] = field(default_factory=OrderedDict)


class MemorySTMStore(STMStore):
    """An in-process STM store: a dict guarded by one lock; tensors are copied in and out."""

    def __init__(self, *, history_size: int = DEFAULT_HISTORY_SIZE) -> None:
        super().__init__()
        self._history_size = check_history_size(history_size)
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemorySTMStore(memories={len(self._entries)})"

    def _load(self, memory_id: str) -> StoredSTM | None:
        with self._lock:
            entry = self._entries.get(memory_id)
            if entry is None:
                return None
            return StoredSTM(memory_id, entry.version, entry.stm.clone(), entry.interaction, entry.updated_at)

    def _save(self, memory_id: str, stm: torch.Tensor, expected_version: int, interaction: str | None) -> int:
        with self._lock:
            entry = self._entries.get(memory_id)
            if entry is not None and interaction is not None and interaction in entry.applied:
                return entry.applied[interaction]
            current = 0 if entry is None else entry.version
            if current != expected_version:
                raise stale_version_error(memory_id, expected_version, current)
            version = current + 1
            if entry is None:
                entry = self._entries[memory_id] = _Entry(version, stm, interaction, time.time())
            else:
                entry.version, entry.stm, entry.interaction = version, stm, interaction
                entry.updated_at = time.time()
            if interaction is not None:
                entry.applied[interaction] = version
                while len(entry.applied) > self._history_size:
                    entry.applied.popitem(last=False)
            return version

    def _applied_version(self, memory_id: str, interaction: str) -> int | None:
        with self._lock:
            entry = self._entries.get(memory_id)
            return None if entry is None else entry.applied.get(interaction)

    def _delete(self, memory_id: str) -> bool:
        with self._lock:
            return self._entries.pop(memory_id, None) is not None

    def _list_ids(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def _copy(self, src: str, dst: str) -> int:
        # Under one lock hold, so the snapshot and the create cannot interleave with other writes.
        with self._lock:
            source = self._entries.get(src)
            target = self._entries.get(dst)
            if source is None:
                raise StoreError(f"cannot copy memory {src!r}: it does not exist")
            if target is not None:
                raise copy_target_exists_error(src, dst, target.version)
            self._entries[dst] = _Entry(1, source.stm.clone(), None, time.time())
            return 1

    def _close(self) -> None:
        with self._lock:
            self._entries.clear()

"""STM stores: versioned, compare-and-set, idempotent persistence of each memory's STM tensor.

``open_store("sqlite:///stm.db")`` (default, durable) or ``open_store("memory://")``; every store
implements `STMStore`. `save_stm_file` / `load_stm_file` export and import one STM as a
``.safetensors`` file. Fault injection for tests lives in ``reactor_rt.store.testing``.
"""

from __future__ import annotations

from reactor_rt.store.base import DEFAULT_HISTORY_SIZE, STMStore, StoredSTM
from reactor_rt.store.files import load_stm_file, save_stm_file
from reactor_rt.store.in_memory import MemorySTMStore
from reactor_rt.store.sqlite import SQLiteSTMStore
from reactor_rt.store.url import ACCEPTED_URLS, open_store, sqlite_path

__all__ = [
    "ACCEPTED_URLS",
    "DEFAULT_HISTORY_SIZE",
    "MemorySTMStore",
    "SQLiteSTMStore",
    "STMStore",
    "StoredSTM",
    "load_stm_file",
    "open_store",
    "save_stm_file",
    "sqlite_path",
]

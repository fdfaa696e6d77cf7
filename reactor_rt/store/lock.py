"""One runtime per durable store: a lock file beside a SQLite store, held while a runtime uses it.

Two runtimes on one store (``reactor-rt chat`` in two terminals: both default to
``~/.reactor-rt/stm.db``) would number one event log's events twice over and race each other's STM
versions. The second one is refused at start instead. The lock is an advisory ``flock`` on
``<store>.lock``: the operating system drops it when its process ends, however it ends.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import IO

from reactor_rt.errors import StoreError
from reactor_rt.store.url import sqlite_path

try:
    import fcntl
except ImportError:  # not POSIX: no lock (and no protection)
    fcntl = None  # type: ignore[assignment]

__all__ = ["StoreLock"]

class StoreLock:
    """Holds the lock of one store URL until `release` (a ``memory://`` store needs none)."""

    def __init__(self, file: IO[str] | None, path: Path | None) -> None:
        self._file = file
        self.path = path  # the lock file, None when nothing is locked

    @classmethod
    def acquire(cls, url: str) -> StoreLock:
        """Lock ``url``'s store for this process; `StoreError` when another runtime holds it."""
        store = sqlite_path(url)
        if store is None or fcntl is None:
            return cls(None, None)
        path = Path(store + ".lock")
        try:
            file = path.open("a")
        except OSError as exc:
            raise StoreError(f"cannot open the store's lock file {str(path)!r}: {exc}") from exc
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.close()
            raise StoreError(f"the store {store!r} is in use by another reactor-rt runtime "
                             f"(its lock {str(path)!r} is held): stop that one, or use another store") from None
        return cls(file, path)

    def release(self) -> None:
        """Let another runtime use the store; idempotent."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()  # closing the file drops the flock
            self._file = None

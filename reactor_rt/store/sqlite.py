"""`SQLiteSTMStore`: the default, embedded STM store (``sqlite:///path.db``).

One row per memory id (version + safetensors bytes + dtype/shape checked on load) and a table of the
interaction ids applied to each memory. WAL with ``synchronous=FULL``: a save is on disk when it returns.
Every write runs in a ``BEGIN IMMEDIATE`` transaction, so compare-and-set also holds between several
store objects (or processes) that share one file. Within one object, one connection behind a lock
serves all threads.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import structlog
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
from reactor_rt.store.codec import decode_stm, dtype_name, encode_stm, format_shape, parse_shape

__all__ = ["SCHEMA_VERSION", "SQLiteSTMStore"]

log = structlog.get_logger(__name__)

# Bumped when the tables change; a file from a newer schema is refused rather than misread.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stm (
    memory_id   TEXT PRIMARY KEY,
    version     INTEGER NOT NULL CHECK (version >= 1),
    dtype       TEXT NOT NULL,
    shape       TEXT NOT NULL,
    data        BLOB NOT NULL,
    interaction TEXT,
    updated_at  REAL NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS applied (
    memory_id   TEXT NOT NULL,
    interaction TEXT NOT NULL,
    version     INTEGER NOT NULL,
    PRIMARY KEY (memory_id, interaction)
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS applied_by_version ON applied (memory_id, version);
"""

# Keep the newest `history_size` interactions of one memory: drop those older than the Nth newest.
_PRUNE_HISTORY = """
DELETE FROM applied WHERE memory_id = ?1 AND version < (
    SELECT version FROM applied WHERE memory_id = ?1 ORDER BY version DESC LIMIT 1 OFFSET ?2
)
"""

# The columns each table must have: a file whose tables differ was not written by this store.
_COLUMNS = {
    "stm": ("memory_id", "version", "dtype", "shape", "data", "interaction", "updated_at"),
    "applied": ("memory_id", "interaction", "version"),
}

_UPSERT = """
INSERT INTO stm (memory_id, version, dtype, shape, data, interaction, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (memory_id) DO UPDATE SET
    version = excluded.version, dtype = excluded.dtype, shape = excluded.shape, data = excluded.data,
    interaction = excluded.interaction, updated_at = excluded.updated_at
"""


class SQLiteSTMStore(STMStore):
    """STM store in one SQLite file. ``path`` may be relative (to the working directory).

    ``busy_timeout_s``: how long a write waits for another connection's transaction on the same file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        history_size: int = DEFAULT_HISTORY_SIZE,
        busy_timeout_s: float = 10.0,
    ) -> None:
        super().__init__()
        self._history_size = check_history_size(history_size)
        self._path = os.fspath(path)
        if not self._path:  # SQLite would open a private temporary database: nothing would persist
            raise ValueError("the STM database path must not be empty (':memory:' for a throwaway database)")
        self._lock = threading.Lock()
        try:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a parent that is a file, a read-only place, a name too long
            raise StoreError(f"cannot create the directory of STM database {self._path!r}: {exc}") from exc
        with contextlib.suppress(OSError):  # a missing file is created below; other errors show there
            # SQLite would fail on a FIFO or device with "disk I/O error", after creating a journal beside it
            if self._path != ":memory:" and not stat.S_ISREG(os.stat(self._path).st_mode):
                raise StoreError(f"cannot open STM database {self._path!r}: it is not a regular file")
        try:
            # autocommit mode (isolation_level=None): transactions are opened explicitly below
            self._conn = sqlite3.connect(
                self._path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open STM database {self._path!r}: {exc}") from exc
        try:
            self._init_schema()
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"SQLiteSTMStore({self._path!r})"

    @property
    def path(self) -> str:
        """The database file, as given."""
        return self._path

    # -- setup --------------------------------------------------------------------------------------

    def _init_schema(self) -> None:
        try:
            self._conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open STM database {self._path!r}: {exc}") from exc
        with self._transaction(f"initialising STM database {self._path!r}") as conn:
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"STM database {self._path!r} has schema version {found}; this reactor-rt reads "
                    f"up to {SCHEMA_VERSION} (written by a newer version?)"
                )
            # checked before anything is created: a foreign file is refused, not extended with our tables
            self._check_foreign(conn, found)
            # executescript() would COMMIT on its own; run the statements inside this transaction
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        # only once the file is known to be ours: WAL mode is recorded in the file, a refused one keeps its own
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open STM database {self._path!r}: {exc}") from exc

    def _check_foreign(self, conn: sqlite3.Connection, schema_version: int) -> None:
        """Refuse a database this store did not create: another application's file, or our tables altered.

        A new file has schema version 0 and no tables; one of ours has `SCHEMA_VERSION` and both tables.
        """
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if schema_version == 0:
            if tables:
                raise StoreError(
                    f"{self._path!r} is not an STM database: it already holds tables "
                    f"{sorted(tables)!r:.200} (another application's file?); give the STM store a file of its own"
                )
            return
        for table, expected in _COLUMNS.items():
            found = tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
            if found != expected:
                detail = "is missing" if not found else f"has columns {list(found)!r:.200}"
                raise StoreError(
                    f"{self._path!r} is not a valid STM database: table {table!r} {detail}, "
                    f"expected columns {list(expected)}"
                )

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """A write transaction under the lock; sqlite errors become `StoreError` naming ``what``."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"{what}: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{what}: {exc}") from exc
                raise

    def _query(self, what: str, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        """One read statement under the lock."""
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{what}: {exc}") from exc

    # -- hooks --------------------------------------------------------------------------------------

    def _load(self, memory_id: str) -> StoredSTM | None:
        what = f"memory {memory_id!r}"
        rows = self._query(
            f"loading {what}",
            "SELECT version, dtype, shape, data, interaction, updated_at FROM stm WHERE memory_id = ?",
            (memory_id,),
        )
        if not rows:
            return None
        version, dtype, shape, data, interaction, updated_at = rows[0]
        try:
            # decoded outside the lock: other threads need not wait for the copy
            stm = self._decode_row(what, version, dtype, shape, data)
        except StoreError as exc:
            log.warning("stm_store.corrupt_row", memory_id=memory_id, error=str(exc))
            raise
        return StoredSTM(memory_id, int(version), stm, interaction, float(updated_at))  # type: ignore[arg-type]

    @staticmethod
    def _decode_row(what: str, version: object, dtype: object, shape: object, data: object) -> torch.Tensor:
        if not isinstance(version, int) or version < 1:
            raise StoreError(f"{what}: stored version {version!r:.40} is not a positive int")
        if not isinstance(dtype, str) or not isinstance(shape, str):
            raise StoreError(f"{what}: dtype/shape metadata is missing or not text")
        return decode_stm(data, dtype=dtype, shape=parse_shape(shape, what=what), what=what)  # type: ignore[arg-type]

    def _save(self, memory_id: str, stm: torch.Tensor, expected_version: int, interaction: str | None) -> int:
        what = f"saving memory {memory_id!r}"
        try:
            blob = encode_stm(stm)  # before the transaction: the lock is held only for the I/O
        except Exception as exc:
            raise StoreError(f"{what}: cannot serialise the STM ({exc})") from exc
        with self._transaction(what) as conn:
            if interaction is not None:
                row = conn.execute(
                    "SELECT version FROM applied WHERE memory_id = ? AND interaction = ?",
                    (memory_id, interaction),
                ).fetchone()
                if row is not None:
                    return int(row[0])
            row = conn.execute("SELECT version FROM stm WHERE memory_id = ?", (memory_id,)).fetchone()
            current = 0 if row is None else int(row[0])
            if current != expected_version:
                raise stale_version_error(memory_id, expected_version, current)
            version = current + 1
            conn.execute(
                _UPSERT,
                (
                    memory_id,
                    version,
                    dtype_name(stm.dtype),
                    format_shape(stm.shape),
                    blob,
                    interaction,
                    time.time(),
                ),
            )
            if interaction is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO applied (memory_id, interaction, version) VALUES (?, ?, ?)",
                    (memory_id, interaction, version),
                )
                conn.execute(_PRUNE_HISTORY, (memory_id, self._history_size - 1))
            return version

    def _applied_version(self, memory_id: str, interaction: str) -> int | None:
        rows = self._query(
            f"reading the history of memory {memory_id!r}",
            "SELECT version FROM applied WHERE memory_id = ? AND interaction = ?",
            (memory_id, interaction),
        )
        return int(rows[0][0]) if rows else None  # type: ignore[call-overload]

    def _delete(self, memory_id: str) -> bool:
        with self._transaction(f"deleting memory {memory_id!r}") as conn:
            existed = conn.execute("DELETE FROM stm WHERE memory_id = ?", (memory_id,)).rowcount > 0
            conn.execute("DELETE FROM applied WHERE memory_id = ?", (memory_id,))
            return existed

    def _list_ids(self) -> list[str]:
        rows = self._query("listing memories", "SELECT memory_id FROM stm", ())
        return [row[0] for row in rows]  # type: ignore[misc]

    def _copy(self, src: str, dst: str) -> int:
        what = f"copying memory {src!r} to {dst!r}"
        with self._transaction(what) as conn:
            source = conn.execute(
                "SELECT version, dtype, shape, data FROM stm WHERE memory_id = ?", (src,)
            ).fetchone()
            if source is None:
                raise StoreError(f"cannot copy memory {src!r}: it does not exist")
            # refuse to spread a corrupt blob: decode it once (cheap next to the write)
            self._decode_row(f"memory {src!r}", *source)
            target = conn.execute("SELECT version FROM stm WHERE memory_id = ?", (dst,)).fetchone()
            if target is not None:
                raise copy_target_exists_error(src, dst, int(target[0]))
            _, dtype, shape, data = source
            conn.execute(_UPSERT, (dst, 1, dtype, shape, data, None, time.time()))
            conn.execute("DELETE FROM applied WHERE memory_id = ?", (dst,))
            return 1

    def _close(self) -> None:
        with self._lock:
            self._conn.close()

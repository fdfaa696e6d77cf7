"""Durable event log: SQLite in WAL mode, one row per durable event (its msgpack frame), read by subject
from a `seq` (resume after a disconnect) or by type; retention by age and row count.

The log also keeps each subject's last assigned `seq`, so a reopened log (and the bus over it) continues
the numbering. Non-durable events (chunks) are not stored; their numbers are remembered in memory and
written with the next durable append or on `flush()`/`close()` — no SQLite commit per chunk. After a
hard crash the numbers of chunks published since the last durable event may therefore be reused.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

import structlog

from reactor_rt.errors import EventLogError
from reactor_rt.events.codec import decode_batch, encode
from reactor_rt.events.filters import TypeFilter
from reactor_rt.events.schemas import DURABLE_TYPES, Event

__all__ = ["SCHEMA_VERSION", "EventLog", "LogRecord"]

log = structlog.get_logger()

SCHEMA_VERSION = 1  # PRAGMA user_version of a log this version writes (0: a log from before the stamp)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    pos INTEGER PRIMARY KEY,      -- global append order
    subject TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    logged_at REAL NOT NULL,      -- unix seconds, for retention by age
    frame BLOB NOT NULL,          -- the event's msgpack frame (events.codec)
    UNIQUE (subject, seq)
);
CREATE INDEX IF NOT EXISTS events_by_type ON events (type, pos);
CREATE TABLE IF NOT EXISTS subjects (
    subject TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL     -- last seq assigned on the subject, chunks included
) WITHOUT ROWID;
"""


_COLUMNS = {
    "events": ("pos", "subject", "seq", "type", "logged_at", "frame"),
    "subjects": ("subject", "last_seq"),
}


class LogRecord(NamedTuple):
    """One event as the log stores it; `frame` may be None for a type the log does not keep."""

    subject: str
    seq: int
    type: str
    frame: bytes | None


class EventLog:
    """SQLite (WAL) log of durable events. Thread-safe within one process.

    Args:
        path: a database file, or ":memory:".
        durable_types: the types stored; others only advance the subject's seq counter.
        max_age: drop events older than this (seconds or a timedelta) when pruning; None keeps all.
        max_rows: keep at most this many events (the oldest go first) when pruning; None keeps all.
        prune_every: with a retention bound set, prune automatically after this many appended rows.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        durable_types: Iterable[str] = DURABLE_TYPES,
        max_age: float | timedelta | None = None,
        max_rows: int | None = None,
        prune_every: int = 1000,
    ) -> None:
        self.path = str(path)
        self.durable_types = frozenset(durable_types)
        self.max_age = max_age.total_seconds() if isinstance(max_age, timedelta) else max_age
        self.max_rows = max_rows
        self.prune_every = prune_every
        self._lock = threading.RLock()
        self._counters: dict[str, int] = {}  # subject -> last seq (cache of the subjects table)
        self._dirty: set[str] = set()  # subjects whose counter moved without a durable row
        self._since_prune = 0
        try:
            # autocommit mode: transactions are explicit (one per append batch)
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot open event log {self.path!r}: {exc}") from exc
        try:
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._init_schema(self._conn)
            # only once the file is known to be ours: WAL mode is recorded in the file
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes
        except BaseException as exc:
            self._conn.close()
            self._conn = None
            if isinstance(exc, sqlite3.Error):
                raise EventLogError(f"cannot open event log {self.path!r}: {exc}") from exc
            raise

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        """Create the tables in a new file, or check that an existing file is an event log this version
        reads: a newer version's log or another application's database is refused, left as it was."""
        if self._is_current(conn):  # the common case: nothing to write (a reader such as the CLI)
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not self._is_current(conn):  # checked again under the write lock
                # executescript() would COMMIT on its own: run the statements inside this transaction
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _is_current(self, conn: sqlite3.Connection) -> bool:
        """True for a log of this schema version; False for an empty file or a log from before the
        version stamp (version 0 with the log's tables); `EventLogError` for anything else."""
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise EventLogError(
                f"event log {self.path!r} has schema version {found}; this reactor-rt reads up to "
                f"{SCHEMA_VERSION} (written by a newer version?)"
            )
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")}
        if not tables and found == 0:
            return False
        if tables != set(_COLUMNS):
            raise EventLogError(
                f"{self.path!r} is not an event log: it holds tables {sorted(tables)!r:.200} "
                "(another application's file?); give the event log a file of its own"
            )
        for table, expected in _COLUMNS.items():
            columns = tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
            if columns != expected:
                raise EventLogError(
                    f"{self.path!r} is not a valid event log: table {table!r} has columns "
                    f"{list(columns)!r:.200}, expected {list(expected)}"
                )
        return found == SCHEMA_VERSION

    # ------------------------------------------------------------------ writing

    def append(self, event: Event) -> None:
        """Append one stamped event (``seq`` > 0); see `append_many`."""
        self.append_many((event,))

    def append_many(self, events: Sequence[Event]) -> None:
        """Append stamped events in one transaction; non-durable types only advance their counter."""
        records = []
        for ev in events:
            durable = ev.type in self.durable_types
            records.append(LogRecord(ev.subject, ev.seq, ev.type, encode(ev) if durable else None))
        self.append_records(records)

    def append_records(self, records: Iterable[LogRecord | tuple[str, int, str, bytes | None]]) -> int:
        """Append pre-encoded events in one transaction; returns the number of rows stored.

        Rows of non-durable types (or with no frame) are skipped, but their seq still advances the
        subject's persisted counter (written with the next transaction).
        """
        now = time.time()
        rows: list[tuple[str, int, str, float, bytes]] = []
        records = list(records)
        with self._lock:
            conn = self._live()
            for subject, seq, _type, _frame in records:
                if seq <= 0:
                    raise EventLogError(f"event on {subject!r} has no seq: stamp it before logging")
            # what a failed batch must leave as it was: nothing of it was logged, and the counters
            # already pending (chunks') must still be written by a later transaction
            counters_before: dict[str, int | None] = {}
            dirty_before = set(self._dirty)
            for subject, seq, type_, frame in records:
                if subject not in counters_before:
                    counters_before[subject] = self._counters.get(subject)
                if seq > self._counters.get(subject, 0):
                    self._counters[subject] = seq
                self._dirty.add(subject)
                if frame is not None and type_ in self.durable_types:
                    rows.append((subject, seq, type_, now, frame))
            if not rows:
                return 0
            try:
                conn.execute("BEGIN")
                conn.executemany(
                    "INSERT INTO events (subject, seq, type, logged_at, frame) VALUES (?, ?, ?, ?, ?)", rows
                )
                self._write_counters(conn)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                self._dirty = dirty_before
                for subject, value in counters_before.items():
                    if value is None:
                        self._counters.pop(subject, None)  # read from the table again when asked
                    else:
                        self._counters[subject] = value
                raise EventLogError(f"cannot append to event log: {exc}") from exc
            self._dirty.clear()
            self._since_prune += len(rows)
            if self._since_prune >= self.prune_every and (self.max_age is not None or self.max_rows is not None):
                self.prune()
            return len(rows)

    def flush(self) -> None:
        """Persist seq counters advanced by non-durable events since the last append."""
        with self._lock:
            if not self._dirty:
                return
            conn = self._live()
            try:
                conn.execute("BEGIN")
                self._write_counters(conn)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise EventLogError(f"cannot write seq counters: {exc}") from exc
            self._dirty.clear()

    def _write_counters(self, conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO subjects (subject, last_seq) VALUES (?, ?) "
            "ON CONFLICT (subject) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
            [(s, self._counters[s]) for s in self._dirty],
        )

    # ------------------------------------------------------------------ reading

    def last_seq(self, subject: str) -> int:
        """The last seq assigned on `subject` (0 if none), across restarts."""
        with self._lock:
            cached = self._counters.get(subject)
            if cached is not None:
                return cached
            conn = self._live()
            row = conn.execute("SELECT last_seq FROM subjects WHERE subject = ?", (subject,)).fetchone()
            value = row[0] if row else 0
            self._counters[subject] = value
            return value

    def read_frames(
        self,
        subject: str,
        after: int = 0,
        types: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[bytes]:
        """The frames logged on `subject` with seq > `after`, in seq order."""
        cond, params = TypeFilter(types).sql()
        sql = f"SELECT frame FROM events WHERE subject = ? AND seq > ? AND {cond} ORDER BY seq"
        return self._frames(sql, [subject, after, *params], limit)

    def read(
        self,
        subject: str,
        after: int = 0,
        types: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """The events logged on `subject` with seq > `after`, in seq order (resume from a seq)."""
        return decode_batch(self.read_frames(subject, after, types, limit))

    def read_types(
        self,
        types: Iterable[str] | None,
        *,
        since: datetime | float | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Logged events of the given types (exact or prefix) on any subject, in append order.

        `since` (a datetime or unix seconds) keeps events logged at or after that time.
        """
        cond, params = TypeFilter(types).sql()
        sql = f"SELECT frame FROM events WHERE {cond}"
        args: list[object] = list(params)
        if since is not None:
            sql += " AND logged_at >= ?"
            args.append(since.timestamp() if isinstance(since, datetime) else float(since))
        return decode_batch(self._frames(sql + " ORDER BY pos", args, limit))

    def last_seqs(self, event_type: str) -> dict[str, int]:
        """Each subject's last logged seq of one type, read without decoding a frame."""
        with self._lock:
            try:
                rows = self._live().execute(
                    "SELECT subject, max(seq) FROM events WHERE type = ? GROUP BY subject", (event_type,))
                return dict(rows.fetchall())
            except sqlite3.Error as exc:
                raise EventLogError(f"cannot read event log: {exc}") from exc

    def last_seq_of(self, subject: str, event_type: str) -> int:
        """The last logged seq of one type on `subject` (0 if none); walks the subject's newest events
        backwards, so it costs the events logged since that one, not the subject's whole history."""
        with self._lock:
            try:
                row = self._live().execute(
                    "SELECT seq FROM events WHERE subject = ? AND type = ? ORDER BY seq DESC LIMIT 1",
                    (subject, event_type)).fetchone()
            except sqlite3.Error as exc:
                raise EventLogError(f"cannot read event log: {exc}") from exc
        return row[0] if row else 0

    def subjects(self) -> list[str]:
        """Every subject that has been assigned a seq."""
        with self._lock:
            self.flush()
            return [r[0] for r in self._live().execute("SELECT subject FROM subjects ORDER BY subject")]

    def count(self) -> int:
        """Number of events stored."""
        with self._lock:
            return self._live().execute("SELECT count(*) FROM events").fetchone()[0]

    def _frames(self, sql: str, args: list[object], limit: int | None) -> list[bytes]:
        if limit is not None:
            sql += " LIMIT ?"
            args = [*args, int(limit)]
        with self._lock:
            try:
                return [r[0] for r in self._live().execute(sql, args)]
            except sqlite3.Error as exc:
                raise EventLogError(f"cannot read event log: {exc}") from exc

    # ------------------------------------------------------------------ retention

    def prune(self) -> int:
        """Apply the retention bounds (`max_age`, `max_rows`); returns the number of events removed.

        Seq counters are kept, so numbering never restarts on a pruned subject.
        """
        removed = 0
        with self._lock:
            conn = self._live()
            self._since_prune = 0
            try:
                conn.execute("BEGIN")
                if self.max_age is not None:
                    # logged_at grows with pos: find the first young row by walking from the oldest,
                    # which touches only the rows that are about to go (no index on logged_at to maintain)
                    cutoff = time.time() - self.max_age
                    first_young = conn.execute(
                        "SELECT pos FROM events WHERE logged_at >= ? ORDER BY pos LIMIT 1", (cutoff,)
                    ).fetchone()
                    if first_young is None:
                        removed += conn.execute("DELETE FROM events").rowcount
                    else:
                        removed += conn.execute("DELETE FROM events WHERE pos < ?", first_young).rowcount
                if self.max_rows is not None:
                    removed += conn.execute(
                        "DELETE FROM events WHERE pos <= "
                        "(SELECT pos FROM events ORDER BY pos DESC LIMIT 1 OFFSET ?)",
                        (self.max_rows,),
                    ).rowcount
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise EventLogError(f"cannot prune event log: {exc}") from exc
        if removed:
            log.debug("event_log.pruned", path=self.path, removed=removed)
        return removed

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Persist pending counters and close the database; idempotent."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self.flush()
            finally:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise EventLogError("the event log is closed")
        return self._conn

    def __repr__(self) -> str:
        return f"EventLog({self.path!r}, max_age={self.max_age}, max_rows={self.max_rows})"


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")

"""Durable SQLite log: read by subject/seq and type, counters across reopen, retention, thread safety."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from reactor_rt import EventLogError
from reactor_rt.events import DURABLE_TYPES, EventLog
from reactor_rt.events.codec import encode
from reactor_rt.events.testing import example_event


def stamped(type_: str, subject: str, seq: int, **fields):
    return example_event(type_, subject=subject, seq=seq, **fields)


def interaction(subject: str, start: int) -> list:
    """query, two chunks, done, updating, updated: seqs start..start+5."""
    types = ["rx.query", "rx.response.chunk", "rx.response.chunk", "rx.response.done",
             "rx.memory.updating", "rx.memory.updated"]
    return [stamped(t, subject, start + i) for i, t in enumerate(types)]


def test_wal_mode_and_durable_types_only(tmp_path):
    path = tmp_path / "log.db"
    with EventLog(path) as log:
        log.append_many(interaction("a", 1))
        assert log.count() == 4  # the two chunks are not stored
        assert [e.type for e in log.read("a")] == ["rx.query", "rx.response.done", "rx.memory.updating",
                                                   "rx.memory.updated"]
        assert log.last_seq("a") == 6
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_read_after_types_limit_and_subjects():
    log = EventLog()
    log.append_many(interaction("a", 1) + interaction("b", 1) + interaction("a", 7))
    assert [e.seq for e in log.read("a", after=4)] == [5, 6, 7, 10, 11, 12]
    assert [e.seq for e in log.read("a", after=4, limit=2)] == [5, 6]
    assert [e.seq for e in log.read("a", types=["rx.memory."])] == [5, 6, 11, 12]
    assert [e.seq for e in log.read("a", types=["rx.query", "rx.memory.updated"])] == [1, 6, 7, 12]
    assert log.read("nobody") == []
    by_type = log.read_types(["rx.response.done"])
    assert [(e.subject, e.seq) for e in by_type] == [("a", 4), ("b", 4), ("a", 10)]  # append order
    assert len(log.read_types(None, limit=3)) == 3
    assert log.subjects() == ["a", "b"]
    log.close()


def test_last_seqs_gives_each_subjects_last_logged_seq_of_one_type():
    log = EventLog()
    log.append_many(interaction("a", 1) + interaction("b", 1) + interaction("a", 7))
    assert log.last_seqs("rx.query") == {"a": 7, "b": 1}
    assert log.last_seqs("rx.memory.updated") == {"a": 12, "b": 6}
    assert log.last_seqs("rx.response.chunk") == {}  # not stored
    assert (log.last_seq_of("a", "rx.query"), log.last_seq_of("b", "rx.query")) == (7, 1)
    assert log.last_seq_of("a", "rx.memory.updated") == 12
    assert (log.last_seq_of("a", "rx.response.chunk"), log.last_seq_of("nobody", "rx.query")) == (0, 0)
    log.close()


def test_read_types_since():
    log = EventLog()
    log.append_many(interaction("a", 1))
    assert len(log.read_types(["rx.query"], since=datetime.now(UTC) - timedelta(minutes=1))) == 1
    assert log.read_types(["rx.query"], since=time.time() + 60) == []


def test_seq_counters_survive_reopen_including_chunk_numbers(tmp_path):
    path = tmp_path / "log.db"
    log = EventLog(path)
    log.append_many(interaction("a", 1))
    log.append(stamped("rx.response.chunk", "a", 7))  # only a counter moves: no row, no commit yet
    log.close()  # close flushes the counter
    reopened = EventLog(path)
    assert reopened.last_seq("a") == 7 and reopened.last_seq("b") == 0
    assert [e.seq for e in reopened.read("a")] == [1, 4, 5, 6]
    reopened.close()


def test_duplicate_seq_is_an_error_and_the_batch_is_rolled_back():
    log = EventLog()
    log.append(stamped("rx.query", "a", 1))
    with pytest.raises(EventLogError):
        log.append_many([stamped("rx.query", "a", 2), stamped("rx.query", "a", 1)])
    assert [e.seq for e in log.read("a")] == [1]


def test_unstamped_events_are_refused():
    with pytest.raises(EventLogError):
        EventLog().append(example_event("rx.query"))


def test_custom_durable_types():
    log = EventLog(durable_types={"rx.response.chunk"})
    log.append_many(interaction("a", 1))
    assert [e.type for e in log.read("a")] == ["rx.response.chunk"] * 2
    assert "rx.response.chunk" not in DURABLE_TYPES


def test_retention_by_rows_keeps_newest_and_counters(tmp_path):
    log = EventLog(tmp_path / "log.db", max_rows=5, prune_every=10**9)
    for start in range(1, 31, 6):
        log.append_many(interaction("a", start))
    assert log.count() == 20
    assert log.prune() == 15
    assert [e.seq for e in log.read("a")] == [24, 25, 28, 29, 30]
    assert log.last_seq("a") == 30  # numbering never restarts


def test_retention_by_age():
    log = EventLog(max_age=0.2)
    log.append_many(interaction("a", 1))
    time.sleep(0.3)
    log.append_many(interaction("a", 7))
    assert log.prune() == 4
    assert [e.seq for e in log.read("a")] == [7, 10, 11, 12]
    time.sleep(0.3)
    assert log.prune() == 4 and log.count() == 0


def test_automatic_pruning():
    log = EventLog(max_rows=3, prune_every=4)
    log.append_many(interaction("a", 1))  # 4 rows -> prune to 3
    assert log.count() == 3
    log.append_many(interaction("a", 7)[:2])  # 1 row: under prune_every, kept until the next prune
    assert log.count() == 4


def test_retention_accepts_timedelta():
    assert EventLog(max_age=timedelta(minutes=2)).max_age == 120


def test_concurrent_appends_from_threads(tmp_path):
    log = EventLog(tmp_path / "log.db")
    errors: list[BaseException] = []

    def writer(subject: str) -> None:
        try:
            for start in range(1, 61, 6):
                log.append_many(interaction(subject, start))
                log.read(subject)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert log.count() == 4 * 40
    for i in range(4):
        assert log.last_seq(f"t{i}") == 60


def test_append_records_with_frames():
    log = EventLog()
    ev = stamped("rx.query", "a", 1)
    assert log.append_records([("a", 1, "rx.query", encode(ev)), ("a", 2, "rx.response.chunk", None)]) == 1
    assert log.read_frames("a") == [encode(ev)] and log.last_seq("a") == 2


def test_closed_log_raises():
    log = EventLog()
    log.close()
    log.close()  # idempotent
    with pytest.raises(EventLogError):
        log.read("a")


def test_unopenable_path_is_an_event_log_error(tmp_path):
    with pytest.raises(EventLogError):
        EventLog(tmp_path / "missing-dir" / "log.db")


def _journal_mode(path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


def test_a_newer_or_foreign_database_is_refused_and_left_as_it_was(tmp_path):
    newer = tmp_path / "newer.db"
    with EventLog(newer) as log:
        log.append_many(interaction("a", 1))
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")  # written by a later reactor-rt
    conn.close()
    with pytest.raises(EventLogError, match="schema version 99"):
        EventLog(newer)
    foreign = tmp_path / "app.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(EventLogError, match="not an event log"):
        EventLog(foreign)
    conn = sqlite3.connect(foreign)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    conn.close()
    assert tables == ["users"] and _journal_mode(foreign) == "delete"  # no tables added, not made WAL
    altered = tmp_path / "altered.db"
    conn = sqlite3.connect(altered)
    conn.execute("CREATE TABLE events (pos INTEGER PRIMARY KEY, body BLOB)")
    conn.execute("CREATE TABLE subjects (subject TEXT PRIMARY KEY, last_seq INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(EventLogError, match="not a valid event log"):
        EventLog(altered)


def test_a_log_from_before_the_version_stamp_opens_and_is_stamped(tmp_path):
    from reactor_rt.events.log import SCHEMA_VERSION

    path = tmp_path / "old.db"
    with EventLog(path) as log:
        log.append_many(interaction("a", 1))
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 0")  # what logs written before the stamp hold
    conn.close()
    with EventLog(path) as log:
        assert [e.seq for e in log.read("a")] == [1, 4, 5, 6] and log.last_seq("a") == 6
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


class _FullDisk:
    """A connection whose next COMMIT fails as on a full disk (in WAL mode pages are written then)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.armed = True

    def execute(self, sql: str, *args):  # type: ignore[no-untyped-def]
        if sql == "COMMIT" and self.armed:
            self.armed = False
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.conn, name)


def test_chunk_numbers_survive_a_failed_append(tmp_path):
    """The counters of chunks are written with the next durable append; when that transaction fails
    at COMMIT they must still be written later, not forgotten with the rolled-back write."""
    from reactor_rt.events.log import LogRecord

    path = tmp_path / "log.db"
    log = EventLog(path)
    log.append(stamped("rx.query", "b", 1))
    log.append_records([LogRecord("a", 5, "rx.response.chunk", None)])  # counted in memory for now
    real = log._conn
    log._conn = _FullDisk(real)  # type: ignore[assignment]
    with pytest.raises(EventLogError, match="disk is full"):
        log.append(stamped("rx.query", "c", 1))  # the whole batch rolls back, counters included
    log._conn = real
    assert log.last_seq("a") == 5 and log.last_seq("c") == 0
    log.close()  # the pending counters are written here
    with EventLog(path) as reopened:
        assert reopened.last_seq("a") == 5 and reopened.last_seq("c") == 0  # c: nothing of it was logged
        assert reopened.read("c") == []

"""SQLite-specific behaviour: durability across reopen, corrupt rows, several connections on one file."""

from __future__ import annotations

import os
import sqlite3

import pytest
import torch
from safetensors.torch import save as st_save

from reactor_rt import StoreError
from reactor_rt.store import SQLiteSTMStore
from reactor_rt.store.sqlite import SCHEMA_VERSION


def stm(seed: int = 0, shape=(2, 4, 8)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def db(tmp_path):
    return tmp_path / "stm.db"


def raw(db, sql: str, params=()) -> list:
    """Tamper with the file behind the store's back, as disk corruption or a bad tool would."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_state_and_history_survive_reopen(db):
    with SQLiteSTMStore(db) as store:
        store.save("alice", stm(0), expected_version=0, interaction="q1")
        store.save("alice", stm(1), expected_version=1, interaction="q2")
        store.save("bob", stm(2), expected_version=0)
    with SQLiteSTMStore(db) as store:
        got = store.load("alice")
        assert got.version == 2 and got.interaction == "q2" and torch.equal(got.stm, stm(1))
        assert store.list_ids() == ["alice", "bob"]
        # the retry of an interaction applied before the restart is still recognised
        assert store.save("alice", stm(9), expected_version=0, interaction="q1") == 1
        assert store.load("alice").version == 2
        assert store.save("alice", stm(3), expected_version=2) == 3


def test_save_is_visible_to_another_connection_at_once(db):
    writer, reader = SQLiteSTMStore(db), SQLiteSTMStore(db)
    try:
        writer.save("m", stm(0), expected_version=0)
        got = reader.load("m")
        assert got is not None and torch.equal(got.stm, stm(0))
    finally:
        writer.close()
        reader.close()


def test_wal_and_full_sync_are_on(db):
    with SQLiteSTMStore(db) as store:
        store.save("m", stm(0), expected_version=0)
        conn = store._conn  # the store's own connection: pragmas are per connection
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert raw(db, "PRAGMA user_version")[0][0] == SCHEMA_VERSION


def test_two_stores_on_one_file_keep_compare_and_set(db, race):
    """Two store objects (as two processes would) racing on one file: one winner per version."""
    stores = [SQLiteSTMStore(db) for _ in range(2)]
    try:
        stores[0].save("race", stm(0), expected_version=0)
        for version in range(1, 4):
            outcomes = race(lambda i, v=version: stores[i % 2].save("race", stm(i), expected_version=v), 4)
            assert outcomes.count(version + 1) == 1 and outcomes.count("stale") == 3, outcomes
        assert stores[1].load("race").version == 4
    finally:
        for s in stores:
            s.close()


CORRUPTIONS = {
    "garbage bytes": ("UPDATE stm SET data = ? WHERE memory_id = 'bad'", (b"\x00garbage",)),
    "truncated bytes": ("UPDATE stm SET data = substr(data, 1, 40) WHERE memory_id = 'bad'", ()),
    "wrong shape metadata": ("UPDATE stm SET shape = '[3,3]' WHERE memory_id = 'bad'", ()),
    "shape not json": ("UPDATE stm SET shape = 'oops' WHERE memory_id = 'bad'", ()),
    "negative shape": ("UPDATE stm SET shape = '[-1,8]' WHERE memory_id = 'bad'", ()),
    "wrong dtype metadata": ("UPDATE stm SET dtype = 'int8' WHERE memory_id = 'bad'", ()),
    "another tensor name": (
        "UPDATE stm SET data = ? WHERE memory_id = 'bad'",
        (st_save({"weights": stm(0)}),),
    ),
    "two tensors": (
        "UPDATE stm SET data = ? WHERE memory_id = 'bad'",
        (st_save({"stm": stm(0), "extra": stm(1)}),),
    ),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_row_is_a_store_error_and_other_ids_keep_working(db, corruption):
    with SQLiteSTMStore(db) as store:
        store.save("bad", stm(0), expected_version=0)
        store.save("good", stm(1), expected_version=0)
        sql, params = CORRUPTIONS[corruption]
        raw(db, sql, params)
        with pytest.raises(StoreError, match="memory 'bad'"):
            store.load("bad")
        with pytest.raises(StoreError, match="memory 'bad'"):
            store.copy("bad", "fork")  # a corrupt blob is not spread
        assert store.load("fork") is None
        assert torch.equal(store.load("good").stm, stm(1))
        assert store.save("good", stm(2), expected_version=1) == 2
        assert store.list_ids() == ["bad", "good"]
        # the version is intact, so a compare-and-set write repairs the row
        assert store.save("bad", stm(3), expected_version=1) == 2
        assert torch.equal(store.load("bad").stm, stm(3))


def test_strict_tables_refuse_wrongly_typed_values(db):
    with SQLiteSTMStore(db) as store:
        store.save("m", stm(0), expected_version=0)
    with pytest.raises(sqlite3.IntegrityError):
        raw(db, "UPDATE stm SET version = 'two' WHERE memory_id = 'm'")


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path):
    path = tmp_path / "not.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"not\.db"):
        SQLiteSTMStore(path)


def test_a_newer_schema_is_refused(db):
    SQLiteSTMStore(db).close()
    raw(db, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        SQLiteSTMStore(db)


def test_missing_parent_directories_are_created(tmp_path):
    path = tmp_path / "a" / "b" / "stm.db"
    with SQLiteSTMStore(path) as store:
        store.save("m", stm(0), expected_version=0)
    assert path.exists()


def test_history_rows_stay_bounded_on_disk(db):
    with SQLiteSTMStore(db, history_size=5) as store:
        for v in range(20):
            store.save("m", stm(v), expected_version=v, interaction=f"q{v}")
        store.save("n", stm(0), expected_version=0, interaction="q0")
    rows = raw(db, "SELECT memory_id, version FROM applied ORDER BY memory_id, version")
    assert rows == [("m", v) for v in range(16, 21)] + [("n", 1)]


def test_ids_are_data_not_paths_or_sql(db):
    weird = ["../../etc/passwd", "'; DROP TABLE stm; --", "ünïcødé 🙂", "a" * 256]
    with SQLiteSTMStore(db) as store:
        for i, memory_id in enumerate(weird):
            store.save(memory_id, stm(i), expected_version=0)
        assert store.list_ids() == sorted(weird)
        for i, memory_id in enumerate(weird):
            assert torch.equal(store.load(memory_id).stm, stm(i))
    # nothing but the database (and its WAL files) was created: no id became a file name
    assert {p.name for p in db.parent.iterdir()} <= {"stm.db", "stm.db-wal", "stm.db-shm"}


def foreign_db(path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            for sql in statements:
                conn.execute(sql)
    finally:
        conn.close()


@pytest.mark.parametrize(
    "statements",
    [
        ["CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"],  # another application's database
        ["CREATE TABLE stm (id INTEGER PRIMARY KEY, payload BLOB)"],  # a table of ours by name only
    ],
    ids=["other tables", "an stm table of other columns"],
)
def test_a_foreign_database_is_refused_at_open_and_left_untouched(db, statements):
    foreign_db(db, *statements)
    before = raw(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    with pytest.raises(StoreError, match=r"stm\.db.*not an STM database"):
        SQLiteSTMStore(db)
    assert raw(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == before
    assert raw(db, "PRAGMA user_version")[0][0] == 0
    assert raw(db, "PRAGMA journal_mode")[0][0] == "delete"  # not switched to WAL behind its owner's back


def test_a_database_whose_tables_were_altered_is_refused_at_open(db):
    with SQLiteSTMStore(db) as store:
        store.save("m", stm(0), expected_version=0)
    raw(db, "ALTER TABLE stm RENAME COLUMN data TO payload")
    with pytest.raises(StoreError, match=r"table 'stm' has columns .*'payload'"):
        SQLiteSTMStore(db)
    raw(db, "DROP TABLE applied")
    raw(db, "ALTER TABLE stm RENAME COLUMN payload TO data")
    with pytest.raises(StoreError, match="table 'applied' is missing"):
        SQLiteSTMStore(db)


def test_a_file_with_our_schema_version_but_no_tables_is_refused(db):
    # another application that also numbers its schema 1: our tables must not be added to its file
    foreign_db(db, "CREATE TABLE users (id INTEGER)", f"PRAGMA user_version = {SCHEMA_VERSION}")
    with pytest.raises(StoreError, match="not a valid STM database"):
        SQLiteSTMStore(db)
    assert [r[0] for r in raw(db, "SELECT name FROM sqlite_master")] == ["users"]


def test_an_empty_file_is_a_new_database(db):
    db.write_bytes(b"")  # `touch stm.db` before the first start
    with SQLiteSTMStore(db) as store:
        store.save("m", stm(0), expected_version=0)
    with SQLiteSTMStore(db) as store:
        assert store.load("m").version == 1


def test_an_empty_path_is_refused_not_a_silent_temporary_database():
    # sqlite3.connect("") opens a private temporary database: every save would vanish on close
    with pytest.raises(ValueError, match="must not be empty"):
        SQLiteSTMStore("")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_path_that_is_not_a_regular_file_is_refused_before_sqlite_touches_it(tmp_path):
    fifo = tmp_path / "stm.db"
    os.mkfifo(fifo)
    # SQLite said "disk I/O error" here, and left a stm.db-journal beside the pipe
    with pytest.raises(StoreError, match=r"stm\.db.*not a regular file"):
        SQLiteSTMStore(fifo)
    with pytest.raises(StoreError, match="not a regular file"):
        SQLiteSTMStore(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["stm.db"]

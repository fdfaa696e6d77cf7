"""Type filters: exact names and "prefix." names, in Python and as SQL."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reactor_rt.events import EVENT_TYPES, TypeFilter


def test_none_matches_everything():
    f = TypeFilter(None)
    assert f.matches_all and all(f(t) for t in EVENT_TYPES)


def test_exact_and_prefix():
    f = TypeFilter(["rx.query", "rx.memory."])
    assert f("rx.query") and f("rx.memory.updated") and f("rx.memory.updating")
    assert not f("rx.query.x") and not f("rx.response.done") and not f("rx.memoryx")


def test_a_lone_string_is_one_name():
    assert TypeFilter("rx.error")("rx.error") and not TypeFilter("rx.error")("r")


def test_empty_filter_matches_nothing():
    assert not TypeFilter([])("rx.query")


@pytest.mark.parametrize("bad", [[""], [None], [3]])
def test_bad_names(bad):
    with pytest.raises(ValueError):
        TypeFilter(bad)


names = st.sampled_from([*EVENT_TYPES, "rx.", "rx.memory.", "rx.response.", "rx.thought.", "RX.MEMORY.", "rx_memory."])


@given(st.one_of(st.none(), st.lists(names, max_size=4)))
def test_sql_condition_agrees_with_python(types):
    f = TypeFilter(types)
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (type TEXT)")
    conn.executemany("INSERT INTO t VALUES (?)", [(t,) for t in [*EVENT_TYPES, "RX.MEMORY.UPDATED", "rx_memory.x"]])
    cond, params = f.sql()
    got = {r[0] for r in conn.execute(f"SELECT type FROM t WHERE {cond}", params)}
    assert got == {t for t in [*EVENT_TYPES, "RX.MEMORY.UPDATED", "rx_memory.x"] if f(t)}

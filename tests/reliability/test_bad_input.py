"""Bad input: fuzzed ids and query texts, corrupt checkpoints and STM rows, garbage frames -> typed errors,
and the runtime keeps serving."""

from __future__ import annotations

import json
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reactor_rt import Reactor
from reactor_rt.errors import (
    CheckpointError,
    EventDecodeError,
    EventEncodeError,
    InvalidIdError,
    ReactorError,
    StoreError,
)
from reactor_rt.events import codec
from reactor_rt.ids import MAX_ID_LENGTH, validate_id
from reactor_rt.model import ReactiveTransformer
from reactor_rt.store import SQLiteSTMStore

pytestmark = pytest.mark.anyio

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# text with control characters, surrogates excluded (a Python str can hold them, msgpack cannot encode them)
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
ids = st.one_of(any_text, st.text(st.sampled_from("./\\\x00\n\t ~é日"), max_size=12),
                st.integers(0, 600).map(lambda n: "x" * n))
QUERY_ERRORS = {"empty_query", "query_too_long"}
COUNTS = {"ids": 0, "queries": 0, "frames": 0}


@settings(max_examples=500, deadline=None)
@given(ids)
def test_validate_id_accepts_exactly_the_documented_ids(value):
    COUNTS["ids"] += 1
    ok = 1 <= len(value) <= MAX_ID_LENGTH and value.isprintable()
    if ok:
        assert validate_id(value) == value
    else:
        with pytest.raises(InvalidIdError):
            validate_id(value)


@FUZZ
@given(stream_id=ids, text=st.one_of(any_text, st.integers(0, 5000).map(lambda n: "é" * n)))
async def test_fuzzed_ids_and_queries_get_an_answer_or_a_typed_error(local_runtime, run_query, query, stream_id, text):
    COUNTS["queries"] += 1
    async with local_runtime(max_new_tokens=2) as rt:
        try:
            await rt.conductor.open_stream(stream_id)
        except InvalidIdError:
            assert not (1 <= len(stream_id) <= MAX_ID_LENGTH and stream_id.isprintable())
            stream_id = "fallback"
        events = await run_query(rt.bus, query(stream_id, text))
        last = events[-1]
        if last.type == "rx.error":
            assert last.data.code in QUERY_ERRORS, last.data
        else:
            assert [e.type for e in events][-3:] == ["rx.response.done", "rx.memory.updating", "rx.memory.updated"]
        # and it keeps serving
        after = await run_query(rt.bus, query("healthy", "hello"))
        assert after[-1].type == "rx.memory.updated"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_garbage_frames_raise_a_decode_error(frame):
    COUNTS["frames"] += 1
    try:
        event = codec.decode(frame)
    except EventDecodeError:
        return
    assert event.type  # a valid frame by chance: a real event


def test_an_oversize_frame_is_refused_before_it_is_parsed():
    limit = codec.DEFAULT_LIMITS.max_frame_bytes
    with pytest.raises(EventDecodeError):
        codec.decode(b"\x81" + b"\x00" * limit)


@pytest.mark.parametrize("damage", ["config", "weights", "missing", "shape"])
async def test_a_corrupt_checkpoint_is_a_checkpoint_error(model, tmp_path, damage):
    path = tmp_path / "ckpt"
    model.save_pretrained(path)
    if damage == "config":
        (path / "config.json").write_text("{not json")
    elif damage == "weights":
        (path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!" * 10)
    elif damage == "missing":
        (path / "model.safetensors").unlink()
    else:
        config = json.loads((path / "config.json").read_text())
        config["dim"] = config["dim"] * 2
        (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError):
        ReactiveTransformer.from_pretrained(path)
    with pytest.raises(ReactorError):  # refused before any actor (or Ray) starts
        async with Reactor.start(model=str(path), store="memory://", namespace="rel-bad-ckpt"):
            pass


async def test_a_query_that_is_not_utf8_is_refused_with_a_typed_error(local_runtime, run_query, query):
    """A lone surrogate (a Python str may hold one): on a bus without a log the query reaches the
    conductor, which refuses it (it used to fail inside the tokenizer: `internal`); a logged bus cannot
    encode it and refuses it at publish. Either way the runtime keeps serving."""
    async with local_runtime(log_path=None) as rt:
        events = await run_query(rt.bus, query("s", "hi \ud800 there"))
        assert events[-1].type == "rx.error" and events[-1].data.code == "invalid_query"
        assert "surrogate" in events[-1].data.message
        assert (await run_query(rt.bus, query("s", "hello")))[-1].type == "rx.memory.updated"
    async with local_runtime() as rt:
        with pytest.raises(EventEncodeError):
            await rt.bus.publish(query("s", "hi \ud800 there"))
        assert (await run_query(rt.bus, query("s", "hello")))[-1].type == "rx.memory.updated"


@pytest.mark.parametrize(("column", "value"), [
    ("data", b"\x00garbage"), ("data", b""), ("shape", "[1,2"), ("shape", "[4,64,127]"), ("dtype", "int8"),
])
async def test_a_corrupt_stm_row_is_a_store_error_and_other_streams_keep_serving(
        local_runtime, run_query, query, tmp_path, column, value):
    db = tmp_path / "stm.db"
    async with local_runtime(store=SQLiteSTMStore(db)) as rt:
        await run_query(rt.bus, query("victim", "remember me"))
    with sqlite3.connect(db) as conn:
        conn.execute(f"UPDATE stm SET {column} = ? WHERE memory_id = 'victim'", (value,))
    with SQLiteSTMStore(db) as store, pytest.raises(StoreError, match="victim"):
        store.load("victim")
    async with local_runtime(store=SQLiteSTMStore(db)) as rt:
        failed = await run_query(rt.bus, query("victim", "still there?"))
        assert failed[-1].type == "rx.error" and failed[-1].data.code == "store"
        ok = await run_query(rt.bus, query("neighbour", "hello"))
        assert ok[-1].type == "rx.memory.updated"


def test_zz_report_fuzz_counts():
    print(f"\nfuzzed inputs: {COUNTS}")

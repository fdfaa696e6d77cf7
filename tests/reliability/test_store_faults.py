"""Store faults, in process: a failed STM write leaves the version where it was, emits rx.error and can be
retried (same interaction id); a lost acknowledgement is never applied twice; a crash between the memory
update and the store write is recovered by replaying the logged update, bit for bit."""

from __future__ import annotations

import asyncio

import anyio
import pytest
import torch

from reactor_rt.store import MemorySTMStore, SQLiteSTMStore
from reactor_rt.store.testing import FaultyStore

pytestmark = pytest.mark.anyio


async def test_a_failed_stm_write_keeps_the_version_and_the_interaction_can_be_retried(local_runtime, run_query, query):
    inner = MemorySTMStore()
    store = FaultyStore(inner)
    async with local_runtime(store=store) as rt:
        first = await run_query(rt.bus, query("s", "one"))
        assert first[-1].type == "rx.memory.updated" and first[-1].data.version == 1
        before = inner.load("s").stm

        store.fail_next("save")  # the write is lost
        q = query("s", "two")
        failed = await run_query(rt.bus, q)
        assert failed[-1].type == "rx.error" and failed[-1].data.code == "store"
        assert "rx.memory.updated" not in {e.type for e in failed}
        stored = inner.load("s")
        assert stored.version == 1 and torch.equal(stored.stm, before)  # whole or absent: absent

        retried = await run_query(rt.bus, q)  # the same query (same interaction id) again
        assert retried[-1].type == "rx.memory.updated" and retried[-1].data.version == 2
        assert inner.applied_version("s", q.interaction or q.id) == 2
        # and the stream keeps serving
        after = await run_query(rt.bus, query("s", "three"))
        assert after[-1].data.version == 3


async def test_a_lost_acknowledgement_is_applied_once_and_serving_goes_on(local_runtime, run_query, query):
    inner = MemorySTMStore()
    store = FaultyStore(inner)
    async with local_runtime(store=store) as rt:
        await run_query(rt.bus, query("s", "one"))
        store.fail_next("save", after=True)  # written, but the caller sees an error
        q = query("s", "two")
        failed = await run_query(rt.bus, q)
        assert failed[-1].type == "rx.error" and failed[-1].data.code == "store"
        assert inner.load("s").version == 2  # the write landed, whole
        written = inner.load("s").stm

        retried = await run_query(rt.bus, q)
        assert retried[-1].type == "rx.memory.updated" and retried[-1].data.version == 2  # not applied twice
        assert torch.equal(inner.load("s").stm, written)
        nxt = await run_query(rt.bus, query("s", "three"))  # the cache did not hide version 2
        assert nxt[-1].type == "rx.memory.updated" and nxt[-1].data.version == 3


async def test_a_crash_between_update_and_write_is_replayed_bit_for_bit(local_runtime, run_query, query, tmp_path):
    turns = ["My name is Ada.", "I like tea.", "What do I like?"]
    # the reference: the same turns, never interrupted
    async with local_runtime() as ref:
        for text in turns:
            await run_query(ref.bus, query("s", text))
        expected_version, expected = ref.store.load("s").version, ref.store.load("s").stm

    db, log_path = tmp_path / "stm.db", str(tmp_path / "events.db")
    async with local_runtime(store=SQLiteSTMStore(db), log_path=log_path) as rt:
        for text in turns[:-1]:
            await run_query(rt.bus, query("s", text))
        # the crash: the update of the last turn starts (rx.memory.updating is logged), then the
        # process dies before the store writes it
        stuck = asyncio.Event()
        real_update = rt.engine.update

        async def never(*args, **kwargs):
            stuck.set()
            await asyncio.Event().wait()

        rt.engine.update = never
        last = query("s", turns[-1])
        sub = await rt.bus.subscribe(subject="s")
        await rt.bus.publish(last)
        with anyio.fail_after(60):
            await stuck.wait()
        await sub.aclose()
        rt.engine.update = real_update
        assert rt.store.load("s").version == 2  # the lost version never reached the store
    # restart over the same files: the log says what was cut short
    async with local_runtime(store=SQLiteSTMStore(db), log_path=log_path, recover=True) as rt:
        stored = rt.store.load("s")
        assert stored.version == expected_version == 3
        assert torch.equal(stored.stm, expected)  # bit for bit: the memory update is deterministic
        ended = [e for e in rt.log.read_types(["rx.memory.updated"]) if e.interaction == last.id]
        assert len(ended) == 1 and ended[0].data.version == 3
        nxt = await run_query(rt.bus, query("s", "and now?"))
        assert nxt[-1].type == "rx.memory.updated" and nxt[-1].data.version == 4


async def test_a_crash_after_the_write_is_announced_without_recomputing(local_runtime, run_query, query, tmp_path):
    """The store holds the update, its rx.memory.updated was never published: the restart announces the
    stored version and computes nothing (recomputing from the newer STM would apply the turn twice)."""
    db, log_path = tmp_path / "stm.db", str(tmp_path / "events.db")
    async with local_runtime(store=SQLiteSTMStore(db), log_path=log_path) as rt:
        await run_query(rt.bus, query("s", "My name is Ada."))
        written = asyncio.Event()
        real_update = rt.engine.update

        async def write_then_die(*args, **kwargs):
            await real_update(*args, **kwargs)  # the new version is stored...
            written.set()
            await asyncio.Event().wait()  # ...and the process dies before announcing it

        rt.engine.update = write_then_die
        last = query("s", "I like tea.")
        await rt.bus.publish(last)
        with anyio.fail_after(60):
            await written.wait()
        stored = rt.store.load("s")
        rt.engine.update = real_update
    assert stored.version == 2
    async with local_runtime(store=SQLiteSTMStore(db), log_path=log_path, recover=False) as rt:
        recomputed = []
        real_update = rt.engine.update

        async def spy(*args, **kwargs):
            recomputed.append(args)
            return await real_update(*args, **kwargs)

        rt.engine.update = spy
        report = await rt.conductor.recover()
        assert report["announced"] == [last.id] and recomputed == []
        ended = [e for e in rt.log.read_types(["rx.memory.updated"]) if e.interaction == last.id]
        assert len(ended) == 1 and ended[0].data.version == 2
        assert torch.equal(rt.store.load("s").stm, stored.stm)


async def test_an_unanswered_query_in_the_log_ends_with_an_error_after_a_restart(local_runtime, run_query, query, tmp_path):
    db, log_path = tmp_path / "stm.db", str(tmp_path / "events.db")
    async with local_runtime(store=SQLiteSTMStore(db), log_path=log_path) as rt:
        await run_query(rt.bus, query("s", "one"))
        rt.conductor.on_query = _swallow  # the conductor dies right after the query is logged
        lost = query("s", "two")
        await rt.bus.publish(lost)
    async with local_runtime(store=SQLiteSTMStore(db), log_path=log_path, recover=True) as rt:
        errors = [e for e in rt.log.read_types(["rx.error"]) if e.interaction == lost.id]
        assert len(errors) == 1 and errors[0].data.code == "unavailable"
        assert rt.store.load("s").version == 1
        retried = await run_query(rt.bus, lost)  # sending it again is safe
        assert retried[-1].type == "rx.memory.updated" and retried[-1].data.version == 2


async def _swallow(event: object) -> None:
    return None

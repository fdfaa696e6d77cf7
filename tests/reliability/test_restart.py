"""Restart under load: the runtime is stopped while every stream is busy, then started again over the
same store and log. Every stream resumes from its last persisted STM, every query the log accepted has
exactly one end in the log (answered, replayed, or an rx.error that says it was interrupted), and every
stream serves the next query."""

from __future__ import annotations

from collections import defaultdict

import anyio
import pytest
import torch

from reactor_rt import Reactor, ReactorError
from reactor_rt.store import SQLiteSTMStore

pytestmark = [pytest.mark.anyio, pytest.mark.ray, pytest.mark.slow]

NAMESPACE = "rel-restart"


async def test_stop_while_busy_then_restart(ray_local, model, tmp_path):
    db = tmp_path / "stm.db"
    store = f"sqlite:///{db}"
    ids = [f"r{i}" for i in range(8)]
    started: dict[str, list[str]] = defaultdict(list)
    outcome = {"answered": 0, "raised": 0}

    async def busy(rx: Reactor, sid: str) -> None:
        stream = await rx.stream(sid)
        try:
            for turn in range(100_000):  # until the runtime stops under it (a turn takes ~10 ms here)
                async for event in stream.ask(f"turn {turn}, keep going"):
                    if event.type == "rx.query":
                        started[sid].append(event.interaction)
                outcome["answered"] += 1
        except ReactorError:
            outcome["raised"] += 1  # the runtime stopped under it: a clear error, never a hang

    rx = await Reactor.start(model=model, store=store, namespace=NAMESPACE, max_new_tokens=8, learning=False)
    try:
        with anyio.fail_after(300):
            async with anyio.create_task_group() as tg:
                for sid in ids:
                    tg.start_soon(busy, rx, sid)
                await anyio.sleep(6)  # every stream is mid-conversation
                await rx.close()
    finally:
        await rx.close()
    assert outcome["raised"] == len(ids)  # each stream was cut off mid-interaction
    with SQLiteSTMStore(db) as s:
        before = {sid: s.load(sid).version for sid in ids}

    async with Reactor.start(model=model, store=store, namespace=NAMESPACE, max_new_tokens=8,
                             learning=False) as rx:
        with SQLiteSTMStore(db) as s:
            persisted = {sid: (s.load(sid).version, s.load(sid).stm) for sid in ids}
        for sid in ids:
            version, stm = persisted[sid]
            assert version >= before[sid]  # a replayed update may add the version a crash lost
            stream = await rx.stream(sid)
            assert stream.stm_version == version
            assert torch.equal(await stream.memory(), stm)
            log = await rx._bus.replay(sid, after=0)
            queries = [e.interaction for e in log if e.type == "rx.query"]
            ends = defaultdict(list)
            for e in log:
                if e.type in {"rx.memory.updated", "rx.error"}:
                    ends[e.interaction].append(e)
            assert all(len(ends[q]) == 1 for q in queries), sid  # the log says how each one ended
            updated = [e for e in log if e.type == "rx.memory.updated"]
            assert len(updated) == version and updated[-1].data.version == version
            assert isinstance(await stream.reply("after the restart"), str)
            assert stream.stm_version == version + 1 or (await stream.memory()) is not None
        print(f"\nrestart under load: {outcome}, recovered {await rx._conductor.start.remote()}")

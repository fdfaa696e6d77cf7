"""The hub both buses share: resuming ahead of the bus, numbers given back, type iterators, fan-out waits."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from reactor_rt.errors import EventDecodeError
from reactor_rt.events import EventLog, InProcessBus, Query, ResponseChunk
from reactor_rt.events.codec import encode
from reactor_rt.events.hub import Hub
from reactor_rt.events.ray_bus import EventBusCore

sys.path.insert(0, str(Path(__file__).parent))

from event_streams import take

pytestmark = pytest.mark.anyio


def query(subject: str, text: str = "hi") -> Query:
    return Query(subject=subject, source="test", data={"text": text})


def chunk(subject: str, text: str = "x") -> ResponseChunk:
    return ResponseChunk(subject=subject, source="test", data={"text": text})


# ---------------------------------------------------------------- resuming ahead of the bus


async def test_a_client_ahead_of_a_throwaway_bus_gets_the_next_events_whatever_their_number(anyio_backend):
    bus = InProcessBus()  # no log: a new bus numbers from 1 again
    s = "s"  # each test has a bus of its own
    await bus.publish(query(s))  # seq 1
    with capture_logs() as logs:
        sub = await bus.subscribe(subject=s, after=3)  # the client saw 1..3 on an earlier bus
    assert any(e["event"] == "event_bus.resumed_ahead" and e["after"] == 3 and e["last_seq"] == 1 for e in logs)
    await bus.publish_many([query(s, "two"), query(s, "three"), query(s, "four")])
    got = await take(sub, 3)
    assert [(e.seq, e.data.text) for e in got] == [(2, "two"), (3, "three"), (4, "four")]
    await bus.close()


async def test_after_a_hard_crash_reused_chunk_numbers_still_reach_a_resumed_client(anyio_backend, tmp_path):
    path = tmp_path / "log.db"
    s = "s"  # each test has a bus of its own
    first = InProcessBus(EventLog(str(path)))
    await first.publish(query(s))  # 1, logged
    await first.publish_many([chunk(s), chunk(s)])  # 2 and 3: chunks, their counter written later
    # a hard crash: the first bus never closes, so its chunks' numbers were never written
    bus = InProcessBus(EventLog(str(path)))  # restarted: the bus only knows seq 1
    assert await bus.last_seq(s) == 1
    sub = await bus.subscribe(subject=s, after=3)
    await bus.publish_many([query(s, "a"), query(s, "b")])  # numbered 2 and 3 again
    assert [(e.seq, e.data.text) for e in await take(sub, 2)] == [(2, "a"), (3, "b")]
    await bus.close()
    await first.close()


async def test_resuming_behind_the_bus_still_replays_without_duplicates(anyio_backend):
    bus = InProcessBus(EventLog(":memory:"))
    s = "s"  # each test has a bus of its own
    await bus.publish_many([query(s) for _ in range(3)])
    sub = await bus.subscribe(subject=s, after=1)
    await bus.publish(query(s))
    assert [e.seq for e in await take(sub, 3)] == [2, 3, 4]
    await bus.close()


# ---------------------------------------------------------------- a payload that cannot be stamped


async def test_a_frame_that_cannot_be_stamped_gives_its_numbers_back(anyio_backend):
    core = EventBusCore(":memory:")
    s = "s"  # each test has a bus of its own
    good = encode(query(s))
    with pytest.raises(EventDecodeError):  # not encode's layout: stamping decodes it, and it is junk
        await core.publish_many([(s, "rx.query", good), (s, "rx.query", good), (s, "rx.query", b"\x80junk")])
    assert core.last_seq(s) == 0
    assert await core.publish_many([(s, "rx.query", good)]) == [1]
    await core.close()


async def test_a_failing_stamp_after_earlier_subjects_leaves_no_gap_on_any_of_them(anyio_backend):
    def stamp(payload: str, seq: int) -> str:
        if payload == "bad":
            raise ValueError("cannot stamp")
        return f"{payload}#{seq}"

    hub: Hub[str] = Hub(log=None, stamp=stamp, to_frame=str.encode, from_frames=list)
    await hub.publish([("a", "t", "x")])
    with pytest.raises(ValueError):
        await hub.publish([("a", "t", "y"), ("b", "t", "z"), ("a", "t", "bad")])
    assert (hub.last_seq("a"), hub.last_seq("b")) == (1, 0)
    assert await hub.publish([("a", "t", "y"), ("b", "t", "z")]) == ["y#2", "z#1"]


# ---------------------------------------------------------------- types given as an iterator


async def test_types_given_as_a_generator_filter_both_the_replay_and_the_live_events(anyio_backend):
    bus = InProcessBus(EventLog(":memory:"))
    s = "s"  # each test has a bus of its own
    await bus.publish_many([query(s), chunk(s), query(s)])
    sub = await bus.subscribe(types=(t for t in ["rx.query"]), subject=s, after=0)
    await bus.publish_many([chunk(s), query(s)])
    assert [(e.type, e.seq) for e in await take(sub, 3)] == [("rx.query", 1), ("rx.query", 3), ("rx.query", 5)]
    await bus.close()


async def test_types_given_as_an_iterator_on_the_bus_core(anyio_backend):
    core = EventBusCore(":memory:")
    s = "s"  # each test has a bus of its own
    await core.publish_many([(s, "rx.query", encode(query(s))) for _ in range(2)])
    sid = await core.subscribe(iter(["rx.query"]), s, 0)
    with anyio.fail_after(5):
        frames, _, _ = await core.open_stream(sid).__anext__()
    assert len(frames) == 2
    await core.close()


# ---------------------------------------------------------------- stalled subscribers


async def test_stalled_subscribers_share_one_overflow_wait_per_publish(anyio_backend):
    bus = InProcessBus(buffer=1, overflow_wait=0.2)
    s = "s"  # each test has a bus of its own
    stalled = [await bus.subscribe(subject=s) for _ in range(5)]  # nobody reads them
    start = time.monotonic()
    await bus.publish_many([query(s), query(s)])  # one more than each buffer holds
    elapsed = time.monotonic() - start
    assert elapsed < 0.6, f"publish held for {elapsed:.2f} s: 5 waits in a row would be 1.0 s"
    assert all(sub.overflowed for sub in stalled)
    await bus.close()


async def test_a_subscriber_that_made_room_during_the_shared_wait_keeps_its_events(anyio_backend):
    bus = InProcessBus(buffer=1, overflow_wait=0.3)
    s = "s"  # each test has a bus of its own
    stalled = await bus.subscribe(subject=s)  # waited on first, until the deadline
    reader = await bus.subscribe(subject=s)  # full too, but read while the publish waits on `stalled`
    got: list[int] = []

    async def read_late() -> None:
        await anyio.sleep(0.1)
        got.extend(e.seq for e in await take(reader, 2))

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_late)
        await bus.publish_many([query(s), query(s)])
    assert got == [1, 2]
    assert stalled.overflowed and not reader.overflowed
    await bus.close()

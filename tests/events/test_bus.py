"""The bus contract: one test class run against InProcessBus and the Ray bus (DESIGN.md §4-5)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from reactor_rt import BusClosedError, EventEncodeError, SubscriberOverflowError
from reactor_rt.events import (
    EventBus,
    EventLog,
    InProcessBus,
    MemoryUpdated,
    Query,
    ResponseChunk,
    ResponseDone,
    ThoughtQuery,
)

sys.path.insert(0, str(Path(__file__).parent))

from event_streams import take

pytestmark = pytest.mark.anyio

_subjects = itertools.count()


def fresh_subject() -> str:
    return f"s{next(_subjects)}"


def query(subject: str, text: str = "hi") -> Query:
    return Query(subject=subject, source="test", data={"text": text})


def chunk(subject: str, text: str = "x") -> ResponseChunk:
    return ResponseChunk(subject=subject, source="test", data={"text": text})


def done(subject: str, text: str = "hello") -> ResponseDone:
    return ResponseDone(subject=subject, source="test", data={"text": text, "tokens": 1, "stm_version": 0})


async def drain(sub: Any, timeout: float = 10.0) -> list[Any]:
    got = []
    with anyio.fail_after(timeout):
        async for ev in sub:
            got.append(ev)
    return got


BusFactory = Callable[..., Any]


@pytest.fixture(scope="session")
def shared_ray_bus(ray_local: Any) -> Any:
    """One Ray bus actor for the contract tests that need no special options: an actor start costs about a
    second, and these tests keep to their own subjects."""
    from reactor_rt.events.ray_bus import RayBus

    bus = RayBus.create(name=None, log_path=":memory:", max_batch=8)
    bus.kind = "ray"
    yield bus
    bus.kill()


# "ray": a client on the actor's node (local link); "ray-remote": the same over Ray's calls, as from another node
@pytest.fixture(params=["inprocess", "core", pytest.param("ray", marks=pytest.mark.ray),
                        pytest.param("ray-remote", marks=pytest.mark.ray)])
async def make_bus(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[BusFactory]:
    """`await make_bus(log_path=None, **options)`: a fresh bus of the parametrised kind.

    log_path None: an in-memory log. The Ray client is built with small batches, so that a test can
    fill a subscriber's buffer without publishing thousands of events.
    """
    kind = request.param
    made: list[Any] = []
    if kind.startswith("ray"):
        request.getfixturevalue("ray_local")
        from reactor_rt.events.ray_bus import RayBus

    async def make(log_path: Path | str | None = None, **options: Any) -> EventBus:
        path = str(log_path) if log_path is not None else ":memory:"
        if kind == "inprocess":
            bus: Any = InProcessBus(EventLog(path), **options)
        elif kind == "core":  # the bus as hosted inside the conductor actor
            from reactor_rt.events.core_bus import CoreBus
            from reactor_rt.events.ray_bus import EventBusCore

            bus = CoreBus(EventBusCore(path, **options))
        else:
            bus = RayBus.create(name=None, log_path=path, max_batch=8, local_link=kind == "ray", **options)
            await bus.wait_ready()
        bus.kind = kind
        made.append(bus)
        return bus

    make.kind = kind  # type: ignore[attr-defined]
    yield make
    for bus in made:
        await bus.close()
        if kind.startswith("ray"):
            bus.kill()


@pytest.fixture
async def bus(make_bus: BusFactory, request: pytest.FixtureRequest) -> EventBus:
    """A bus with default options: fresh in-process, the shared actor for Ray."""
    if make_bus.kind.startswith("ray"):  # type: ignore[attr-defined]
        shared = request.getfixturevalue("shared_ray_bus")
        await shared.wait_ready()
        if make_bus.kind == "ray-remote":  # type: ignore[attr-defined]
            from reactor_rt.events.ray_bus import RayBus

            remote = RayBus(shared.actor, max_batch=8, local_link=False)
            remote.kind = "ray-remote"
            return remote
        return shared
    return await make_bus()


class TestBusContract:
    """What the runtime relies on from any EventBus."""

    async def test_is_an_event_bus(self, bus):
        assert isinstance(bus, EventBus)

    async def test_publish_stamps_gap_free_seq_per_subject(self, bus):
        a, b = fresh_subject(), fresh_subject()
        out = [await bus.publish(query(a)), await bus.publish(chunk(a)), await bus.publish(query(b))]
        out += await bus.publish_many([chunk(a), done(a), chunk(b)])
        assert [(e.subject, e.seq) for e in out] == [(a, 1), (a, 2), (b, 1), (a, 3), (a, 4), (b, 2)]
        assert await bus.last_seq(a) == 4 and await bus.last_seq(b) == 2
        assert await bus.last_seq(fresh_subject()) == 0
        # the stamped copy keeps everything else
        ev = query(a, "keep")
        stamped = await bus.publish(ev)
        assert stamped.id == ev.id and stamped.data == ev.data and ev.seq == 0

    async def test_subscription_is_registered_when_subscribe_returns(self, bus):
        s = fresh_subject()
        sub = await bus.subscribe(subject=s)
        await bus.publish(query(s))
        [got] = await take(sub, 1)
        assert got.type == "rx.query" and got.seq == 1
        await sub.aclose()

    async def test_filters_by_exact_type_prefix_and_subject(self, bus):
        s, other = fresh_subject(), fresh_subject()
        exact = await bus.subscribe(types={"rx.response.done"}, subject=s)
        prefix = await bus.subscribe(types=["rx.response."], subject=s)
        memory = await bus.subscribe(types=["rx.memory."])
        everything = await bus.subscribe(subject=s)
        await bus.publish_many([query(s), chunk(s), done(s), chunk(other)])
        await bus.publish(MemoryUpdated(subject=other, source="t", data={"memory": "m", "version": 1}))
        assert [e.type for e in await take(exact, 1)] == ["rx.response.done"]
        assert [e.type for e in await take(prefix, 2)] == ["rx.response.chunk", "rx.response.done"]
        assert [(e.type, e.subject) for e in await take(memory, 1)] == [("rx.memory.updated", other)]
        assert [e.seq for e in await take(everything, 3)] == [1, 2, 3]
        for sub in (exact, prefix, memory, everything):
            await sub.aclose()

    async def test_a_watching_subscription_follows_the_subjects_it_is_given(self, bus):
        a, b, c = fresh_subject(), fresh_subject(), fresh_subject()
        sub = await bus.subscribe(types=["rx.response."], watch=True)
        await bus.publish(done(a, "before watching"))
        await sub.watch([a, b])
        await bus.publish_many([done(a, "a1"), done(c, "never watched"), query(b), chunk(b, "b1")])
        await sub.watch([a], add=False)
        await bus.publish_many([done(a, "after unwatching"), done(b, "b2")])
        got = await take(sub, 3)
        assert [(e.subject, e.data.text) for e in got] == [(a, "a1"), (b, "b1"), (b, "b2")]
        await sub.aclose()
        with pytest.raises(ValueError):
            await bus.subscribe(subject=a, watch=True)

    async def test_limit_ends_the_subscription(self, bus):
        s = fresh_subject()
        sub = await bus.subscribe(subject=s, limit=3)
        await bus.publish_many([query(s) for _ in range(5)])
        assert [e.seq for e in await drain(sub)] == [1, 2, 3]

    async def test_async_context_manager_unsubscribes(self, bus):
        s = fresh_subject()
        async with await bus.subscribe(subject=s) as sub:
            await bus.publish(query(s))
            assert len(await take(sub, 1)) == 1
        await bus.publish(query(s))  # nobody listening any more: must not block or fail
        assert await drain(sub) == []

    async def test_replay_and_durable_types(self, bus):
        s = fresh_subject()
        await bus.publish_many([query(s), chunk(s), chunk(s), done(s)])
        logged = await bus.replay(s)
        assert [(e.type, e.seq) for e in logged] == [("rx.query", 1), ("rx.response.done", 4)]
        assert [e.seq for e in await bus.replay(s, after=1)] == [4]
        assert [e.seq for e in await bus.replay(s, types=["rx.query"])] == [1]
        assert [e.seq for e in await bus.replay(s, limit=1)] == [1]

    async def test_durable_event_is_logged_before_delivery(self, bus):
        s = fresh_subject()
        sub = await bus.subscribe(subject=s)
        await bus.publish(done(s))
        [got] = await take(sub, 1)
        assert got in await bus.replay(s)
        await sub.aclose()

    async def test_resume_after_seq_no_gap_no_duplicate(self, bus):
        s = fresh_subject()
        first = await bus.subscribe(subject=s)
        await bus.publish_many([query(s, str(i)) for i in range(10)])
        seen = await take(first, 4)
        await first.aclose()
        last = seen[-1].seq

        async def keep_publishing() -> None:
            for i in range(20):
                await bus.publish(ThoughtQuery(subject=s, source="t", data={"text": str(i), "step": i}))
                await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_publishing)
            await anyio.sleep(0)
            resumed = await bus.subscribe(subject=s, after=last)
        got = await take(resumed, 30 - last)
        assert [e.seq for e in got] == list(range(last + 1, 31))
        await resumed.aclose()

    async def test_resume_skips_chunk_numbers_not_logged(self, bus):
        s = fresh_subject()
        await bus.publish_many([query(s), chunk(s), chunk(s), done(s)])
        sub = await bus.subscribe(subject=s, after=1)
        await bus.publish(chunk(s))  # live chunks still arrive
        assert [(e.type, e.seq) for e in await take(sub, 2)] == [("rx.response.done", 4), ("rx.response.chunk", 5)]
        await sub.aclose()

    async def test_resume_with_limit_counts_replayed_events(self, bus):
        s = fresh_subject()
        await bus.publish_many([query(s) for _ in range(5)])
        sub = await bus.subscribe(subject=s, after=1, limit=2)
        assert [e.seq for e in await drain(sub)] == [2, 3]
        sub = await bus.subscribe(subject=s, after=4, limit=2)
        await bus.publish(query(s))
        assert [e.seq for e in await drain(sub)] == [5, 6]

    async def test_after_needs_a_subject(self, bus):
        with pytest.raises(ValueError):
            await bus.subscribe(after=3)

    async def test_ordering_under_concurrent_publishers(self, bus):
        s = fresh_subject()
        n_pub, per_pub = 6, 25
        sub = await bus.subscribe(subject=s)

        async def publisher(p: int) -> None:
            for i in range(per_pub):
                if i % 5 == 0:
                    await bus.publish_many([query(s, f"{p}:{i}"), chunk(s, f"{p}:{i}x")])
                else:
                    await bus.publish(query(s, f"{p}:{i}"))

        async with anyio.create_task_group() as tg:
            for p in range(n_pub):
                tg.start_soon(publisher, p)
        total = n_pub * (per_pub + per_pub // 5)
        got = await take(sub, total)
        assert [e.seq for e in got] == list(range(1, total + 1))  # gap-free, delivered in seq order
        for p in range(n_pub):  # each publisher's own events keep their order
            mine = [e.data.text for e in got if e.type == "rx.query" and e.data.text.startswith(f"{p}:")]
            assert mine == [f"{p}:{i}" for i in range(per_pub)]
        assert await bus.last_seq(s) == total
        await sub.aclose()

    async def test_seq_continues_after_reopening_the_log(self, make_bus, tmp_path):
        path = tmp_path / "events.db"
        s = fresh_subject()
        first = await make_bus(path)
        await first.publish_many([query(s), done(s), chunk(s)])  # the last number is a chunk's
        await first.close()
        second = await make_bus(path)
        assert await second.last_seq(s) == 3
        assert (await second.publish(query(s))).seq == 4
        assert [e.seq for e in await second.replay(s)] == [1, 2, 4]

    async def test_slow_subscriber_is_disconnected_with_a_visible_error(self, make_bus):
        bus = await make_bus(buffer=16, overflow="disconnect", overflow_wait=0.05)
        s = fresh_subject()
        slow = await bus.subscribe(subject=s)
        fast = await bus.subscribe(subject=s, buffer=4096)
        with anyio.fail_after(10):  # publishers are never blocked for long
            for _ in range(10):
                await bus.publish_many([query(s) for _ in range(50)])
        got = []
        with pytest.raises(SubscriberOverflowError), anyio.fail_after(10):
            async for ev in slow:
                got.append(ev.seq)
        assert 16 <= len(got) < 500 and got == list(range(1, len(got) + 1))  # a gap-free prefix
        assert [e.seq for e in await take(fast, 500)] == list(range(1, 501))  # others unaffected
        # the disconnected subscriber can resume from the last seq it saw
        resumed = await bus.subscribe(subject=s, after=got[-1])
        assert [e.seq for e in await take(resumed, 500 - got[-1])] == list(range(got[-1] + 1, 501))
        await fast.aclose()
        await resumed.aclose()

    async def test_a_burst_larger_than_the_buffer_reaches_an_active_subscriber(self, make_bus):
        bus = await make_bus(buffer=8, overflow="disconnect", overflow_wait=5.0)
        s = fresh_subject()
        sub = await bus.subscribe(subject=s)
        got: list[int] = []

        async def consume() -> None:
            got.extend([e.seq for e in await take(sub, 300, timeout=20)])

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            for _ in range(3):  # the publisher waits for room instead of dropping the subscriber
                await bus.publish_many([chunk(s) for _ in range(100)])
        assert got == list(range(1, 301))
        await sub.aclose()

    async def test_drop_chunks_policy_drops_chunks_first(self, make_bus):
        bus = await make_bus(buffer=16, overflow="drop-chunks", overflow_wait=0.05)
        s = fresh_subject()
        sub = await bus.subscribe(subject=s)
        with anyio.fail_after(10):
            await bus.publish(query(s))
            for _ in range(20):
                await bus.publish_many([chunk(s) for _ in range(10)])
            await bus.publish(done(s))
        got = []
        with anyio.fail_after(10):
            async for ev in sub:
                got.append(ev)
                if ev.type == "rx.response.done":
                    break
        chunks = [e for e in got if e.type == "rx.response.chunk"]
        assert got[0].type == "rx.query" and got[-1].type == "rx.response.done"  # nothing else lost
        assert 0 < len(chunks) < 200  # chunks were dropped, not the subscriber
        assert [e.seq for e in got] == sorted(e.seq for e in got)
        if bus.kind == "inprocess":
            assert sub.dropped == 200 - len(chunks)
        # when non-chunk events alone overflow the buffer, the subscriber is disconnected
        with anyio.fail_after(10):
            for _ in range(10):
                await bus.publish_many([query(s) for _ in range(50)])
        with pytest.raises(SubscriberOverflowError), anyio.fail_after(10):
            async for _ev in sub:
                pass

    async def test_policy_is_configurable_per_subscription(self, make_bus):
        bus = await make_bus(buffer=16, overflow="disconnect", overflow_wait=0.05)
        s = fresh_subject()
        sub = await bus.subscribe(subject=s, overflow="drop-chunks")
        with anyio.fail_after(10):
            await bus.publish_many([chunk(s) for _ in range(300)])
            await bus.publish(done(s))
        got = []
        with anyio.fail_after(10):
            async for ev in sub:
                got.append(ev)
                if ev.type == "rx.response.done":
                    break
        assert got[-1].type == "rx.response.done" and len(got) < 301
        await sub.aclose()

    async def test_close_ends_subscriptions_and_refuses_publishes(self, make_bus):
        bus = await make_bus()
        s = fresh_subject()
        sub = await bus.subscribe(subject=s)
        await bus.publish(query(s))
        await bus.close()
        assert [e.seq for e in await drain(sub)] == [1]  # buffered events still arrive, then the end
        with pytest.raises(BusClosedError):
            await bus.publish(query(s))
        with pytest.raises(BusClosedError):
            await bus.subscribe(subject=s)
        await bus.close()  # idempotent

    async def test_a_failed_publish_leaves_no_gap(self, bus):
        s = fresh_subject()
        await bus.publish(query(s))
        too_big = Query(subject=s, source="test", data={"text": "x" * (5 * 1024 * 1024)})  # > 4 MiB frame
        with pytest.raises(EventEncodeError):
            await bus.publish_many([query(s), too_big])
        assert await bus.last_seq(s) == 1
        assert (await bus.publish(query(s))).seq == 2

    async def test_rejects_non_events(self, bus):
        with pytest.raises(TypeError):
            await bus.publish({"type": "rx.query"})


async def test_a_cancelled_publisher_still_delivers_what_it_stamped(anyio_backend):
    bus = InProcessBus(buffer=2, overflow_wait=2.0)
    s = fresh_subject()
    sub = await bus.subscribe(subject=s)
    got: list[int] = []

    async def slow_consumer() -> None:
        await anyio.sleep(0.2)  # starts after the publisher was cancelled
        got.extend(e.seq for e in await take(sub, 5))

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_consumer)
        with anyio.move_on_after(0.05) as scope:  # cancelled while waiting for the full subscriber
            await bus.publish_many([query(s) for _ in range(5)])
    assert scope.cancel_called  # the deadline hit while the publish waited
    assert got == [1, 2, 3, 4, 5]  # no gap for the live subscriber
    await bus.close()


async def test_each_subscriber_gets_one_batch_per_publish(anyio_backend):
    bus = InProcessBus()
    s = fresh_subject()
    sub = await bus.subscribe(types=["rx.query"], subject=s)
    await bus.publish_many([query(s), chunk(s), query(s), query(fresh_subject())])
    assert sub._receive.statistics().current_buffer_used == 1  # one send for the publish
    assert [e.seq for e in await take(sub, 2)] == [1, 3]
    await bus.close()


@pytest.mark.parametrize("logged", [True, False], ids=["log", "no-log"])
async def test_the_conductors_bus_gives_each_subjects_last_query_seq(tmp_path, logged):
    from reactor_rt.events.core_bus import CoreBus
    from reactor_rt.events.ray_bus import EventBusCore
    from reactor_rt.events.testing import example_event

    bus = CoreBus(EventBusCore(str(tmp_path / "events.db") if logged else None))
    try:
        for subject in ("a", "b", "a"):
            await bus.publish(Query(subject=subject, source="test", data={"text": "hi"}))
        await bus.publish(example_event("rx.response.done", subject="a"))
        assert await bus.last_seqs("rx.query") == ({"a": 2, "b": 1} if logged else {})
        assert await bus.last_seq_of("a", "rx.query") == (2 if logged else 0)
    finally:
        await bus.close()

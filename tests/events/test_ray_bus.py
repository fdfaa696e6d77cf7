"""Ray bus specifics: the plain core without Ray, clients inside other actors, faults as ReactorErrors."""

from __future__ import annotations

import contextlib

import anyio
import pytest

from reactor_rt import BusClosedError, EventDecodeError, RuntimeUnavailableError
from reactor_rt.events import Query
from reactor_rt.events.codec import decode, encode
from reactor_rt.events.testing import example_event

pytestmark = pytest.mark.anyio


def record(type_: str, subject: str = "a") -> tuple[str, str, bytes]:
    return (subject, type_, encode(example_event(type_, subject=subject)))


async def collect(core, sid: str, max_batch: int = 3) -> list[tuple[list[bytes], int, str | None]]:
    batches = []
    with anyio.fail_after(5):
        async for item in core.stream(sid, max_batch):
            batches.append(item)
    return batches


async def test_core_without_ray_batches_replay_and_live_frames():
    from reactor_rt.events.ray_bus import EventBusCore

    core = EventBusCore(":memory:")
    assert await core.publish_many([record("rx.query"), record("rx.response.chunk"), record("rx.query")]) == [1, 2, 3]
    sid = await core.subscribe(subject="a", after=0, limit=5)
    assert await core.publish_many([record("rx.query"), record("rx.query", "b"), record("rx.response.done")]) == [4, 1, 5]
    await core.publish_many([record("rx.query")])
    batches = await collect(core, sid)
    frames = [f for fs, _, _ in batches for f in fs]
    assert [decode(f).seq for f in frames] == [1, 3, 4, 5, 6]  # replay (no chunk: not logged), then live
    assert all(len(fs) <= 3 for fs, _, _ in batches) and batches[-1][2] is None
    assert [decode(f).seq for f in core.replay("a", after=3)] == [4, 5, 6]
    assert core.last_seq("a") == 6 and core.stats()["subscribers"] == 0
    await core.close()


async def test_prune_log_applies_the_retention_bounds_now():
    from reactor_rt.events.ray_bus import EventBusCore

    bounded = EventBusCore(":memory:", max_rows=3)
    await bounded.publish_many([record("rx.query") for _ in range(6)])  # fewer than prune_every: all kept
    assert bounded.hub.log.count() == 6
    assert bounded.prune_log() == 3 and bounded.hub.log.count() == 3
    assert [decode(f).seq for f in bounded.replay("a", after=0)] == [4, 5, 6]  # the oldest went first
    assert await bounded.publish_many([record("rx.query")]) == [7]  # numbering goes on
    unbounded, without_log = EventBusCore(":memory:"), EventBusCore(None)
    await unbounded.publish_many([record("rx.query") for _ in range(3)])
    assert unbounded.prune_log() == 0 and without_log.prune_log() == 0 and unbounded.hub.log.count() == 3
    for core in (bounded, unbounded, without_log):
        await core.close()


async def test_core_overflow_ends_the_stream_with_a_marker():
    from reactor_rt.events.ray_bus import EventBusCore

    core = EventBusCore(None, buffer=4, overflow_wait=0.01)
    sid = await core.subscribe(subject="a")
    await core.publish_many([record("rx.query") for _ in range(10)])
    batches = await collect(core, sid, max_batch=100)
    assert [len(fs) for fs, _, _ in batches] == [4, 0] and batches[-1][2] == "overflow"
    with pytest.raises(BusClosedError):
        await core.close() or await core.publish_many([record("rx.query")])


def test_shared_decoder_decodes_each_frame_once_and_stays_bounded():
    from reactor_rt.events.ray_bus import SharedDecoder

    shared = SharedDecoder(size=4)
    frames = [encode(example_event("rx.query", seq=i + 1)) for i in range(6)]
    first = shared(frames[0])
    assert shared(bytes(bytearray(frames[0]))) is first  # an equal frame from another subscriber
    for f in frames:
        assert shared(f) == decode(f)
    assert len(shared._cache) == 4


@pytest.mark.ray
async def test_clients_inside_other_actors_and_concurrent_processes(ray_local):
    import ray

    from reactor_rt.events.ray_bus import RayBus

    bus = RayBus.create(name="bus-test-actors", namespace="events-tests", log_path=":memory:")
    await bus.wait_ready()

    @ray.remote(num_cpus=0)
    class Agent:
        """Another actor: receives the client pickled, publishes and subscribes with it."""

        def __init__(self, bus: RayBus) -> None:
            self.bus = bus

        async def publish(self, name: str, n: int) -> list[int]:
            from reactor_rt.events.testing import example_event

            seqs = []
            for i in range(n):
                ev = await self.bus.publish(example_event("rx.query", subject="shared", data={"text": f"{name}:{i}"}))
                seqs.append(ev.seq)
            return seqs

        async def listen(self, n: int) -> list[int]:
            sub = await self.bus.subscribe(types=["rx.query"], subject="shared", limit=n)
            return [ev.seq async for ev in sub]

    agents = [Agent.remote(bus) for _ in range(2)]
    listener = Agent.remote(RayBus.connect("bus-test-actors", "events-tests"))
    driver_sub = await bus.subscribe(subject="shared")
    listen_ref = listener.listen.remote(40)
    with anyio.fail_after(30):  # the listener is subscribed once the bus counts two subscribers
        while (await bus.actor.stats.remote())["subscribers"] < 2:
            await anyio.sleep(0.05)
        seqs = [await ref for ref in [a.publish.remote(f"p{i}", 20) for i, a in enumerate(agents)]]
    for mine in seqs:
        assert mine == sorted(mine)  # each publisher's events in its own order
    assert sorted(s for mine in seqs for s in mine) == list(range(1, 41))  # gap-free across processes
    got = []
    with anyio.fail_after(20):
        async for ev in driver_sub:
            got.append(ev)
            if len(got) == 40:
                break
    assert [e.seq for e in got] == list(range(1, 41))
    for p in range(2):
        texts = [e.data.text for e in got if e.data.text.startswith(f"p{p}:")]
        assert texts == [f"p{p}:{i}" for i in range(20)]
    with anyio.fail_after(20):
        assert await listen_ref == list(range(1, 41))
    await driver_sub.aclose()
    bus.kill()


@pytest.mark.ray
async def test_connect_to_a_missing_bus(ray_local):
    from reactor_rt.events.ray_bus import RayBus

    with pytest.raises(RuntimeUnavailableError):
        RayBus.connect("no-such-bus", "events-tests")


@pytest.mark.ray
async def test_a_dead_actor_is_a_runtime_unavailable_error(ray_local):
    from reactor_rt.events.ray_bus import RayBus

    bus = RayBus.create(name=None, max_restarts=0)
    sub = await bus.subscribe(subject="a")
    await bus.publish(example_event("rx.query", subject="a"))
    bus.kill()
    with pytest.raises(RuntimeUnavailableError), anyio.fail_after(30):
        while True:
            await bus.publish(example_event("rx.query", subject="a"))
            await anyio.sleep(0.05)
    with pytest.raises(RuntimeUnavailableError), anyio.fail_after(30):
        async for _ in sub:
            pass
    await sub.aclose()  # harmless after the actor is gone


@pytest.mark.ray
async def test_a_restarted_actor_continues_the_numbering_from_its_log(ray_local, tmp_path):
    import ray

    from reactor_rt.events.ray_bus import RayBus, _call

    bus = RayBus.create(name=None, log_path=str(tmp_path / "events.db"), max_restarts=1)
    sub = await bus.subscribe(subject="a")
    await bus.publish_many([example_event("rx.query", subject="a"), example_event("rx.response.done", subject="a")])
    old_pid = (await bus.actor.stats.remote())["pid"]
    ray.kill(bus.actor, no_restart=False)  # a crash: Ray restarts the actor, which reopens the log

    async def retrying(call):  # calls during the restart fail with a clear error; retry them
        with anyio.fail_after(60):
            while True:
                try:
                    return await call()
                except RuntimeUnavailableError:
                    await anyio.sleep(0.1)

    async def new_pid() -> int:
        pid = (await _call(bus.actor.stats.remote()))["pid"]
        if pid == old_pid:
            raise RuntimeUnavailableError("not restarted yet")
        return pid

    await retrying(new_pid)  # the restarted incarnation answers
    ev = await retrying(lambda: bus.publish(example_event("rx.query", subject="a")))
    assert ev.seq == 3
    assert [e.seq for e in await retrying(lambda: bus.replay("a"))] == [1, 2, 3]
    assert await retrying(lambda: bus.last_seq("a")) == 3
    with pytest.raises(RuntimeUnavailableError), anyio.fail_after(30):  # the old stream broke visibly
        async for _ in sub:
            pass
    bus.kill()


@pytest.mark.ray
async def test_an_abandoned_subscription_is_released(ray_local):
    import gc

    from reactor_rt.events.ray_bus import RayBus

    bus = RayBus.create(name=None)
    sub = await bus.subscribe(subject="a")
    assert (await bus.actor.stats.remote())["subscribers"] == 1
    del sub
    gc.collect()
    with anyio.fail_after(10):
        while (await bus.actor.stats.remote())["subscribers"]:
            await anyio.sleep(0.05)
    bus.kill()


# ---------------------------------------------------------------- frames from clients are checked

_NOT_AN_EVENT = b"\x81\xa3seq\xcf" + bytes(8)  # the seq slot of encode's layout, and nothing else


def _with_second_seq(frame: bytes, seq: int) -> bytes:
    """`frame` with another "seq" key at the end: msgpack readers keep the last one."""
    import msgpack

    return bytes((frame[0] + 1,)) + frame[1:] + b"\xa3seq" + msgpack.packb(seq)


async def test_a_client_frame_that_is_not_an_event_is_refused_and_the_log_stays_readable():
    from reactor_rt.events.ray_bus import EventBusCore

    core = EventBusCore(":memory:")
    with pytest.raises(EventDecodeError):
        await core.publish_untrusted([record("rx.query", "s"), ("s", "rx.query", _NOT_AN_EVENT)])
    assert core.last_seq("s") == 0 and core.replay("s") == []  # nothing of the batch went out
    assert await core.publish_untrusted([record("rx.query", "s")]) == [1]
    assert [decode(f).seq for f in core.replay("s")] == [1]
    await core.close()


async def test_a_client_record_must_name_its_frames_subject_and_type():
    from reactor_rt.events.ray_bus import EventBusCore

    core = EventBusCore(":memory:")
    _, _, frame = record("rx.query", "s")
    for subject, type_ in [("other", "rx.query"), ("s", "rx.response.done"), ("s", "rx.response.chunk")]:
        with pytest.raises(EventDecodeError, match="the record says"):
            await core.publish_untrusted([(subject, type_, frame)])
    with pytest.raises(EventDecodeError):
        await core.publish_untrusted([("s", "rx.query")])  # not a (subject, type, frame) record
    assert (core.last_seq("s"), core.last_seq("other")) == (0, 0)
    await core.close()


async def test_a_client_frame_over_the_size_limit_is_refused():
    from reactor_rt.events.codec import CodecLimits
    from reactor_rt.events.ray_bus import EventBusCore

    core = EventBusCore(":memory:", limits=CodecLimits(max_frame_bytes=1024))
    big = ("s", "rx.query", encode(Query(subject="s", source="t", data={"text": "x" * 2000})))
    with pytest.raises(EventDecodeError, match="limit"):
        await core.publish_untrusted([big])
    assert await core.publish_untrusted([record("rx.query", "s")]) == [1]
    await core.close()


async def test_a_client_frame_that_repeats_its_seq_key_is_logged_with_the_seq_the_bus_gave():
    from reactor_rt.events.ray_bus import EventBusCore

    core = EventBusCore(":memory:")
    _, _, frame = record("rx.query", "s")
    assert decode(_with_second_seq(frame, 77)).seq == 77  # the last key wins when read
    assert await core.publish_untrusted([("s", "rx.query", _with_second_seq(frame, 77))]) == [1]
    assert [decode(f).seq for f in core.replay("s")] == [1]
    await core.close()


async def test_the_methods_clients_call_check_their_frames():
    from reactor_rt.events.local_link import LinkClient
    from reactor_rt.events.ray_bus import BusHost, EventBusCore, bus_link_server

    class Host(BusHost):  # the remote methods, as the bus actor and the conductor inherit them
        def __init__(self) -> None:
            self.bus_core = EventBusCore(":memory:")
            self.link = bus_link_server(self.bus_core)

    host = Host()
    with pytest.raises(EventDecodeError):
        await host.publish_many([("s", "rx.query", _NOT_AN_EVENT)])
    client = await LinkClient.connect(await host.link.start())
    try:
        with pytest.raises(EventDecodeError):
            await client.call("publish_many", [("s", "rx.query", _NOT_AN_EVENT)])
        with pytest.raises(EventDecodeError):
            await client.call("publish_many", [("s", "rx.response.done", record("rx.query", "s")[2])])
        assert await client.call("publish_many", [record("rx.query", "s")]) == [1]
    finally:
        client.close()
        await host.link.close()
    assert [decode(f).seq for f in host.bus_core.replay("s")] == [1]
    await host.bus_core.close()


async def test_the_link_starts_its_host_before_a_publish_or_a_subscribe():
    """A same-node client after a conductor restart: its query must not reach a bus nobody listens to."""
    from reactor_rt.events.local_link import LinkClient
    from reactor_rt.events.ray_bus import EventBusCore, bus_link_server

    core, started = EventBusCore(":memory:"), []

    async def ready() -> None:
        started.append(core.last_seq("s"))  # what the bus held when the host was asked to be ready

    link = bus_link_server(core, ready=ready)
    client = await LinkClient.connect(await link.start())
    try:
        assert await client.call("publish_many", [record("rx.query", "s")]) == [1]
        await client.call("subscribe", None, "s")
        assert await client.call("last_seq", "s") == 1
    finally:
        client.close()
        await link.close()
    assert started == [0, 1]  # before the publish (nothing published yet), and before the subscribe
    await core.close()


async def test_the_conductors_own_publishes_are_not_decoded_again(monkeypatch):
    from reactor_rt.events import ray_bus
    from reactor_rt.events.core_bus import CoreBus

    def no_decode(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a trusted publish decoded its frame")

    core = ray_bus.EventBusCore(":memory:")
    monkeypatch.setattr(ray_bus, "decode", no_decode)
    assert (await CoreBus(core).publish(Query(subject="s", source="t", data={"text": "hi"}))).seq == 1
    await core.close()


@pytest.mark.ray
async def test_a_bad_frame_sent_over_ray_or_the_link_is_an_event_decode_error(ray_local):
    from reactor_rt.events.ray_bus import RayBus

    bus = RayBus.create(name=None, log_path=":memory:")
    await bus.wait_ready()
    try:
        for local_link in (True, False):
            client = RayBus(bus.actor, local_link=local_link)
            with pytest.raises(EventDecodeError):
                await client._invoke("publish_many", [("s", "rx.query", _NOT_AN_EVENT)])
        assert await bus.last_seq("s") == 0
        assert [e.seq for e in await bus.publish_many([Query(subject="s", source="t", data={"text": "x"})])] == [1]
        assert [e.seq for e in await bus.replay("s")] == [1]
    finally:
        bus.kill()


# ---------------------------------------------------------------- subscriptions never opened


async def test_a_subscription_never_opened_is_dropped_with_its_buffer():
    from reactor_rt.events.ray_bus import EventBusCore

    core = EventBusCore(None, open_timeout=0.2)
    sid = await core.subscribe(subject="a")  # a client that dies before it opens the stream
    sub = core._subs[sid]  # (held here only to look at its buffer afterwards)
    await core.publish_many([record("rx.query") for _ in range(3)])
    assert sub.receive.statistics().current_buffer_used == 1  # one publish, one batch
    assert {k: core.stats()[k] for k in ("subscribers", "subscriptions", "unopened")} == {
        "subscribers": 1, "subscriptions": 1, "unopened": 1}
    with anyio.fail_after(5):
        while core.stats()["subscriptions"]:
            await anyio.sleep(0.05)
    assert {k: core.stats()[k] for k in ("subscribers", "subscriptions", "unopened")} == {
        "subscribers": 0, "subscriptions": 0, "unopened": 0}
    assert sub.receive.statistics().current_buffer_used == 0
    assert await core.publish_many([record("rx.query")]) == [4]  # nothing buffers for it any more
    with pytest.raises(ValueError, match=r"not opened within open_timeout=0\.2 s"):
        core.open_stream(sid)
    with pytest.raises(ValueError, match="not opened within"):
        await collect(core, sid)
    await core.close()


async def test_an_opened_subscription_outlives_the_open_timeout():
    from reactor_rt.events.ray_bus import EventBusCore

    core = EventBusCore(None, open_timeout=0.1)
    in_process, remote = await core.subscribe(subject="a"), await core.subscribe(subject="a")
    batches = core.open_stream(in_process)
    async with anyio.create_task_group() as tg:
        got: list[int] = []

        async def read_remote() -> None:
            async with contextlib.aclosing(core.stream(remote)) as stream:
                async for frames, _, _ in stream:
                    got.extend(decode(f).seq for f in frames)
                    if len(got) == 2:
                        return

        tg.start_soon(read_remote)
        await anyio.sleep(0.3)  # three times the timeout
        assert core.stats()["unopened"] == 0 and core.stats()["subscriptions"] == 2
        await core.publish_many([record("rx.query"), record("rx.query")])
        with anyio.fail_after(5):
            frames, _, _ = await batches.__anext__()
    assert [decode(f).seq for f in frames] == [1, 2] and got == [1, 2]
    await batches.aclose()
    assert core.stats()["subscriptions"] == 0  # ending a stream unsubscribes as before
    await core.close()


async def test_a_slow_replay_does_not_count_against_the_open_timeout(monkeypatch):
    import time

    from reactor_rt.events.ray_bus import EventBusCore

    core = EventBusCore(":memory:", open_timeout=0.3)
    await core.publish_many([record("rx.query") for _ in range(40)])
    read_frames = core.hub.log.read_frames

    def slow_read(*args, **kwargs):
        time.sleep(0.4)  # longer than open_timeout: a large log on a slow disk
        return read_frames(*args, **kwargs)

    monkeypatch.setattr(core.hub.log, "read_frames", slow_read)
    sid = await core.subscribe(subject="a", after=0, limit=41)
    await anyio.sleep(0.2)  # the client takes a while to open, still within open_timeout of the reply
    seqs: list[int] = []
    with anyio.fail_after(5):
        async for frames, _, _ in core.stream(sid, max_batch=8):
            seqs.extend(decode(f).seq for f in frames)
            if len(seqs) == 40:
                await core.publish_many([record("rx.query")])
            await anyio.sleep(0.1)  # a slow reader: the replay alone takes longer than open_timeout
    assert seqs == list(range(1, 42))
    await core.close()


async def test_closing_the_core_ends_unopened_subscriptions_and_their_timers():
    from reactor_rt.events.ray_bus import EventBusCore

    core = EventBusCore(None, open_timeout=0.1)
    sid = await core.subscribe(subject="a")
    await core.close()
    assert core.stats()["unopened"] == 0 and await collect(core, sid) == []  # ends, as every stream on close
    await anyio.sleep(0.2)  # the cancelled timer does not fire


def test_open_timeout_must_be_positive():
    from reactor_rt.events.ray_bus import EventBusCore

    with pytest.raises(ValueError, match="open_timeout"):
        EventBusCore(None, open_timeout=0)


@pytest.mark.ray
async def test_ray_and_link_clients_open_their_streams_in_time(ray_local):
    from reactor_rt.events.ray_bus import RayBus

    bus = RayBus.create(name=None, open_timeout=0.5)
    await bus.wait_ready()
    try:
        for local_link in (True, False):
            client = RayBus(bus.actor, local_link=local_link)
            sub = await client.subscribe(subject=f"s{local_link}")
            await anyio.sleep(1.5)  # the stream opened with the subscribe: the timeout does not apply
            await client.publish(Query(subject=f"s{local_link}", source="t", data={"text": "x"}))
            with anyio.fail_after(10):
                assert (await sub.__anext__()).seq == 1
            await sub.aclose()
        stats = await bus.actor.stats.remote()
        assert stats["unopened"] == 0
        # a client that subscribed and never opened: dropped, and a late open is refused clearly
        sid = await bus._invoke("subscribe", None, "late", None, None, None, None, False)
        await anyio.sleep(1.5)
        assert (await bus.actor.stats.remote())["subscriptions"] == 0
        late = bus.actor.stream.remote(sid, 16)
        with pytest.raises(ValueError, match="not opened within"):
            async for ref in late:
                await _call_ref(ref)
    finally:
        bus.kill()


async def _call_ref(ref):
    from reactor_rt.events.ray_bus import _call

    return await _call(ref)


async def test_a_batch_of_large_events_reaches_a_link_subscriber_in_pieces(monkeypatch):
    """One link message holds at most MAX_FRAME bytes: the bus splits a batch by bytes too, so large
    events that pile up for a subscriber do not make a batch its link refuses (ending the subscription)."""
    from reactor_rt.events import local_link
    from reactor_rt.events.local_link import LinkClient
    from reactor_rt.events.ray_bus import EventBusCore, bus_link_server

    monkeypatch.setattr(local_link, "MAX_FRAME", 64 << 10)
    core = EventBusCore(None)
    link = bus_link_server(core)
    client = await LinkClient.connect(await link.start())
    try:
        sid = await client.call("subscribe", None, "s")
        text = "x" * 4000
        sent = await core.publish_many([("s", "rx.query", encode(Query(subject="s", source="t", data={"text": text})))
                                        for _ in range(60)])  # ~240 KB in one publish
        got = []
        with anyio.fail_after(5):
            async for frames, _, _ in client.stream("stream", sid, 1024, window=4):
                got.extend(decode(f).seq for f in frames)
                if len(got) == len(sent):
                    break
        assert got == sent
    finally:
        client.close()
        await link.close()
        await core.close()


async def test_a_link_subscription_dropped_unread_stops_its_stream_at_the_bus(monkeypatch):
    """A subscription never iterated has no generator finalizer: dropping it must still stop its link
    stream, or the bus's side waits for credit for good and the client keeps what it was sent."""
    import gc
    import types

    from reactor_rt.events.local_link import LinkClient
    from reactor_rt.events.ray_bus import EventBusCore, RayBus, bus_link_server

    core = EventBusCore(None, buffer=8, overflow_wait=0.01)
    link = bus_link_server(core)
    client = await LinkClient.connect(await link.start())
    bus = RayBus(types.SimpleNamespace())  # no actor: everything goes over the link below

    async def linked() -> LinkClient:
        return client

    monkeypatch.setattr(bus._link, "get", linked)
    try:
        sub = await bus.subscribe(subject="s")
        for _ in range(30):  # more batches than the window: the bus's side waits for credit
            await core.publish_many([record("rx.query", "s")])
            await anyio.sleep(0.005)
        connection = next(iter(link.connections))
        assert connection._tasks and client._streams
        del sub
        gc.collect()
        with anyio.fail_after(5):
            while connection._tasks or client._streams or core.stats()["subscriptions"]:
                await anyio.sleep(0.02)
    finally:
        client.close()
        await link.close()
        await core.close()

"""Reactor facade audit findings, without Ray: a bus and a stand-in conductor handle behind a `Reactor`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import torch

from reactor_rt.errors import RuntimeUnavailableError
from reactor_rt.events import ErrorEvent, Event, InProcessBus, Query
from reactor_rt.events.log import EventLog
from reactor_rt.model import RxTConfig
from reactor_rt.runtime import Reactor, Stream, Thinking
from reactor_rt.tokenizer import ByteTokenizer

pytestmark = pytest.mark.anyio


class _Method:
    """Stands in for a Ray actor method: ``.remote(...)`` returns an awaitable."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)


class FakeConductor:
    """Records the calls the facade makes; ``memory`` answers version 0 and a zero STM."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

        async def memory(stream_id: str, after_seq: int) -> tuple[int, torch.Tensor]:
            self.calls.append(("memory", (stream_id, after_seq)))
            return 0, torch.zeros(1)

        async def open_stream(*args: Any) -> Any:
            self.calls.append(("open_stream", args))
            raise AssertionError("not reached")

        self.memory = _Method(memory)
        self.open_stream = _Method(open_stream)


def reactor(bus: Any, conductor: Any = None) -> Reactor:
    cfg = RxTConfig.preset("tiny")
    return Reactor(namespace="test", bus=bus, actors={"conductor": conductor or FakeConductor()},
                   model_config=cfg, tokenizer=ByteTokenizer(), started_ray=False)


async def collect(sub: Any) -> list[Event]:
    return [ev async for ev in sub]


async def test_subscribe_takes_one_type_name_as_a_string():
    """``types="rx.error"`` was split into one-letter names that matched nothing: the subscription
    waited for good."""
    bus = InProcessBus(log=EventLog(":memory:"))
    rx = reactor(bus)
    sub = await rx.subscribe(types="rx.error", limit=1)
    await bus.publish(Query(subject="s", source="t", data={"text": "not this"}))
    await bus.publish(ErrorEvent(subject="s", source="t", data={"code": "internal", "message": "m"}))
    events = await asyncio.wait_for(collect(sub), timeout=5)
    assert [ev.type for ev in events] == ["rx.error"]
    await bus.close()


async def test_waiting_for_a_thought_loop_whose_event_stream_ends_is_a_runtime_error():
    """The runtime stops before the loop's final response: a `RuntimeUnavailableError`, not a bare
    AssertionError (or, under ``python -O``, None)."""
    bus = InProcessBus(log=EventLog(":memory:"))
    rx = reactor(bus)
    thinking = Thinking(Stream(rx, "s", "s", 0), "some-loop", after=0)
    waiting = asyncio.create_task(thinking.wait())
    await asyncio.sleep(0.05)
    await bus.close()  # ends every subscription, as a stopped runtime does
    with pytest.raises(RuntimeUnavailableError, match="some-loop"):
        await asyncio.wait_for(waiting, timeout=5)


class OutOfOrderBus(InProcessBus):
    """Publishes in call order but returns the query with text "slow" last (as concurrent calls over
    Ray may come back)."""

    async def publish_many(self, events: Any) -> list[Event]:
        stamped = await super().publish_many(events)
        if any(isinstance(e, Query) and e.data.text == "slow" for e in stamped):
            await asyncio.sleep(0.05)
        return stamped


async def test_memory_waits_for_the_latest_of_concurrent_questions():
    """Two concurrent asks on one stream whose publishes return out of order: memory() must name the
    later query's seq (it named the earlier one, and could return before the later query's update)."""
    bus = OutOfOrderBus(log=EventLog(":memory:"))
    conductor = FakeConductor()
    stream = Stream(reactor(bus, conductor), "s", "s", 0)
    first, second = stream.ask("slow"), stream.ask("fast")
    slow_task = asyncio.create_task(first.__anext__())
    await asyncio.sleep(0)  # the slow one publishes first: seq 1
    fast = await second.__anext__()
    slow = await slow_task
    assert (slow.seq, fast.seq) == (1, 2)
    await stream.memory()
    assert conductor.calls == [("memory", ("s", 2))]
    await first.aclose()
    await second.aclose()
    await bus.close()


async def test_a_closed_reactor_refuses_every_call_with_a_runtime_error(monkeypatch):
    """After the `async with` ends, a stream handle's calls raise `RuntimeUnavailableError` before
    reaching Ray (an actor call there started a new local Ray instance and raised a bare Exception)."""
    from reactor_rt.actors import launch

    stopped = []

    async def stop_actors(actors: dict[str, Any], bus: Any) -> None:  # no Ray here: no ray.kill
        stopped.append(actors)
        await bus.close()

    monkeypatch.setattr(launch, "stop_actors", stop_actors)
    bus = InProcessBus(log=EventLog(":memory:"))
    conductor = FakeConductor()
    rx = reactor(bus, conductor)
    stream = Stream(rx, "s", "s", 0)
    await rx.close()
    with pytest.raises(RuntimeUnavailableError, match="closed"):
        await stream.memory()
    with pytest.raises(RuntimeUnavailableError, match="closed"):
        await stream.reply("hello")
    with pytest.raises(RuntimeUnavailableError, match="closed"):
        await rx.stream("other")
    with pytest.raises(RuntimeUnavailableError, match="closed"):
        await rx.publish(Query(subject="s", source="t", data={"text": "hi"}))
    with pytest.raises(RuntimeUnavailableError, match="closed"):
        rx.subscribe(types={"rx.error"})
    assert conductor.calls == [] and len(stopped) == 1
    await rx.close()  # still idempotent
    assert len(stopped) == 1


@pytest.mark.parametrize("limit", ["max_queue", "max_new_tokens", "decoder_capacity", "decoder_threads"])
def test_limits_below_one_are_refused_before_anything_starts(limit):
    from reactor_rt.errors import ConfigError

    with pytest.raises(ConfigError, match=limit):
        Reactor.start(model="tiny", store="memory://", **{limit: 0})


@pytest.mark.parametrize("value", [-1, 1.5, True, "4"])
def test_a_finish_alignment_window_that_is_not_a_count_is_refused(value):
    from reactor_rt.errors import ConfigError

    with pytest.raises(ConfigError, match="align_finish_steps"):
        Reactor.start(model="tiny", store="memory://", align_finish_steps=value)


@pytest.mark.parametrize("value", [1, "yes", None])
def test_compile_decode_must_be_a_bool(value):
    from reactor_rt.errors import ConfigError

    with pytest.raises(ConfigError, match="compile_decode"):
        Reactor.start(model="tiny", store="memory://", compile_decode=value)


def test_relative_paths_are_made_absolute_before_the_actors_open_them(tmp_path, monkeypatch):
    """The STM store actor (and on a joined cluster, processes on other machines) opened a relative
    ``sqlite:///`` path in its own working directory: another file than the caller's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    options = Reactor.start(store="sqlite:///data/stm.db", event_log="events.db", weights_dir="~/w")._options
    assert options["store"] == f"sqlite:///{tmp_path}/data/stm.db"
    assert (options["event_log"], options["weights_dir"]) == (f"{tmp_path}/events.db", f"{tmp_path}/home/w")
    kept = Reactor.start(store="memory://", event_log=":memory:")._options
    assert (kept["store"], kept["event_log"], kept["weights_dir"]) == ("memory://", ":memory:", None)


async def test_a_store_another_runtime_uses_is_refused_before_anything_starts(tmp_path, monkeypatch):
    """Two runtimes on one store (two `reactor-rt chat` on the default store) numbered one event log's
    events twice over; the second is now refused at start, before Ray or an actor starts."""
    from reactor_rt.errors import StoreError
    from reactor_rt.store.lock import StoreLock

    url = f"sqlite:///{tmp_path / 'stm.db'}"
    monkeypatch.setattr("reactor_rt.runtime._ensure_ray", lambda address: pytest.fail("Ray must not start"))
    held = StoreLock.acquire(url)
    try:
        with pytest.raises(StoreError, match="in use"):
            await Reactor.start(store=url)
    finally:
        held.release()

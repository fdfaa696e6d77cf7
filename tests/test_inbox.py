"""The client inbox: one watching subscription, events routed to the question they belong to."""

from __future__ import annotations

import asyncio

import pytest

from reactor_rt.errors import RuntimeUnavailableError
from reactor_rt.events import InProcessBus, Query, ResponseDone
from reactor_rt.inbox import Inbox

pytestmark = pytest.mark.anyio


class CountingBus(InProcessBus):
    def __init__(self) -> None:
        super().__init__()
        self.subscribes = 0

    async def subscribe(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.subscribes += 1
        return await super().subscribe(*args, **kwargs)


def done(subject: str, interaction: str, text: str) -> ResponseDone:
    return ResponseDone(subject=subject, source="t", interaction=interaction,
                        data={"text": text, "tokens": 1, "stm_version": 0})


async def next_item(queue: asyncio.Queue):  # type: ignore[type-arg]
    return await asyncio.wait_for(queue.get(), timeout=5)


async def test_events_reach_their_own_question_and_one_subscription_serves_every_stream():
    bus = CountingBus()
    inbox = Inbox(bus)
    a, b, c = await asyncio.gather(inbox.register("s", "i-a"), inbox.register("s", "i-b"),
                                   inbox.register("t", "i-c"))
    await bus.publish(done("s", "i-b", "for b"))
    await bus.publish(done("s", "someone-else", "not routed"))
    await bus.publish(done("t", "i-c", "for c"))
    await bus.publish(done("s", "i-a", "for a"))
    await bus.publish(done("unwatched", "i-a", "another stream: not followed"))
    assert (await next_item(a)).data.text == "for a"
    assert (await next_item(b)).data.text == "for b"
    assert (await next_item(c)).data.text == "for c"
    await asyncio.sleep(0.02)
    assert a.empty() and b.empty() and c.empty()
    assert bus.subscribes == 1
    await inbox.close()


async def test_a_released_question_gets_nothing_more():
    bus = InProcessBus()
    inbox = Inbox(bus)
    q = await inbox.register("s", "i-1")
    inbox.release("s", "i-1")
    await bus.publish(done("s", "i-1", "late"))
    await asyncio.sleep(0.05)
    assert q.empty()
    await inbox.close()


async def test_when_the_stream_ends_waiting_questions_get_an_error_and_the_next_one_resubscribes():
    bus = CountingBus()
    inbox = Inbox(bus)
    q = await inbox.register("s", "i-1")
    await bus.close()  # ends every subscription, as a stopped runtime does
    assert isinstance(await next_item(q), RuntimeUnavailableError)
    await asyncio.sleep(0)
    bus2 = CountingBus()
    inbox._bus = bus2  # the runtime came back (a restarted bus host)
    q2 = await inbox.register("s", "i-2")
    await bus2.publish(Query(subject="s", source="t", interaction="i-2", data={"text": "hi"}))
    await bus2.publish(done("s", "i-2", "answer"))
    assert (await next_item(q2)).type == "rx.response.done"  # queries are not routed: ask() has its own
    assert bus2.subscribes == 1
    await inbox.close()


async def test_closing_fails_waiting_questions_and_idle_streams_leave_the_watch_list():
    bus = CountingBus()
    inbox = Inbox(bus, max_idle=2)
    waiting = await inbox.register("busy", "i-1")
    for i in range(4):
        await inbox.register(f"idle-{i}", f"x{i}")
        inbox.release(f"idle-{i}", f"x{i}")
    await inbox.register("last", "y")
    watched = inbox._feed.watched
    assert "busy" in watched and "last" in watched  # streams with a question in flight stay
    assert len([s for s, n in watched.items() if n == 0]) <= 2
    await inbox.close()
    assert isinstance(await next_item(waiting), RuntimeUnavailableError)


class SlowWatchBus(InProcessBus):
    """A bus whose subscription takes a round trip to change its watch list (as over a link)."""

    async def subscribe(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        sub = await super().subscribe(*args, **kwargs)
        watch = sub.watch

        async def slow_watch(subjects, add=True):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.01)
            await watch(subjects, add)

        sub.watch = slow_watch
        return sub


async def test_concurrent_first_questions_on_a_new_stream_are_both_counted():
    bus = SlowWatchBus()
    inbox = Inbox(bus, max_idle=1)
    first, second = await asyncio.gather(inbox.register("s", "i-1"), inbox.register("s", "i-2"))
    assert inbox._feed.watched["s"] == 2
    inbox.release("s", "i-1")
    await inbox.register("other", "i-3")
    inbox.release("other", "i-3")
    await inbox.register("third", "i-4")  # trims idle streams: "s" still has a question in flight
    assert "other" in inbox._feed.watched  # the one idle stream kept
    assert "s" in inbox._feed.watched
    await bus.publish(done("s", "i-2", "for the second"))
    assert (await next_item(second)).data.text == "for the second"
    assert first.empty()
    await inbox.close()


async def test_with_no_idle_streams_kept_a_question_still_registers_and_gets_its_events():
    bus = InProcessBus()
    inbox = Inbox(bus, max_idle=0)
    q = await inbox.register("s", "i-1")
    await bus.publish(done("s", "i-1", "answer"))
    assert (await next_item(q)).data.text == "answer"
    inbox.release("s", "i-1")
    await inbox.register("t", "i-2")  # "s" is idle now: dropped from the watch list
    assert list(inbox._feed.watched) == ["t"]
    await inbox.close()


class GatedWatchBus(InProcessBus):
    """A bus whose watch-list changes wait for a gate, so something can happen in between."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def subscribe(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        sub = await super().subscribe(*args, **kwargs)
        watch = sub.watch

        async def gated_watch(subjects, add=True):  # type: ignore[no-untyped-def]
            await self.gate.wait()
            await watch(subjects, add)

        sub.watch = gated_watch
        return sub


async def test_a_question_registering_while_the_inbox_closes_gets_the_error_not_a_hang():
    """close() while a first question on a stream waits for its watch: the question registered on a
    feed already failed, and would have waited for events forever."""
    bus = GatedWatchBus()
    inbox = Inbox(bus)
    registering = asyncio.create_task(inbox.register("s", "i-1"))
    await asyncio.sleep(0.01)  # it waits in the watch
    await inbox.close()
    bus.gate.set()
    q = await asyncio.wait_for(registering, timeout=5)
    item = await next_item(q)
    assert isinstance(item, RuntimeUnavailableError) and "closed" in str(item)

"""One long-lived bus subscription for every `Stream.ask` of a client.

Subscribing costs round trips to the bus and a new delivery stream; doing it for every question put
them on every turn's path, and one subscription per stream meant one message per stream for events
published together. The inbox subscribes once (``watch=True``), adds each stream to the subscription's
watch list on its first question, and routes each arriving event to the question it belongs to, by
interaction id; events of interactions nobody here asked about (another client's queries on the same
stream) are dropped. When the subscription ends — the runtime stopped or restarted — every waiting
question gets the error, and the next one subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import structlog

from reactor_rt.errors import ReactorError, RuntimeUnavailableError
from reactor_rt.events import EVENT_TYPES, Event

__all__ = ["Inbox", "InboxItem"]

log = structlog.get_logger()

# everything but the queries: a question already holds its own (stamped by the publish), and another
# client's queries are not for it; leaving them out saves a delivery per turn
_ROUTED_TYPES = tuple(t for t in EVENT_TYPES if t != "rx.query")

# what a question's queue holds: its events, then (only if the subscription broke) the error
InboxItem = Event | BaseException


@dataclass
class _Feed:
    subscription: Any
    loop: asyncio.AbstractEventLoop
    routes: dict[str, asyncio.Queue[InboxItem]] = field(default_factory=dict)  # interaction -> queue
    watched: OrderedDict[str, int] = field(default_factory=OrderedDict)  # subject -> questions in flight
    task: asyncio.Task[None] | None = None
    closed: bool = False
    error: BaseException | None = None  # why it closed: told to questions that register too late


class Inbox:
    """Routes one watching subscription to the questions waiting on it (see the module doc).

    ``max_idle``: streams with no question in flight that stay on the watch list; the least recently
    used beyond that are dropped from it (a later question adds them again).
    """

    def __init__(self, bus: Any, max_idle: int = 1024) -> None:
        self._bus = bus
        self._max_idle = max_idle
        self._feed: _Feed | None = None
        self._opening = asyncio.Lock()

    async def register(self, subject: str, interaction: str) -> asyncio.Queue[InboxItem]:
        """A queue that receives ``interaction``'s events on ``subject``; live when this returns, so
        publish the query after it."""
        feed = await self._open()
        new = subject not in feed.watched
        if new:
            # every concurrent first question waits for the watch (live when it returns); adding a
            # subject twice is harmless, and the one that gets here second keeps the other's count
            await feed.subscription.watch([subject])
        # counted before the trim (no await in between): a subject with a question is never idle
        feed.watched[subject] = feed.watched.get(subject, 0) + 1
        feed.watched.move_to_end(subject)
        queue: asyncio.Queue[InboxItem] = asyncio.Queue()
        if feed.closed:  # it ended (closed, or the runtime stopped) during the watch: nothing will come
            feed.watched[subject] -= 1
            queue.put_nowait(feed.error or RuntimeUnavailableError("the event stream ended"))
            return queue
        feed.routes[interaction] = queue
        if new:
            await self._trim(feed, keep=subject)
        return queue

    def release(self, subject: str, interaction: str) -> None:
        """Stop routing ``interaction`` (its question ended or was abandoned)."""
        feed = self._feed
        if feed is not None and feed.routes.pop(interaction, None) is not None and subject in feed.watched:
            feed.watched[subject] = max(0, feed.watched[subject] - 1)

    async def close(self) -> None:
        """Close the subscription; waiting questions get `RuntimeUnavailableError`."""
        feed, self._feed = self._feed, None
        if feed is not None:
            await self._close(feed, RuntimeUnavailableError("the client closed the runtime"))

    async def _open(self) -> _Feed:
        feed = self._feed
        loop = asyncio.get_running_loop()
        if feed is not None and not feed.closed and feed.loop is loop:
            return feed
        if feed is not None and feed.loop is not loop:  # a new event loop: the old one's tasks are gone
            self._feed, self._opening = None, asyncio.Lock()
        async with self._opening:  # concurrent first questions share one subscription
            feed = self._feed
            if feed is None or feed.closed:
                subscription = await self._bus.subscribe(types=_ROUTED_TYPES, watch=True)
                feed = self._feed = _Feed(subscription, loop)
                feed.task = loop.create_task(self._pump(feed))
            return feed

    async def _pump(self, feed: _Feed) -> None:
        error: BaseException
        try:
            async for event in feed.subscription:
                queue = feed.routes.get(event.interaction)
                if queue is not None:
                    queue.put_nowait(event)
            error = RuntimeUnavailableError("the event stream ended before the interaction did (the runtime stopped?)")
        except asyncio.CancelledError:
            raise
        except ReactorError as exc:
            error = exc
        except Exception as exc:  # whatever broke the stream, the waiting questions must hear of it
            log.warning("inbox.stream_failed", error=type(exc).__name__)
            error = RuntimeUnavailableError(f"the event stream failed: {type(exc).__name__}: {exc}")
        feed.closed = True
        if self._feed is feed:
            self._feed = None
        self._fail(feed, error)

    async def _trim(self, feed: _Feed, keep: str) -> None:
        idle = [s for s, n in feed.watched.items() if n == 0 and s != keep]
        drop = idle[: max(0, len(idle) - self._max_idle)]
        if drop:
            for subject in drop:
                del feed.watched[subject]
            await feed.subscription.watch(drop, add=False)

    async def _close(self, feed: _Feed, error: BaseException) -> None:
        feed.closed, feed.error = True, feed.error or error
        if feed.task is not None:
            feed.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feed.task
        with contextlib.suppress(Exception):  # the bus may already be gone
            await feed.subscription.aclose()
        self._fail(feed, error)

    @staticmethod
    def _fail(feed: _Feed, error: BaseException) -> None:
        feed.error = feed.error or error
        for queue in feed.routes.values():
            queue.put_nowait(error)
        feed.routes.clear()

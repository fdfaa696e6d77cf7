"""One long-lived bus subscription per stream, shared by every `Stream.ask` on it.

Subscribing costs round trips to the bus and a new delivery stream; doing it for every question put
them on every turn's path. The inbox subscribes once per stream id (on its first question) and routes
each arriving event to the question it belongs to, by interaction id; events of interactions nobody
here asked about (another client's queries on the same stream) are dropped. When the subscription
ends — the runtime stopped or restarted — every waiting question gets the error, and the next one
subscribes again.
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
    routes: dict[str, asyncio.Queue[InboxItem]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    closed: bool = False


class Inbox:
    """Routes one subscription per stream id to the questions waiting on it (see the module doc).

    ``max_idle``: subscriptions of streams with no question in flight kept open; the least recently
    used beyond that are closed (a later question reopens them).
    """

    def __init__(self, bus: Any, max_idle: int = 256) -> None:
        self._bus = bus
        self._max_idle = max_idle
        self._feeds: OrderedDict[str, _Feed] = OrderedDict()
        self._opening: dict[str, asyncio.Lock] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def register(self, subject: str, interaction: str) -> asyncio.Queue[InboxItem]:
        """A queue that receives ``interaction``'s events on ``subject``; live when this returns, so
        publish the query after it."""
        feed = await self._feed(subject)
        queue: asyncio.Queue[InboxItem] = asyncio.Queue()
        feed.routes[interaction] = queue
        return queue

    def release(self, subject: str, interaction: str) -> None:
        """Stop routing ``interaction`` (its question ended or was abandoned)."""
        feed = self._feeds.get(subject)
        if feed is not None:
            feed.routes.pop(interaction, None)

    async def close_subject(self, subject: str) -> None:
        """Close the subscription of one stream (its waiting questions get an error)."""
        feed = self._feeds.pop(subject, None)
        if feed is not None:
            await self._close(feed, ReactorError(f"stream {subject!r} was closed by this client"))

    async def close(self) -> None:
        """Close every subscription; waiting questions get `RuntimeUnavailableError`."""
        feeds = list(self._feeds.values())
        self._feeds.clear()
        for feed in feeds:
            await self._close(feed, RuntimeUnavailableError("the client closed the runtime"))

    async def _feed(self, subject: str) -> _Feed:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # used from a new event loop: the old loop's tasks cannot serve it
            self._feeds.clear()
            self._opening.clear()
            self._loop = loop
        feed = self._feeds.get(subject)
        if feed is not None and not feed.closed:
            self._feeds.move_to_end(subject)
            return feed
        lock = self._opening.setdefault(subject, asyncio.Lock())
        async with lock:  # concurrent first questions on one stream share one subscription
            feed = self._feeds.get(subject)
            if feed is None or feed.closed:
                subscription = await self._bus.subscribe(types=_ROUTED_TYPES, subject=subject)
                feed = _Feed(subscription)
                feed.task = asyncio.get_running_loop().create_task(self._pump(subject, feed))
                self._feeds[subject] = feed
            self._feeds.move_to_end(subject)
        self._opening.pop(subject, None)
        await self._trim()
        return feed

    async def _pump(self, subject: str, feed: _Feed) -> None:
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
            log.warning("inbox.stream_failed", subject=subject[:256], error=type(exc).__name__)
            error = RuntimeUnavailableError(f"the event stream failed: {type(exc).__name__}: {exc}")
        feed.closed = True
        if self._feeds.get(subject) is feed:
            del self._feeds[subject]
        self._fail(feed, error)

    async def _trim(self) -> None:
        idle = [s for s, f in self._feeds.items() if not f.routes]
        for subject in idle[: max(0, len(idle) - self._max_idle)]:
            await self._close(self._feeds.pop(subject), RuntimeUnavailableError("unused subscription closed"))

    async def _close(self, feed: _Feed, error: BaseException) -> None:
        feed.closed = True
        if feed.task is not None:
            feed.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feed.task
        with contextlib.suppress(Exception):  # the bus may already be gone
            await feed.subscription.aclose()
        self._fail(feed, error)

    @staticmethod
    def _fail(feed: _Feed, error: BaseException) -> None:
        for queue in feed.routes.values():
            queue.put_nowait(error)
        feed.routes.clear()

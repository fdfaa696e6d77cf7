"""The `EventBus` protocol the runtime codes against, the `Subscription` iterator, and `InProcessBus`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel

from reactor_rt.errors import SubscriberOverflowError
from reactor_rt.events.codec import decode_batch, encode
from reactor_rt.events.handlers import HandlerRegistry
from reactor_rt.events.hub import Hub, HubSubscriber, OverflowPolicy
from reactor_rt.events.log import EventLog
from reactor_rt.events.schemas import Event, with_seq

__all__ = ["EventBus", "InProcessBus", "InProcessSubscription", "Subscription"]

_YIELD_EVERY = 16  # batches: a consumer that always finds events buffered still lets other tasks run


class Subscription(AsyncIterator[Event]):
    """Events matching a subscription, in publish order: ``async for ev in sub``.

    Iteration ends when the `limit` is reached or the bus closes; it raises `SubscriberOverflowError`
    (after the events already buffered) when the bus disconnected this subscriber for falling behind.
    Use it as an async context manager, or call `aclose()`, to unsubscribe.
    """

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Unsubscribe; iteration then ends. Idempotent."""
        raise NotImplementedError

    @property
    def dropped(self) -> int:
        """Chunk events the drop-chunks policy dropped for this subscriber (as far as known here)."""
        return 0

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


@runtime_checkable
class EventBus(Protocol):
    """What the runtime needs from a bus; `InProcessBus` and `RayBus` implement it."""

    async def publish(self, event: Event) -> Event:
        """Assign the subject's next seq, log durable types, deliver; returns the stamped event."""
        ...

    async def publish_many(self, events: Sequence[Event]) -> list[Event]:
        """Publish a batch in one hop, order kept; returns the stamped events."""
        ...

    async def subscribe(
        self,
        types: Iterable[str] | None = None,
        subject: str | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> Subscription:
        """Registered when the await returns; `after` replays the log past that seq first.

        The three buses also take ``watch=True``: a subscription that follows a list of subjects,
        changed with ``await subscription.watch(subjects, add=True)``.
        """
        ...

    async def replay(
        self, subject: str, after: int = 0, types: Iterable[str] | None = None, limit: int | None = None
    ) -> list[Event]:
        """The logged events of `subject` past seq `after`."""
        ...

    async def last_seq(self, subject: str) -> int:
        """The last seq assigned on `subject` (0 if none)."""
        ...

    async def close(self) -> None:
        """End every subscription and release resources; idempotent."""
        ...


class InProcessSubscription(Subscription):
    """A subscription on an `InProcessBus`: reads the hub's stream of event batches."""

    def __init__(self, hub: Hub[Event], sub: HubSubscriber[Event]) -> None:
        self._hub = hub
        self._sub = sub
        self._batch: list[Event] = sub.replay  # the replay first, then one batch per publish
        sub.replay = []
        self._pos = 0
        self._receive = sub.receive
        self._since_yield = 0

    async def __anext__(self) -> Event:
        pos = self._pos
        if pos < len(self._batch):
            self._pos = pos + 1
            return self._batch[pos]
        try:
            self._since_yield += 1
            if self._since_yield < _YIELD_EVERY:
                try:
                    batch = self._receive.receive_nowait()  # the common case: no trip through the loop
                except anyio.WouldBlock:
                    batch = await self._receive.receive()
            else:
                batch = await self._receive.receive()
                self._since_yield = 0
        except anyio.EndOfStream:
            if self._sub.overflowed:
                raise SubscriberOverflowError(
                    f"subscriber fell behind its {self._sub.capacity}-event buffer and was disconnected; "
                    "resubscribe with after=<last seq seen> to resume"
                ) from None
            raise StopAsyncIteration from None
        except anyio.ClosedResourceError:
            raise StopAsyncIteration from None
        self._sub.taken(len(batch))
        self._batch, self._pos = batch, 1
        return batch[0]

    async def watch(self, subjects: Iterable[str], add: bool = True) -> None:
        """Follow these subjects too (or no longer); a ``watch=True`` subscription."""
        self._hub.watch(self._sub, subjects, add)

    async def aclose(self) -> None:
        self._hub.unsubscribe(self._sub)
        self._batch, self._pos = [], 0
        self._receive.close()

    @property
    def dropped(self) -> int:
        return self._sub.dropped

    @property
    def overflowed(self) -> bool:
        """True once the bus disconnected this subscriber for falling behind."""
        return self._sub.overflowed


def _check_events(events: Iterable[Event]) -> None:
    for ev in events:
        if not isinstance(ev, Event):
            raise TypeError(f"can only publish events, got {type(ev).__name__}")


class InProcessBus(HandlerRegistry):
    """An `EventBus` inside one process (one event loop), on anyio bounded memory object streams.

    Args:
        log: durable log for replay and seq continuity across restarts; None keeps nothing.
        buffer: bound on each subscriber's buffered events.
        overflow: what happens to a subscriber that falls behind: "disconnect" (its iteration raises
            `SubscriberOverflowError`) or "drop-chunks" (chunks for it are dropped first; if the buffer
            still fills, it is disconnected).
        overflow_wait: seconds a publish may wait for a full subscriber before the policy applies.
    """

    def __init__(
        self,
        log: EventLog | None = None,
        buffer: int = 1024,
        overflow: OverflowPolicy = "disconnect",
        overflow_wait: float = 0.1,
    ) -> None:
        super().__init__()
        self.log = log
        self._hub: Hub[Event] = Hub(
            log=log,
            stamp=with_seq,
            to_frame=encode,
            from_frames=decode_batch,
            buffer=buffer,
            overflow=overflow,
            overflow_wait=overflow_wait,
        )

    async def publish(self, event: Event) -> Event:
        """Assign the subject's next seq, log durable types, deliver; returns the stamped event."""
        _check_events((event,))
        return (await self._hub.publish(((event.subject, event.type, event),)))[0]

    async def publish_many(self, events: Sequence[Event]) -> list[Event]:
        """Publish a batch (one log transaction), order kept; returns the stamped events."""
        _check_events(events)
        return await self._hub.publish([(ev.subject, ev.type, ev) for ev in events])

    async def subscribe(
        self,
        types: Iterable[str] | None = None,
        subject: str | None = None,
        after: int | None = None,
        limit: int | None = None,
        *,
        buffer: int | None = None,
        overflow: OverflowPolicy | None = None,
        watch: bool = False,
    ) -> InProcessSubscription:
        """Subscribe to events by type (exact or "prefix.") and subject; see `EventBus.subscribe`.

        `buffer` and `overflow` override the bus defaults for this subscriber. ``watch=True``: follow a
        list of subjects, empty at first (`InProcessSubscription.watch`).
        """
        sub = await self._hub.subscribe(types, subject, after, limit, buffer=buffer, overflow=overflow, watch=watch)
        return InProcessSubscription(self._hub, sub)

    async def replay(
        self, subject: str, after: int = 0, types: Iterable[str] | None = None, limit: int | None = None
    ) -> list[Event]:
        """The logged events of `subject` past seq `after` (empty without a log)."""
        if self.log is None:
            return []
        return self.log.read(subject, after, types, limit)

    async def last_seq(self, subject: str) -> int:
        """The last seq assigned on `subject` (0 if none)."""
        return self._hub.last_seq(subject)

    @property
    def subscriber_count(self) -> int:
        """Live subscribers."""
        return self._hub.subscriber_count

    async def close(self) -> None:
        """End every subscription and close the log; idempotent."""
        await self._hub.close()

    async def __aenter__(self) -> InProcessBus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

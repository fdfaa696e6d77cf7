"""The bus hosted inside another actor: `CoreBus`, the in-process `EventBus` over an `EventBusCore`, and
`BusHost` (defined in `events.ray_bus`, re-exported here), the mixin that gives that actor the remote
methods a `RayBus` client calls.

The runtime's conductor hosts the bus this way: it publishes without leaving its process, and
clients elsewhere use `RayBus(conductor_handle)` exactly as they would a standalone `EventBusActor`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence

from reactor_rt.errors import SubscriberOverflowError
from reactor_rt.events.bus import Subscription
from reactor_rt.events.codec import decode, decode_batch, encode
from reactor_rt.events.hub import OverflowPolicy
from reactor_rt.events.ray_bus import BusHost, EventBusCore
from reactor_rt.events.schemas import Event

__all__ = ["BusHost", "CoreBus", "CoreSubscription"]

_END_OVERFLOW = "overflow"


def _types(types: Iterable[str] | str | None) -> list[str] | None:
    if types is None:
        return None
    return [types] if isinstance(types, str) else list(types)


class CoreSubscription(Subscription):
    """A subscription read straight from the core's batches, in this process."""

    def __init__(self, core: EventBusCore, sid: str) -> None:
        self._core = core
        self._sid = sid
        self._batches: AsyncIterator[tuple[list[bytes], int, str | None]] = core.open_stream(sid).__aiter__()
        self._frames: deque[bytes] = deque()
        self._dropped = 0
        self._closed = False

    async def __anext__(self) -> Event:
        while not self._frames:
            if self._closed:
                raise StopAsyncIteration
            frames, self._dropped, end = await self._batches.__anext__()
            if end == _END_OVERFLOW:
                await self.aclose()
                raise SubscriberOverflowError("subscriber fell behind its buffer and was disconnected")
            self._frames.extend(frames)
        return decode(self._frames.popleft())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._core.unsubscribe(self._sid)
        await self._batches.aclose()  # type: ignore[attr-defined]

    async def watch(self, subjects: Iterable[str], add: bool = True) -> None:
        """Follow these subjects too (or no longer); a ``watch=True`` subscription."""
        self._core.watch(self._sid, list(subjects), add)

    @property
    def dropped(self) -> int:
        return self._dropped


class CoreBus:
    """`EventBus` over an `EventBusCore` living in this process (no Ray hop to publish)."""

    def __init__(self, core: EventBusCore) -> None:
        self.core = core

    async def publish(self, event: Event) -> Event:
        return (await self.publish_many((event,)))[0]

    async def publish_many(self, events: Sequence[Event]) -> list[Event]:
        for ev in events:
            if not isinstance(ev, Event):
                raise TypeError(f"can only publish events, got {type(ev).__name__}")
        seqs = await self.core.publish_many([(ev.subject, ev.type, encode(ev)) for ev in events])
        return [ev.model_copy(update={"seq": seq}) for ev, seq in zip(events, seqs, strict=True)]

    async def subscribe(self, types: Iterable[str] | None = None, subject: str | None = None,
                        after: int | None = None, limit: int | None = None, *, buffer: int | None = None,
                        overflow: OverflowPolicy | None = None, watch: bool = False) -> CoreSubscription:
        sid = await self.core.subscribe(_types(types), subject, after, limit, buffer, overflow, watch)
        return CoreSubscription(self.core, sid)

    async def replay(self, subject: str, after: int = 0, types: Iterable[str] | None = None,
                     limit: int | None = None) -> list[Event]:
        return decode_batch(self.core.replay(subject, after, _types(types), limit))

    async def read_types(self, types: Iterable[str]) -> list[Event]:
        """Logged events of these types on every subject, in log order (empty without a log)."""
        log = self.core.hub.log
        return [] if log is None else log.read_types(list(types))

    async def last_seqs(self, event_type: str) -> dict[str, int]:
        """Each subject's last logged seq of this type (empty without a log)."""
        log = self.core.hub.log
        return {} if log is None else log.last_seqs(event_type)

    async def last_seq_of(self, subject: str, event_type: str) -> int:
        """The last logged seq of this type on `subject` (0 without a log)."""
        log = self.core.hub.log
        return 0 if log is None else log.last_seq_of(subject, event_type)

    async def last_seq(self, subject: str) -> int:
        return self.core.last_seq(subject)

    async def close(self) -> None:
        await self.core.close()

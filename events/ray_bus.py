"""The Ray-backed bus: `EventBusActor` (an async actor holding the seq counters, the log and the
subscriber buffers) and `RayBus`, the `EventBus` client usable from the driver or from other actors.

Events cross process boundaries as encoded frames: the client encodes once, the actor checks each
frame it is sent (a client's bytes are not trusted: one decode, and the record must name the event's
subject and type), stamps the seq into the frame in place (`codec.stamp_seq`), logs and fans out the
bytes without decoding them again, and each subscriber receives them in batches through an async
streaming generator with bounded backpressure, then decodes on its own side.

A client on the actor's own node sends the same calls and reads the same batches over a local link
(`events.local_link`: a Unix socket, ~30x faster than an actor call); elsewhere, or with
``local_link=False``, over Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

import anyio
import ray
import structlog
from ray.exceptions import RayActorError, RayError, RayTaskError

from reactor_rt.errors import EventDecodeError, ReactorError, RuntimeUnavailableError, SubscriberOverflowError
from reactor_rt.events import local_link
from reactor_rt.events.bus import Subscription
from reactor_rt.events.codec import (
    DEFAULT_LIMITS,
    CodecLimits,
    decode,
    decode_batch,
    encode,
    frame_seq,
    stamp_seq,
)
from reactor_rt.events.handlers import HandlerRegistry
from reactor_rt.events.hub import Hub, HubSubscriber, OverflowPolicy
from reactor_rt.events.local_link import LinkClosedError, LinkHost, LinkResolver, LinkServer, LinkStream
from reactor_rt.events.log import EventLog
from reactor_rt.events.schemas import DURABLE_TYPES, Event, with_seq

__all__ = ["BusHost", "EventBusActor", "EventBusCore", "RayBus", "RaySubscription", "SharedDecoder", "bus_link_server"]

log = structlog.get_logger()

_END_OVERFLOW = "overflow"


def _same(frames: list[bytes]) -> list[bytes]:
    return frames


def _identity(frame: bytes) -> bytes:
    return frame


class EventBusCore:
    """Everything `EventBusActor` does, as a plain class (unit-testable without Ray).

    Args:
        log_path: SQLite file for the durable log (":memory:" for a throwaway one); None for no log.
        durable_types: the types the log keeps.
        max_age, max_rows: log retention (see `EventLog`).
        buffer, overflow, overflow_wait: the slow-subscriber policy (see `InProcessBus`).
        limits: what a frame from a client may hold (see `publish_untrusted`).
        open_timeout: seconds a subscription may wait for its stream to be opened (`stream` or
            `open_stream`) after `subscribe` returns; past it, it is unsubscribed and its buffer dropped
            (a client that died in between would otherwise leave both here for good). None: no bound.

    Two ways in: `publish_many` trusts its frames (this process encoded them: `CoreBus`), and
    `publish_untrusted` checks each one first (frames from other processes: the Ray method and the
    local link's call both use it).
    """

    def __init__(
        self,
        log_path: str | None = None,
        *,
        durable_types: Iterable[str] = DURABLE_TYPES,
        max_age: float | None = None,
        max_rows: int | None = None,
        buffer: int = 1024,
        overflow: OverflowPolicy = "disconnect",
        overflow_wait: float = 0.1,
        limits: CodecLimits = DEFAULT_LIMITS,
        open_timeout: float | None = 10.0,
    ) -> None:
        if open_timeout is not None and open_timeout <= 0:
            raise ValueError(f"open_timeout must be > 0 (or None), got {open_timeout}")
        self.limits = limits
        self.open_timeout = open_timeout
        event_log = (
            EventLog(log_path, durable_types=durable_types, max_age=max_age, max_rows=max_rows)
            if log_path is not None
            else None
        )
        self.hub: Hub[bytes] = Hub(
            log=event_log,
            stamp=stamp_seq,
            to_frame=_identity,
            from_frames=_same,
            buffer=buffer,
            overflow=overflow,
            overflow_wait=overflow_wait,
        )
        self._subs: dict[str, HubSubscriber[bytes]] = {}
        # subscriptions whose stream is not open yet: the timer that drops each one (see `open_timeout`)
        self._unopened: dict[str, asyncio.TimerHandle] = {}

    def prune_log(self) -> int:
        """Apply the log's retention bounds now (they also apply every `EventLog.prune_every` appended
        rows); returns the number of events removed (0 without a log or bounds)."""
        event_log = self.hub.log
        if event_log is None or (event_log.max_age is None and event_log.max_rows is None):
            return 0
        return event_log.prune()

    async def publish_many(self, records: Sequence[tuple[str, str, bytes]]) -> list[int]:
        """Publish `(subject, type, frame)` records encoded in this process by `codec.encode` (trusted:
        nothing is decoded); returns the seq assigned to each."""
        return [frame_seq(f) for f in await self.hub.publish(records)]

    async def publish_untrusted(self, records: Sequence[Sequence[Any]]) -> list[int]:
        """`publish_many` for records from outside this process: each frame must decode (within
        `limits`) to an event of the record's subject and type, or `EventDecodeError` is raised and
        nothing of the batch is published. What is logged and delivered is the event re-encoded, so a
        frame that decodes but is laid out otherwise (or repeats a key) cannot make the log unreadable."""
        return await self.publish_many([self._checked(record) for record in records])

    def _checked(self, record: Sequence[Any]) -> tuple[str, str, bytes]:
        try:
            subject, type_, frame = record
        except (TypeError, ValueError):
            raise EventDecodeError("a publish record is (subject, type, frame)") from None
        event = decode(frame, self.limits)
        if event.subject != subject or event.type != type_:
            raise EventDecodeError(
                f"the record says subject {str(subject)[:256]!r}, type {str(type_)[:64]!r}; its frame holds "
                f"{event.subject[:256]!r}, {event.type!r}"
            )
        return event.subject, event.type, encode(event, self.limits)

    async def subscribe(
        self,
        types: Sequence[str] | None = None,
        subject: str | None = None,
        after: int | None = None,
        limit: int | None = None,
        buffer: int | None = None,
        overflow: OverflowPolicy | None = None,
        watch: bool = False,
    ) -> str:
        """Register a subscriber; returns its id for `stream` (or `open_stream`) and `unsubscribe`. Its
        stream must be opened within `open_timeout` seconds, or the subscription is dropped."""
        sub = await self.hub.subscribe(types, subject, after, limit, buffer=buffer, overflow=overflow, watch=watch)
        sid = uuid.uuid4().hex
        self._subs[sid] = sub
        # the clock starts once the replay (`after=`) is read and the id is handed out: however long
        # that took, the client has the whole `open_timeout` to open the stream
        if self.open_timeout is not None:
            loop = asyncio.get_running_loop()
            self._unopened[sid] = loop.call_later(self.open_timeout, self._drop_unopened, sid)
        return sid

    def _drop_unopened(self, sid: str) -> None:
        self._unopened.pop(sid, None)
        sub = self._subs.get(sid)
        if sub is None:
            return
        log.warning("event_bus.subscription_never_opened", sid=sid, subject=sub.subject,
                    open_timeout=self.open_timeout)
        self.unsubscribe(sid)  # its hub side ends: nothing more is buffered for it
        sub.replay = []
        with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
            while True:  # drop what was buffered (the stream is closed: this ends)
                sub.receive.receive_nowait()
        sub.receive.close()

    def _opened(self, sid: str) -> HubSubscriber[bytes]:
        """Subscriber `sid`, its stream now open (no longer dropped for not being opened)."""
        timer = self._unopened.pop(sid, None)
        if timer is not None:
            timer.cancel()
        sub = self._subs.get(sid)
        if sub is None:
            raise ValueError(
                f"no subscriber {sid!r}: unsubscribed, or its stream was not opened within "
                f"open_timeout={self.open_timeout} s of subscribing"
            )
        return sub

    def watch(self, sid: str, subjects: Sequence[str], add: bool = True) -> None:
        """Change a watching subscriber's list of subjects (see `Hub.watch`)."""
        sub = self._subs.get(sid)
        if sub is None:
            raise ValueError(f"no subscriber {sid!r}")
        self.hub.watch(sub, subjects, add)

    async def stream(self, sid: str, max_batch: int = 1024) -> AsyncIterator[tuple[list[bytes], int, str | None]]:
        """Yield `(frames, dropped, end)` batches for subscriber `sid`: the replay first, then live events
        as they come (each batch takes whatever is buffered, up to `max_batch`). `end` is "overflow" on the
        last batch of a subscriber disconnected for falling behind, else None. An unknown `sid` raises
        `ValueError` (see `open_stream`), except on a closed bus, where every stream ends."""
        if self.hub.closed and sid not in self._subs:
            return
        sub = self._opened(sid)
        async for item in self._batches(sid, sub, max_batch):
            yield item

    def open_stream(self, sid: str, max_batch: int = 256) -> AsyncIterator[tuple[list[bytes], int, str | None]]:
        """`stream`, with the subscriber looked up now rather than at the first read (for an in-process
        reader: events buffered before a `close` still arrive). `ValueError` if there is no subscriber
        `sid` (e.g. it was not opened within `open_timeout` of subscribing and was dropped)."""
        sub = self._opened(sid)
        return self._batches(sid, sub, max_batch)

    async def _batches(
        self, sid: str, sub: HubSubscriber[bytes], max_batch: int
    ) -> AsyncIterator[tuple[list[bytes], int, str | None]]:
        try:
            replay, sub.replay = sub.replay, []
            for part in _split(replay, max_batch):
                yield part, sub.dropped, None
            receive = sub.receive
            while True:
                try:
                    batch = await receive.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    if sub.overflowed:
                        yield [], sub.dropped, _END_OVERFLOW
                    return
                sub.taken(len(batch))
                while len(batch) < max_batch:  # merge the batches of several publishes
                    try:
                        more = receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                        break
                    sub.taken(len(more))
                    batch.extend(more)
                for part in _split(batch, max_batch):
                    yield part, sub.dropped, None
        finally:
            self.unsubscribe(sid)

    def unsubscribe(self, sid: str) -> None:
        """Stop delivering to subscriber `sid` (its stream ends after what is buffered)."""
        timer = self._unopened.pop(sid, None)
        if timer is not None:
            timer.cancel()
        sub = self._subs.pop(sid, None)
        if sub is not None:
            self.hub.unsubscribe(sub)

    def replay(
        self, subject: str, after: int = 0, types: Sequence[str] | None = None, limit: int | None = None
    ) -> list[bytes]:
        """Logged frames of `subject` past seq `after`."""
        if self.hub.log is None:
            return []
        return self.hub.log.read_frames(subject, after, types, limit)

    def last_seq(self, subject: str) -> int:
        """The last seq assigned on `subject`."""
        return self.hub.last_seq(subject)

    def stats(self) -> dict[str, Any]:
        """Counters for operators and tests: live hub subscribers, subscription ids held (``subscriptions``)
        and of those the ones whose stream is not open yet (``unopened``)."""
        return {"subscribers": self.hub.subscriber_count, "subscriptions": len(self._subs),
                "unopened": len(self._unopened), "closed": self.hub.closed, "pid": os.getpid()}

    async def close(self) -> None:
        """End every subscription and close the log."""
        await self.hub.close()
        self._subs.clear()
        for timer in self._unopened.values():
            timer.cancel()
        self._unopened.clear()


# most stream batches a subscriber's side holds unread before the bus waits (then its overflow policy)
_STREAM_WINDOW = 4


def _split(frames: list[bytes], max_batch: int) -> Iterator[list[bytes]]:
    """`frames` in batches of at most `max_batch` frames and, past one frame, a quarter of the local
    link's frame limit in bytes: a batch of large events must not exceed what one link message may hold
    (its sender refuses it, ending the subscription)."""
    budget = local_link.MAX_FRAME // 4
    if len(frames) <= max_batch and sum(map(len, frames)) <= budget:  # nearly always: one batch
        if frames:
            yield frames
        return
    start, size = 0, 0
    for i, frame in enumerate(frames):
        if i > start and (i - start >= max_batch or size + len(frame) > budget):
            yield frames[start:i]
            start, size = i, 0
        size += len(frame)
    yield frames[start:]


def bus_link_server(core: EventBusCore, ready: Callable[[], Awaitable[None]] | None = None) -> LinkServer:
    """The bus's calls and its subscriber streams, served over a local link (see the module doc).
    ``ready`` is awaited before a publish or a subscribe is served (the host's start, e.g. the
    conductor's: a query must never reach a bus nobody listens to), as the host's Ray methods do."""

    async def publish_many(records: list[tuple[str, str, bytes]]) -> list[int]:
        if ready is not None:
            await ready()
        return await core.publish_untrusted(records)

    async def subscribe(*args: Any, **kwargs: Any) -> str:
        if ready is not None:
            await ready()
        return await core.subscribe(*args, **kwargs)

    async def watch(sid: str, subjects: list[str], add: bool = True) -> None:
        core.watch(sid, subjects, add)

    async def unsubscribe(sid: str) -> None:
        core.unsubscribe(sid)

    async def replay(subject: str, after: int = 0, types: list[str] | None = None,
                     limit: int | None = None) -> list[bytes]:
        return core.replay(subject, after, types, limit)

    async def last_seq(subject: str) -> int:
        return core.last_seq(subject)

    # clients call this: their frames are checked (`EventBusCore.publish_untrusted`)
    calls = {"publish_many": publish_many, "subscribe": subscribe, "watch": watch,
             "unsubscribe": unsubscribe, "replay": replay, "last_seq": last_seq}
    return LinkServer(calls, {"stream": core.stream})


class BusHost(LinkHost):
    """Mixin for an async Ray actor that hosts the bus in ``self.bus_core`` (and its local link in
    ``self.link = bus_link_server(self.bus_core)``): the remote methods a `RayBus` client calls.
    `EventBusActor` is the bus alone; the runtime's conductor hosts it beside its own work."""

    bus_core: EventBusCore

    async def ping(self) -> bool:
        return True

    async def publish_many(self, records: list[tuple[str, str, bytes]]) -> list[int]:
        """Publish a client's records: frames from another process are checked first."""
        return await self.bus_core.publish_untrusted(records)

    async def subscribe(self, types: list[str] | None = None, subject: str | None = None, after: int | None = None,
                        limit: int | None = None, buffer: int | None = None,
                        overflow: OverflowPolicy | None = None, watch: bool = False) -> str:
        return await self.bus_core.subscribe(types, subject, after, limit, buffer, overflow, watch)

    async def watch(self, sid: str, subjects: list[str], add: bool = True) -> None:
        self.bus_core.watch(sid, subjects, add)

    # backpressure: at most 4 unconsumed batches per subscriber; past that the actor-side buffer fills
    # and the slow-subscriber policy applies instead of objects piling up in the object store
    @ray.method(num_returns="streaming", _generator_backpressure_num_objects=_STREAM_WINDOW)
    async def stream(self, sid: str, max_batch: int = 1024) -> AsyncIterator[tuple[list[bytes], int, str | None]]:
        async for item in self.bus_core.stream(sid, max_batch):
            yield item

    async def unsubscribe(self, sid: str) -> None:
        self.bus_core.unsubscribe(sid)

    async def replay(self, subject: str, after: int = 0, types: list[str] | None = None,
                     limit: int | None = None) -> list[bytes]:
        return self.bus_core.replay(subject, after, types, limit)

    async def last_seq(self, subject: str) -> int:
        return self.bus_core.last_seq(subject)

    async def stats(self) -> dict[str, Any]:
        return self.bus_core.stats()

    async def close(self) -> None:
        await self.bus_core.close()  # its streams end over the link too; the link lives on with the process


# num_cpus=0: the bus is light, I/O-bound work and must never wait for a free CPU to be placed
@ray.remote(num_cpus=0, max_restarts=3, max_concurrency=1000)
class EventBusActor(BusHost):
    """The bus as an async Ray actor (one per runtime, named "bus" by default). Thin: wraps `EventBusCore`."""

    def __init__(self, log_path: str | None = None, **options: Any) -> None:
        self.bus_core = EventBusCore(log_path, **options)
        self.link = bus_link_server(self.bus_core)


async def _call(ref: Any) -> Any:
    """Await an actor call; Ray's own exceptions become `ReactorError`s."""
    try:
        return await ref
    except RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, ReactorError | ValueError | TypeError):
            raise cause from None
        raise RuntimeUnavailableError(f"event bus call failed: {cause!r}") from exc
    except RayActorError as exc:
        raise RuntimeUnavailableError(f"the event bus actor is unavailable: {exc}") from exc
    except RayError as exc:
        raise RuntimeUnavailableError(f"event bus call failed: {exc}") from exc


def _raised(exc: BaseException) -> BaseException:
    """What a link call's failure is raised as: the bus's own errors as they are, the rest as
    `RuntimeUnavailableError` (as `_call` does for Ray's)."""
    if isinstance(exc, ReactorError | ValueError | TypeError):
        return exc
    return RuntimeUnavailableError(f"event bus call failed: {exc!r}")


async def _ray_batches(gen: Any) -> AsyncIterator[tuple[list[bytes], int, str | None]]:
    async for ref in gen:
        yield await _call(ref)


async def _link_batches(stream: LinkStream) -> AsyncIterator[tuple[list[bytes], int, str | None]]:
    try:
        async for item in stream:
            yield item
    except LinkClosedError as exc:
        raise RuntimeUnavailableError(f"the event bus went away: {exc}") from None
    finally:
        await stream.aclose()


def _types_arg(types: Iterable[str] | str | None) -> list[str] | None:
    if types is None:
        return None
    return [types] if isinstance(types, str) else list(types)


class SharedDecoder:
    """Decodes each frame once per process, however many subscriptions here receive it.

    A frame holds the event's unique id, so equal frames are the same event; events are frozen, so
    handing one object to several subscribers is safe. Bounded: the oldest entries go first.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._cache: dict[bytes, Event] = {}

    def __call__(self, frame: bytes) -> Event:
        event = self._cache.get(frame)
        if event is None:
            event = decode(frame)
            cache = self._cache
            if len(cache) >= self.size:
                with contextlib.suppress(KeyError, RuntimeError, StopIteration):  # another thread got there
                    del cache[next(iter(cache))]
            cache[frame] = event
        return event


_shared_decode = SharedDecoder()


class RaySubscription(Subscription):
    """A subscription on a `RayBus`: batches of frames from the actor, over the local link or Ray's
    streaming generator."""

    def __init__(self, bus: RayBus, sid: str, batches: AsyncIterator[tuple[list[bytes], int, str | None]],
                 link_stream: LinkStream | None = None) -> None:
        self._bus = bus
        self._sid = sid
        self._batches = batches
        self._link_stream = link_stream  # the link's stream under `batches`, when it comes over the link
        self._frames: deque[bytes] = deque()
        self._dropped = 0
        self._overflowed = False
        self._done = False
        self._closed = False

    async def __anext__(self) -> Event:
        while not self._frames:
            if self._closed:
                raise StopAsyncIteration
            if self._done:
                if self._overflowed:
                    raise SubscriberOverflowError(
                        "subscriber fell behind its buffer in the event bus actor and was disconnected; "
                        "resubscribe with after=<last seq seen> to resume"
                    )
                raise StopAsyncIteration
            try:
                frames, self._dropped, end = await self._batches.__anext__()
            except StopAsyncIteration:
                self._done = True
                continue
            if end == _END_OVERFLOW:
                self._overflowed = True
                self._done = True
            self._frames.extend(frames)
        return _shared_decode(self._frames.popleft())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._frames.clear()
        with contextlib.suppress(RuntimeUnavailableError):  # actor gone: nothing to unsubscribe from
            await self._bus._invoke("unsubscribe", self._sid)
        with contextlib.suppress(RuntimeError, RuntimeUnavailableError):  # e.g. being read elsewhere
            await self._batches.aclose()  # type: ignore[attr-defined]

    def __del__(self) -> None:
        # an abandoned subscription: tell the actor (fire and forget) so it stops buffering for it
        if not self._closed and not self._done:
            with contextlib.suppress(Exception):  # e.g. Ray already shut down
                self._bus.actor.unsubscribe.remote(self._sid)
            stream = self._link_stream
            if stream is not None:
                # and stop its link stream: one never read has no generator finalizer to do it, so the
                # actor's side would wait for credit for good, and this side keep what it was sent
                with contextlib.suppress(RuntimeError):  # the loop is closed: the link is gone with it
                    stream._client.loop.call_soon_threadsafe(stream.close)

    async def watch(self, subjects: Iterable[str], add: bool = True) -> None:
        """Follow these subjects too (or, with ``add=False``, no longer); a ``watch=True`` subscription."""
        await self._bus._invoke("watch", self._sid, list(subjects), add)

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def overflowed(self) -> bool:
        """True once the bus disconnected this subscriber for falling behind."""
        return self._overflowed


class RayBus(HandlerRegistry):
    """`EventBus` client of an `EventBusActor`; works from the driver and from inside other actors
    (pass it to them: it pickles as its actor handle).

    Args:
        actor: the `EventBusActor` handle.
        max_batch: most events per delivered batch.
        local_link: talk to the actor over a local link when it runs on this node (see the module doc).
    """

    def __init__(self, actor: Any, *, max_batch: int = 1024, local_link: bool = True) -> None:
        super().__init__()
        self.actor = actor
        self.max_batch = max_batch
        self.local_link = local_link
        self._link = LinkResolver(lambda: actor.link_address.remote(), enabled=local_link)

    async def _invoke(self, name: str, *args: Any) -> Any:
        """Call the actor's method ``name``: over the local link when there is one, else through Ray."""
        link = await self._link.get()
        if link is None:
            return await _call(getattr(self.actor, name).remote(*args))
        try:
            return await link.call(name, *args)
        except LinkClosedError as exc:
            self._link.reset()
            raise RuntimeUnavailableError(f"the event bus went away: {exc}") from None
        except Exception as exc:
            raise _raised(exc) from None

    @classmethod
    def create(
        cls,
        name: str | None = "bus",
        namespace: str | None = None,
        log_path: str | None = None,
        *,
        max_restarts: int = 3,
        get_if_exists: bool = False,
        lifetime: str | None = None,
        max_batch: int = 1024,
        local_link: bool = True,
        **options: Any,
    ) -> RayBus:
        """Start an `EventBusActor` (named `name` in `namespace`; None for an anonymous one) and return a
        client. `options` go to `EventBusCore`: durable_types, max_age, max_rows, buffer, overflow,
        overflow_wait, limits, open_timeout. Ray must be initialised."""
        actor_options: dict[str, Any] = {"max_restarts": max_restarts, "get_if_exists": get_if_exists}
        if name is not None:
            actor_options["name"] = name
        if namespace is not None:
            actor_options["namespace"] = namespace
        if lifetime is not None:
            actor_options["lifetime"] = lifetime
        actor = EventBusActor.options(**actor_options).remote(log_path, **options)
        return cls(actor, max_batch=max_batch, local_link=local_link)

    @classmethod
    def connect(cls, name: str = "bus", namespace: str | None = None, *, max_batch: int = 1024) -> RayBus:
        """A client of the running `EventBusActor` called `name`; `RuntimeUnavailableError` if none."""
        try:
            actor = ray.get_actor(name, namespace=namespace)
        except ValueError as exc:
            raise RuntimeUnavailableError(f"no event bus actor named {name!r} in {namespace!r}") from exc
        return cls(actor, max_batch=max_batch)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.actor, self.max_batch, self.local_link))

    async def wait_ready(self) -> None:
        """Wait until the actor answers."""
        await _call(self.actor.ping.remote())

    async def publish(self, event: Event) -> Event:
        """Assign the subject's next seq, log durable types, deliver; returns the stamped event."""
        return (await self.publish_many((event,)))[0]

    async def publish_many(self, events: Sequence[Event]) -> list[Event]:
        """Publish a batch in one actor call (one log transaction), order kept."""
        records = []
        for ev in events:
            if not isinstance(ev, Event):
                raise TypeError(f"can only publish events, got {type(ev).__name__}")
            records.append((ev.subject, ev.type, encode(ev)))
        seqs = await self._invoke("publish_many", records)
        return [with_seq(ev, seq) for ev, seq in zip(events, seqs, strict=True)]

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
    ) -> RaySubscription:
        """Subscribe; registered in the actor when this returns. See `EventBus.subscribe`;
        ``watch=True`` starts an empty list of subjects to follow (`RaySubscription.watch`)."""
        sid = await self._invoke("subscribe", _types_arg(types), subject, after, limit, buffer, overflow, watch)
        link = await self._link.get()
        if link is None:
            return RaySubscription(self, sid, _ray_batches(self.actor.stream.remote(sid, self.max_batch)))
        stream = link.stream("stream", sid, self.max_batch, window=_STREAM_WINDOW)
        return RaySubscription(self, sid, _link_batches(stream), stream)

    async def replay(
        self, subject: str, after: int = 0, types: Iterable[str] | None = None, limit: int | None = None
    ) -> list[Event]:
        """The logged events of `subject` past seq `after`."""
        frames = await self._invoke("replay", subject, after, _types_arg(types), limit)
        return decode_batch(frames)

    async def last_seq(self, subject: str) -> int:
        """The last seq assigned on `subject` (0 if none)."""
        return await self._invoke("last_seq", subject)

    async def close(self) -> None:
        """End every subscription and close the actor's log (the actor itself stays up; see `kill`)."""
        await _call(self.actor.close.remote())
        self._link.reset()

    def kill(self) -> None:
        """Terminate the actor (no restart)."""
        ray.kill(self.actor, no_restart=True)

    async def __aenter__(self) -> RayBus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _rebuild(actor: Any, max_batch: int, local_link: bool = True) -> RayBus:
    return RayBus(actor, max_batch=max_batch, local_link=local_link)

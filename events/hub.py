"""The engine both buses share: per-subject seq counters, log-before-delivery, filtered fan-out into
anyio memory object streams with a bound per subscriber, and the slow-subscriber policy.

`Hub` is generic over the payload it moves: `InProcessBus` moves `Event` objects, the Ray actor moves
encoded frames (bytes) so that nothing is decoded inside the actor. Each publish hands every
subscriber the events it matches as one batch (a list), so fan-out costs one send per subscriber per
publish, not one per event. Everything a publish does happens under one lock, so per-subject order is
the order of seq, and a subscription registered while no publish is in flight sees every later event
exactly once. Full subscribers can hold that lock (all publishers) for at most `overflow_wait` per
publish, however many of them are full (they share one deadline): then the policy removes them or
drops their chunks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from reactor_rt.errors import BusClosedError
from reactor_rt.events.filters import TypeFilter
from reactor_rt.events.log import EventLog, LogRecord

__all__ = ["CHUNK_TYPE", "OVERFLOW_POLICIES", "Hub", "HubSubscriber", "OverflowPolicy"]

log = structlog.get_logger()

P = TypeVar("P")

OverflowPolicy = Literal["disconnect", "drop-chunks"]
OVERFLOW_POLICIES: tuple[str, ...] = ("disconnect", "drop-chunks")
CHUNK_TYPE = "rx.response.chunk"


@dataclass(eq=False)
class HubSubscriber(Generic[P]):
    """One subscriber's side of the hub: its filter, its stream of batches and its delivery state.

    The stream carries lists of payloads (one per publish) and is unbounded itself: the bound is
    `capacity` events, counted in `queued`, which the consumer lowers with `taken()`.
    """

    types: TypeFilter
    subject: str | None
    send: MemoryObjectSendStream[list[P]]
    receive: MemoryObjectReceiveStream[list[P]]
    overflow: OverflowPolicy
    capacity: int  # most events buffered for this subscriber
    chunk_high_water: int  # drop-chunks: chunks are dropped once this many events are buffered
    remaining: int | None  # events left before `limit` ends the subscription; None = no limit
    replay: list[P] = field(default_factory=list)  # logged events to deliver before the live ones
    subjects: set[str] | None = None  # a watch list: only these subjects (see `Hub.watch`)
    queued: int = 0  # events sent and not yet taken by the consumer
    dropped: int = 0  # chunks dropped by the drop-chunks policy
    overflowed: bool = False  # disconnected for falling behind
    ended: bool = False  # no more events will be added (limit reached, overflow, close)
    _room: anyio.Event | None = None  # set when the consumer takes events while a publisher waits

    def matches(self, subject: str, type_: str) -> bool:
        return ((self.subject is None or self.subject == subject)
                and (self.subjects is None or subject in self.subjects) and self.types(type_))

    def taken(self, n: int) -> None:
        """The consumer took `n` events off the stream: free their room."""
        self.queued -= n
        if self._room is not None:
            self._room.set()
            self._room = None

    def end(self) -> None:
        self.ended = True
        self.send.close()  # the receiver drains what is buffered, then sees the end of the stream
        if self._room is not None:  # a publisher waiting for room stops waiting
            self._room.set()
            self._room = None


# (subject, type, seq, payload) of one stamped event inside a publish
_Row = tuple[str, str, int, Any]


class Hub(Generic[P]):
    """Seq counters + durable log + fan-out. Not thread-safe: use it from one event loop.

    Args:
        log: the durable log, or None for none (seq then restarts at 1 with every new hub).
        stamp: returns a payload with its seq set.
        to_frame: encodes a stamped payload for the log (called for durable types only).
        from_frames: turns logged frames back into payloads (for replay).
        buffer: default bound on each subscriber's buffered events.
        overflow: default slow-subscriber policy.
        overflow_wait: how long a publish may wait for full subscribers before the policy applies
            (seconds, one deadline for all of them); bounds how long slow subscribers can hold
            publishers up.
    """

    def __init__(
        self,
        *,
        log: EventLog | None,
        stamp: Callable[[P, int], P],
        to_frame: Callable[[P], bytes],
        from_frames: Callable[[list[bytes]], list[P]],
        buffer: int = 1024,
        overflow: OverflowPolicy = "disconnect",
        overflow_wait: float = 0.1,
    ) -> None:
        _check_policy(overflow)
        if buffer < 1:
            raise ValueError(f"buffer must be >= 1, got {buffer}")
        self.log = log
        self._stamp = stamp
        self._to_frame = to_frame
        self._from_frames = from_frames
        self.buffer = buffer
        self.overflow: OverflowPolicy = overflow
        self.overflow_wait = overflow_wait
        self._durable = log.durable_types if log is not None else frozenset()
        self._counters: dict[str, int] = {}
        self._subs: list[HubSubscriber[P]] = []
        self._lock = anyio.Lock(fast_acquire=True)  # no checkpoint when uncontended: publish stays cheap
        self.closed = False

    # ------------------------------------------------------------------ seq

    def last_seq(self, subject: str) -> int:
        """The last seq assigned on `subject` (0 if none)."""
        n = self._counters.get(subject)
        if n is None:
            n = self.log.last_seq(subject) if self.log is not None else 0
            self._counters[subject] = n
        return n

    # ------------------------------------------------------------------ publish

    async def publish(self, items: Sequence[tuple[str, str, P]]) -> list[P]:
        """Stamp, log (durable types, one transaction) and deliver `(subject, type, payload)` items.

        Each subscriber gets the events it matches as one batch. Returns the stamped payloads, in order.
        """
        async with self._lock:
            if self.closed:
                raise BusClosedError("the event bus is closed")
            counters = self._counters
            stamp = self._stamp
            rows: list[_Row] = []
            for subject, type_, payload in items:
                seq = (counters[subject] if subject in counters else self.last_seq(subject)) + 1
                try:
                    stamped = stamp(payload, seq)
                except BaseException:
                    self._give_back(rows)  # a payload that cannot be stamped: nothing is published
                    raise
                counters[subject] = seq
                rows.append((subject, type_, seq, stamped))
            if self.log is not None:
                # log before delivery: a subscriber never sees a durable event that a replay could miss
                durable, to_frame = self._durable, self._to_frame
                try:
                    self.log.append_records(
                        [LogRecord(sj, seq, ty, to_frame(p) if ty in durable else None) for sj, ty, seq, p in rows]
                    )
                except BaseException:
                    self._give_back(rows)
                    raise
            if self._subs:
                await self._fan_out(rows)
            return [r[3] for r in rows]

    def _give_back(self, rows: list[_Row]) -> None:
        """Nothing of a publish went out: its numbers are free again (no gap in a subject's seq)."""
        for row in rows:
            self._counters[row[0]] -= 1

    async def _fan_out(self, rows: list[_Row]) -> None:
        # match each distinct (subject, type) once per subscriber, not every event
        kinds = {(r[0], r[1]) for r in rows}
        deadline: float | None = None  # one wait per publish, shared by every full subscriber
        for sub in tuple(self._subs):
            wanted = {k for k in kinds if sub.matches(k[0], k[1])}
            if not wanted:
                continue
            picked = rows if len(wanted) == len(kinds) else [r for r in rows if (r[0], r[1]) in wanted]
            if picked:
                rest = self._offer(sub, picked)
                if rest:
                    if deadline is None:
                        deadline = anyio.current_time() + self.overflow_wait
                    await self._wait_for_room(sub, rest, deadline)

    def _offer(self, sub: HubSubscriber[P], rows: list[_Row]) -> list[_Row]:
        """Send `sub` what fits now (after the drop-chunks policy); return the rows that did not fit."""
        if sub.ended:
            return []
        if sub.remaining is not None and len(rows) > sub.remaining:
            rows = rows[: sub.remaining]
        if sub.overflow == "drop-chunks" and sub.queued + len(rows) > sub.chunk_high_water:
            rows = self._drop_chunks(sub, rows)
        room = sub.capacity - sub.queued
        if len(rows) <= room:
            self._send(sub, rows)
            return []
        if room > 0:
            self._send(sub, rows[:room])
        return rows[max(room, 0) :]

    async def _wait_for_room(self, sub: HubSubscriber[P], rows: list[_Row], deadline: float) -> None:
        # shielded: once stamped and logged, the events must reach this subscriber even if the
        # publisher is cancelled meanwhile; the wait is bounded by the publish's deadline anyway. Past
        # it, what fits is still sent (no checkpoint before the first await), the rest disconnects.
        with anyio.CancelScope(deadline=deadline, shield=True):
            while rows and not sub.ended:
                room = sub.capacity - sub.queued
                if room > 0:
                    self._send(sub, rows[:room])
                    rows = rows[room:]
                    continue
                sub._room = anyio.Event()
                await sub._room.wait()
        if rows and not sub.ended:
            self._disconnect_slow(sub)

    @staticmethod
    def _drop_chunks(sub: HubSubscriber[P], rows: list[_Row]) -> list[_Row]:
        kept: list[_Row] = []
        level = sub.queued
        for row in rows:
            if row[1] == CHUNK_TYPE and level >= sub.chunk_high_water:
                sub.dropped += 1
                continue
            kept.append(row)
            level += 1
        return kept

    def _send(self, sub: HubSubscriber[P], rows: list[_Row]) -> None:
        if not rows:
            return
        try:
            sub.send.send_nowait([r[3] for r in rows])
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._remove(sub)  # the subscriber closed its end
            sub.ended = True
            return
        sub.queued += len(rows)
        if sub.remaining is not None:
            sub.remaining -= len(rows)
            if sub.remaining <= 0:
                self._remove(sub)
                sub.end()

    def _disconnect_slow(self, sub: HubSubscriber[P]) -> None:
        log.warning(
            "event_bus.subscriber_disconnected",
            reason="overflow",
            buffer=sub.capacity,
            subject=sub.subject,
            policy=sub.overflow,
        )
        sub.overflowed = True
        self._remove(sub)
        sub.end()

    # ------------------------------------------------------------------ subscribe

    async def subscribe(
        self,
        types: Iterable[str] | str | None = None,
        subject: str | None = None,
        after: int | None = None,
        limit: int | None = None,
        *,
        buffer: int | None = None,
        overflow: OverflowPolicy | None = None,
        watch: bool = False,
    ) -> HubSubscriber[P]:
        """Register a subscriber; with `after`, its replay holds the logged events past that seq.

        ``watch=True``: the subscriber starts with an empty watch list of subjects, extended and
        shrunk with `watch` / `unwatch` (one subscription following many streams).
        """
        if after is not None and subject is None:
            raise ValueError("after= resumes one subject's sequence: give subject= too")
        if watch and (subject is not None or after is not None):
            raise ValueError("watch= follows a list of subjects: not with subject= or after=")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if after is not None and after < 0:
            raise ValueError(f"after must be >= 0, got {after}")
        policy = overflow or self.overflow
        _check_policy(policy)
        size = buffer or self.buffer
        if size < 1:
            raise ValueError(f"buffer must be >= 1, got {size}")
        if types is not None and not isinstance(types, str):
            types = list(types)  # read twice (the filter, the replay): an iterator would be empty the second time
        type_filter = TypeFilter(types)
        async with self._lock:  # never between a publish's log append and its delivery
            if self.closed:
                raise BusClosedError("the event bus is closed")
            # unbounded stream of batches: the bound is `capacity` events, counted by the hub
            send, receive = anyio.create_memory_object_stream[list[P]](math.inf)
            sub = HubSubscriber(
                types=type_filter,
                subject=subject,
                send=send,
                receive=receive,
                overflow=policy,
                capacity=size,
                chunk_high_water=max(1, math.ceil(size * 3 / 4)),  # room kept for non-chunk events
                remaining=limit,
                subjects=set() if watch else None,
            )
            if after is not None and subject is not None:
                upto = self.last_seq(subject)
                if self.log is not None and upto > after:
                    frames = self.log.read_frames(subject, after, types=types, limit=limit)
                    sub.replay = self._from_frames(frames)
                elif after > upto:
                    # the client saw numbers this bus has not given (chunk numbers are not logged, and
                    # a hard crash or a throwaway log loses them): they will be given again, and live
                    # events are delivered whatever their number, never taken for ones already seen
                    log.warning("event_bus.resumed_ahead", subject=subject, after=after, last_seq=upto)
                if sub.remaining is not None:
                    sub.remaining -= len(sub.replay)
                    if sub.remaining <= 0:
                        sub.end()
                        return sub
            self._subs.append(sub)
            return sub

    @staticmethod
    def watch(sub: HubSubscriber[P], subjects: Iterable[str], add: bool = True) -> None:
        """Add subjects to (or, with ``add=False``, remove them from) a watching subscriber's list;
        events published after this returns follow the new list."""
        if sub.subjects is None:
            raise ValueError("this subscription follows a fixed filter; subscribe with watch=True")
        if add:
            sub.subjects.update(subjects)
        else:
            sub.subjects.difference_update(subjects)

    def unsubscribe(self, sub: HubSubscriber[P]) -> None:
        """Stop delivering to `sub` (idempotent)."""
        self._remove(sub)
        if not sub.ended:
            sub.end()

    def _remove(self, sub: HubSubscriber[P]) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    @property
    def subscriber_count(self) -> int:
        """Live subscribers."""
        return len(self._subs)

    # ------------------------------------------------------------------ close

    async def close(self) -> None:
        """End every subscription (they finish after draining) and close the log; idempotent."""
        async with self._lock:
            if self.closed:
                return
            self.closed = True
            for sub in self._subs:
                sub.end()
            self._subs.clear()
            if self.log is not None:
                self.log.close()


def _check_policy(policy: str) -> None:
    if policy not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow policy must be one of {OVERFLOW_POLICIES}, got {policy!r}")

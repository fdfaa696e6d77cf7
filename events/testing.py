"""`TestBus`: an in-process bus for users' own tests (FastStream's TestBroker is the model).

    async with TestBus() as bus:
        await bus.publish(Query(subject="alice", source="test", data={"text": "hi"}))
        done = await bus.wait_for("rx.response.done", subject="alice", timeout=5)
        assert bus.published_types("alice")[0] == "rx.query"

It records every published event (stamped, in order), runs `@bus.subscriber` handlers while it is open,
and lets a test wait for an event that was, or will be, published.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import anyio

from reactor_rt.events.bus import InProcessBus
from reactor_rt.events.filters import TypeFilter
from reactor_rt.events.hub import OverflowPolicy
from reactor_rt.events.log import EventLog
from reactor_rt.events.schemas import Event, event_class

__all__ = ["EXAMPLE_DATA", "TestBus", "example_event"]

EXAMPLE_DATA: dict[str, dict[str, Any]] = {
    "rx.stream.opened": {"memory": "m", "stm_version": 0},
    "rx.stream.closed": {},
    "rx.query": {"text": "hi"},
    "rx.response.chunk": {"text": "h"},
    "rx.response.done": {"text": "hello", "tokens": 2, "stm_version": 3},
    "rx.memory.updating": {"memory": "m", "from_version": 3},
    "rx.memory.updated": {"memory": "m", "version": 4},
    "rx.thought.query": {"text": "why?", "step": 1},
    "rx.thought.response": {"text": "because", "step": 1},
    "rx.learning.feedback": {"target": "i-1", "reward": 0.5, "correction": "better"},
    "rx.learning.applied": {"weights_version": 2, "loss_before": 2.0, "loss_after": 1.5},
    "rx.error": {"code": "query_too_long", "message": "too long"},
}
"""Minimal valid `data` for every event type."""


def example_event(type_: str, subject: str = "alice", **fields: Any) -> Event:
    """A valid event of `type_` with minimal data; `fields` override any attribute (data included)."""
    attrs: dict[str, Any] = {"subject": subject, "source": "test", "data": EXAMPLE_DATA[type_], **fields}
    return event_class(type_)(**attrs)


class TestBus(InProcessBus):
    """An `InProcessBus` (no log by default) that records what is published and serves its handlers
    while used as an async context manager."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        log: EventLog | None = None,
        buffer: int = 1024,
        overflow: OverflowPolicy = "disconnect",
        overflow_wait: float = 0.1,
    ) -> None:
        super().__init__(log=log, buffer=buffer, overflow=overflow, overflow_wait=overflow_wait)
        self.published: list[Event] = []
        self._changed = anyio.Event()
        self._serving: object | None = None

    async def publish(self, event: Event) -> Event:
        """Publish and record the stamped event."""
        stamped = await super().publish(event)
        self._record((stamped,))
        return stamped

    async def publish_many(self, events: Sequence[Event]) -> list[Event]:
        """Publish a batch and record the stamped events."""
        stamped = await super().publish_many(events)
        self._record(stamped)
        return stamped

    def _record(self, events: Iterable[Event]) -> None:
        self.published.extend(events)
        self._changed.set()
        self._changed = anyio.Event()

    def events(self, types: Iterable[str] | str | None = None, subject: str | None = None) -> list[Event]:
        """Recorded events matching a type filter (exact or "prefix.") and a subject."""
        match = TypeFilter(types)
        return [e for e in self.published if match(e.type) and (subject is None or e.subject == subject)]

    def published_types(self, subject: str | None = None) -> list[str]:
        """The types of the recorded events (of one subject), in publish order."""
        return [e.type for e in self.events(subject=subject)]

    async def wait_for(
        self,
        types: Iterable[str] | str | None = None,
        subject: str | None = None,
        *,
        where: Callable[[Event], bool] | None = None,
        timeout: float = 5.0,
    ) -> Event:
        """The first recorded event matching the filter (and `where`), waiting up to `timeout` seconds
        for it to be published; raises `TimeoutError` if it is not."""
        match = TypeFilter(types)
        seen = 0
        with anyio.fail_after(timeout):
            while True:
                for ev in self.published[seen:]:
                    if not match(ev.type) or (subject is not None and ev.subject != subject):
                        continue
                    if where is None or where(ev):
                        return ev
                seen = len(self.published)
                await self._changed.wait()

    def clear(self) -> None:
        """Forget the recorded events (the seq counters go on)."""
        self.published.clear()

    async def __aenter__(self) -> TestBus:
        self._serving = self.serve()
        await self._serving.__aenter__()  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._serving is not None:
                await self._serving.__aexit__(None, None, None)  # type: ignore[attr-defined]
                self._serving = None
        finally:
            await self.close()

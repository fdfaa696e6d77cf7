"""reactor-rt events: typed CloudEvents schemas, msgpack codec, event buses and the durable event log.

    from reactor_rt.events import InProcessBus, EventLog, Query

    bus = InProcessBus(EventLog("events.db"))
    sub = await bus.subscribe(types={"rx.response."}, subject="alice")
    await bus.publish(Query(subject="alice", source="me", data={"text": "Hi"}))   # stamped with seq 1

`RayBus` (the same `EventBus` API over a Ray actor) loads Ray on first use; `reactor_rt.events.testing`
has `TestBus` for users' own tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reactor_rt.events import codec
from reactor_rt.events.bus import EventBus, InProcessBus, InProcessSubscription, Subscription
from reactor_rt.events.cloudevent_json import from_cloudevent_json, to_cloudevent_json
from reactor_rt.events.codec import CodecLimits, decode, encode
from reactor_rt.events.filters import TypeFilter
from reactor_rt.events.hub import OVERFLOW_POLICIES, OverflowPolicy
from reactor_rt.events.log import EventLog
from reactor_rt.events.schemas import (
    DURABLE_TYPES,
    EVENT_TYPES,
    AnyEvent,
    ErrorEvent,
    Event,
    LearningApplied,
    LearningFeedback,
    MemoryUpdated,
    MemoryUpdating,
    Query,
    ResponseChunk,
    ResponseDone,
    StreamClosed,
    StreamOpened,
    ThoughtQuery,
    ThoughtResponse,
    event_class,
    parse_event,
    with_seq,
)

if TYPE_CHECKING:
    from reactor_rt.events.ray_bus import EventBusActor, RayBus

__all__ = [
    "DURABLE_TYPES",
    "EVENT_TYPES",
    "OVERFLOW_POLICIES",
    "AnyEvent",
    "CodecLimits",
    "ErrorEvent",
    "Event",
    "EventBus",
    "EventBusActor",
    "EventLog",
    "InProcessBus",
    "InProcessSubscription",
    "LearningApplied",
    "LearningFeedback",
    "MemoryUpdated",
    "MemoryUpdating",
    "OverflowPolicy",
    "Query",
    "RayBus",
    "ResponseChunk",
    "ResponseDone",
    "StreamClosed",
    "StreamOpened",
    "Subscription",
    "ThoughtQuery",
    "ThoughtResponse",
    "TypeFilter",
    "codec",
    "decode",
    "encode",
    "event_class",
    "from_cloudevent_json",
    "parse_event",
    "to_cloudevent_json",
    "with_seq",
]

# Ray is heavy to import: load the Ray bus only when it is asked for
_LAZY = {"RayBus": "reactor_rt.events.ray_bus", "EventBusActor": "reactor_rt.events.ray_bus"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'reactor_rt.events' has no attribute {name!r}")

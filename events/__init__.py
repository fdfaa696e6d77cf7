"""reactor-rt events: typed CloudEvents schemas, msgpack codec, event buses and the durable event log."""

from __future__ import annotations

from reactor_rt.events import codec
from reactor_rt.events.cloudevent_json import from_cloudevent_json, to_cloudevent_json
from reactor_rt.events.codec import CodecLimits, decode, encode
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
)

__all__ = [
    "DURABLE_TYPES",
    "EVENT_TYPES",
    "AnyEvent",
    "CodecLimits",
    "ErrorEvent",
    "Event",
    "LearningApplied",
    "LearningFeedback",
    "MemoryUpdated",
    "MemoryUpdating",
    "Query",
    "ResponseChunk",
    "ResponseDone",
    "StreamClosed",
    "StreamOpened",
    "ThoughtQuery",
    "ThoughtResponse",
    "codec",
    "decode",
    "encode",
    "event_class",
    "from_cloudevent_json",
    "parse_event",
    "to_cloudevent_json",
]

"""Event schemas: CloudEvents 1.0 attributes plus `seq`, `interaction` and a typed `data` (DESIGN.md §4).

Every event class is a frozen pydantic model with ``extra="forbid"``; `AnyEvent` is the discriminated
union on ``type`` that the codec and the CloudEvents JSON reader validate against.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from reactor_rt.errors import EventDecodeError

__all__ = [
    "DURABLE_TYPES",
    "EVENT_TYPES",
    "AnyEvent",
    "ErrorData",
    "ErrorEvent",
    "Event",
    "EventData",
    "LearningApplied",
    "LearningAppliedData",
    "LearningFeedback",
    "LearningFeedbackData",
    "MemoryUpdated",
    "MemoryUpdatedData",
    "MemoryUpdating",
    "MemoryUpdatingData",
    "Query",
    "QueryData",
    "ResponseChunk",
    "ResponseChunkData",
    "ResponseDone",
    "ResponseDoneData",
    "StreamClosed",
    "StreamClosedData",
    "StreamOpened",
    "StreamOpenedData",
    "ThoughtData",
    "ThoughtQuery",
    "ThoughtResponse",
    "event_class",
    "parse_event",
    "with_seq",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- data payloads (DESIGN.md §4 table)


class EventData(BaseModel):
    """Base of every event's ``data``: frozen, no unknown fields."""

    model_config = _FROZEN


class StreamOpenedData(EventData):
    """A stream was created or loaded; `stm_version` is the STM version it starts from."""

    memory: str
    stm_version: int


class StreamClosedData(EventData):
    """A stream was closed; `reason` is free text for operators."""

    reason: str | None = None


class QueryData(EventData):
    """An external query. Optional fields let a publisher override the model's sampler per query."""

    text: str
    tokens: int | None = None  # token count, filled in by the runtime once tokenised
    memory: str | None = None  # memory id to read/write; the stream's own memory when None
    internal: bool = False  # True for queries the runtime makes to itself
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None


class ResponseChunkData(EventData):
    """A piece of generated text (one or several tokens)."""

    text: str
    tokens: int | None = None


class ResponseDoneData(EventData):
    """The full answer; `stm_version` is the STM version the answer read."""

    text: str
    tokens: int
    stm_version: int
    query_tokens: int | None = None
    finish_reason: str | None = None  # "eos" | "length" | ...
    first_token_ms: float | None = None
    generate_ms: float | None = None
    weights_version: int | None = None  # the live-learning weights version that produced the answer


class MemoryUpdatingData(EventData):
    """A background memory update started from `from_version`."""

    memory: str
    from_version: int
    input_ids: list[int] | None = None  # the encoder's input: replayed when a crash loses the update


class MemoryUpdatedData(EventData):
    """A background memory update ended; `version` is the new, persisted STM version."""

    memory: str
    version: int
    update_ms: float | None = None


class ThoughtLoopState(EventData):
    """A thought loop's budget and counters, carried by its events so a restart can resume it."""

    steps: int | None = None
    tokens: int | None = None
    seconds: float | None = None
    stop: str | None = None  # a stop string (a stop predicate is not persisted)
    resume: bool = False
    pause_on_query: bool = False
    used_steps: int = 0
    used_tokens: int = 0
    used_seconds: float = 0.0


class ThoughtData(EventData):
    """One step of a thought loop."""

    text: str
    step: int
    loop: str | None = None  # the loop's id
    final: bool = False  # the loop ends with this response
    reason: str | None = None  # why it ends: steps | tokens | seconds | stop | stopped | query | empty | error | closed
    state: ThoughtLoopState | None = None


class LearningFeedbackData(EventData):
    """Feedback on interaction `target`: a reward and/or a corrected answer."""

    target: str
    reward: float | None = None
    correction: str | None = None


class LearningAppliedData(EventData):
    """A live-learning update was applied."""

    weights_version: int
    loss_before: float
    loss_after: float
    target: str | None = None


class ErrorData(EventData):
    """A typed error: `code` is machine readable (e.g. "query_too_long"), `message` is for people."""

    code: str
    message: str


# ---------------------------------------------------------------- events


class Event(BaseModel):
    """Base event: the CloudEvents 1.0 attributes plus `seq`, `interaction` and typed `data`.

    `seq` is 0 until a bus stamps it (``event.model_copy(update={"seq": n})``).
    """

    model_config = _FROZEN

    id: str = Field(default_factory=_new_id, min_length=1)
    source: str = Field(min_length=1)
    specversion: Literal["1.0"] = "1.0"
    type: str
    subject: str = Field(min_length=1)
    time: AwareDatetime = Field(default_factory=_now)
    seq: int = Field(default=0, ge=0, lt=2**63)
    interaction: str = ""
    data: EventData

    def to_cloudevent_json(self) -> str:
        """This event as a structured-mode CloudEvents 1.0 JSON document."""
        from reactor_rt.events.cloudevent_json import to_cloudevent_json

        return to_cloudevent_json(self)


class StreamOpened(Event):
    """``rx.stream.opened``: a stream is created or loaded."""

    type: Literal["rx.stream.opened"] = "rx.stream.opened"
    data: StreamOpenedData


class StreamClosed(Event):
    """``rx.stream.closed``: a stream is closed."""

    type: Literal["rx.stream.closed"] = "rx.stream.closed"
    data: StreamClosedData = Field(default_factory=StreamClosedData)


class Query(Event):
    """``rx.query``: an external query; its `interaction` defaults to its own `id`."""

    type: Literal["rx.query"] = "rx.query"
    data: QueryData

    @model_validator(mode="after")
    def _interaction_defaults_to_id(self) -> Query:
        if not self.interaction:
            object.__setattr__(self, "interaction", self.id)  # frozen: set once, during validation
        return self


class ResponseChunk(Event):
    """``rx.response.chunk``: streamed generated text."""

    type: Literal["rx.response.chunk"] = "rx.response.chunk"
    data: ResponseChunkData


class ResponseDone(Event):
    """``rx.response.done``: the full answer, token counts and timings."""

    type: Literal["rx.response.done"] = "rx.response.done"
    data: ResponseDoneData


class MemoryUpdating(Event):
    """``rx.memory.updating``: a background memory update starts."""

    type: Literal["rx.memory.updating"] = "rx.memory.updating"
    data: MemoryUpdatingData


class MemoryUpdated(Event):
    """``rx.memory.updated``: a background memory update ended (new STM version)."""

    type: Literal["rx.memory.updated"] = "rx.memory.updated"
    data: MemoryUpdatedData


class ThoughtQuery(Event):
    """``rx.thought.query``: an internal query of a thought loop."""

    type: Literal["rx.thought.query"] = "rx.thought.query"
    data: ThoughtData


class ThoughtResponse(Event):
    """``rx.thought.response``: an internal response of a thought loop."""

    type: Literal["rx.thought.response"] = "rx.thought.response"
    data: ThoughtData


class LearningFeedback(Event):
    """``rx.learning.feedback``: feedback on an interaction."""

    type: Literal["rx.learning.feedback"] = "rx.learning.feedback"
    data: LearningFeedbackData


class LearningApplied(Event):
    """``rx.learning.applied``: a live-learning update was applied."""

    type: Literal["rx.learning.applied"] = "rx.learning.applied"
    data: LearningAppliedData


class ErrorEvent(Event):
    """``rx.error``: a clear, typed error for one interaction or stream."""

    type: Literal["rx.error"] = "rx.error"
    data: ErrorData


_CLASSES: tuple[type[Event], ...] = (
    StreamOpened,
    StreamClosed,
    Query,
    ResponseChunk,
    ResponseDone,
    MemoryUpdating,
    MemoryUpdated,
    ThoughtQuery,
    ThoughtResponse,
    LearningFeedback,
    LearningApplied,
    ErrorEvent,
)

AnyEvent = Annotated[
    StreamOpened
    | StreamClosed
    | Query
    | ResponseChunk
    | ResponseDone
    | MemoryUpdating
    | MemoryUpdated
    | ThoughtQuery
    | ThoughtResponse
    | LearningFeedback
    | LearningApplied
    | ErrorEvent,
    Field(discriminator="type"),
]

_BY_TYPE: dict[str, type[Event]] = {cls.model_fields["type"].default: cls for cls in _CLASSES}

EVENT_TYPES: tuple[str, ...] = tuple(_BY_TYPE)
"""Every event type name, in DESIGN.md §4 order."""

DURABLE_TYPES: frozenset[str] = frozenset(t for t in EVENT_TYPES if t != "rx.response.chunk")
"""Types the durable log keeps by default: all but streamed chunks."""

_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyEvent)


def with_seq(event: Event, seq: int) -> Event:
    """`event` stamped with `seq`: the same as ``event.model_copy(update={"seq": seq})``, about twice
    as fast (a bus stamps every event it publishes). Like model_copy, it does not re-validate."""
    new = object.__new__(event.__class__)
    fields = event.__dict__.copy()
    fields["seq"] = seq
    # what pydantic's own copy sets: field values, the set of explicitly set fields, no extras/privates
    object.__setattr__(new, "__dict__", fields)
    object.__setattr__(new, "__pydantic_fields_set__", event.__pydantic_fields_set__ | {"seq"})
    object.__setattr__(new, "__pydantic_extra__", None)
    object.__setattr__(new, "__pydantic_private__", None)
    return new


def event_class(type_: str) -> type[Event]:
    """The event class for a type name; unknown names raise `EventDecodeError`."""
    try:
        return _BY_TYPE[type_]
    except (KeyError, TypeError):
        raise EventDecodeError(f"unknown event type {type_!r}") from None


def parse_event(obj: dict[str, Any]) -> Event:
    """Validate a plain dict (e.g. from msgpack or JSON) into the event class its ``type`` names.

    Raises `EventDecodeError` for anything that is not a valid event.
    """
    if not isinstance(obj, dict):
        raise EventDecodeError(f"an event must be a map, got {type(obj).__name__}")
    try:
        return _ADAPTER.validate_python(obj)
    except ValidationError as exc:
        raise EventDecodeError(f"invalid {obj.get('type', 'event')!r}: {_short(exc)}") from exc
    except Exception as exc:  # a validator's own failure: still the caller's bad input, not our bug
        raise EventDecodeError(f"invalid event: {exc}") from exc


def _short(exc: ValidationError) -> str:
    errs = exc.errors(include_url=False, include_input=False)
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errs[:3])

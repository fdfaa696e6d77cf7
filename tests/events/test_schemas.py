"""Event schemas: typed data, defaults, the discriminated union, EVENT_TYPES / DURABLE_TYPES."""

from __future__ import annotations

from datetime import UTC, datetime

import pydantic
import pytest

from reactor_rt import EventDecodeError
from reactor_rt.events import (
    DURABLE_TYPES,
    EVENT_TYPES,
    ErrorEvent,
    Event,
    LearningFeedback,
    Query,
    ResponseChunk,
    ResponseDone,
    StreamClosed,
    event_class,
    parse_event,
)
from reactor_rt.events.schemas import with_seq


def test_event_types_cover_design_section_4():
    assert EVENT_TYPES == (
        "rx.stream.opened",
        "rx.stream.closed",
        "rx.query",
        "rx.response.chunk",
        "rx.response.done",
        "rx.memory.updating",
        "rx.memory.updated",
        "rx.thought.query",
        "rx.thought.response",
        "rx.learning.feedback",
        "rx.learning.applied",
        "rx.error",
    )
    assert set(EVENT_TYPES) - DURABLE_TYPES == {"rx.response.chunk"}
    for name in EVENT_TYPES:
        assert issubclass(event_class(name), Event)
        assert event_class(name).model_fields["type"].default == name


def test_defaults_seq_zero_time_now_and_query_interaction_is_its_id():
    before = datetime.now(UTC)
    q = Query(subject="alice", source="agent", data={"text": "Hi"})
    assert q.seq == 0 and q.specversion == "1.0" and len(q.id) == 32
    assert before <= q.time <= datetime.now(UTC) and q.time.tzinfo is not None
    assert q.interaction == q.id
    assert Query(subject="a", source="s", interaction="i-9", data={"text": "x"}).interaction == "i-9"
    # other events do not invent an interaction
    assert ResponseChunk(subject="a", source="s", data={"text": "x"}).interaction == ""


def test_stamping_seq_with_model_copy_keeps_the_rest():
    q = Query(subject="alice", source="agent", data={"text": "Hi"})
    stamped = q.model_copy(update={"seq": 7})
    assert stamped.seq == 7 and q.seq == 0
    assert stamped.id == q.id and stamped.interaction == q.interaction and stamped.data is q.data


def test_with_seq_equals_model_copy():
    q = Query(subject="alice", source="agent", data={"text": "Hi"})
    fast, slow = with_seq(q, 9), q.model_copy(update={"seq": 9})
    assert fast == slow and type(fast) is Query and fast.model_fields_set == slow.model_fields_set
    assert fast.model_dump() == slow.model_dump() and q.seq == 0
    with pytest.raises(pydantic.ValidationError):
        fast.seq = 3  # still frozen


def test_optional_data_fields():
    done = ResponseDone(
        subject="a",
        source="decoder",
        data={"text": "x", "tokens": 1, "stm_version": 2, "finish_reason": "eos", "generate_ms": 1.5},
    )
    assert done.data.first_token_ms is None and done.data.finish_reason == "eos"
    fb = LearningFeedback(subject="a", source="user", data={"target": "i-1"})
    assert fb.data.reward is None and fb.data.correction is None
    assert StreamClosed(subject="a", source="s").data.reason is None
    q = Query(subject="a", source="s", data={"text": "x", "temperature": 0.7, "max_new_tokens": 8})
    assert q.data.temperature == 0.7 and q.data.internal is False


@pytest.mark.parametrize(
    "bad",
    [
        {"subject": "", "source": "s", "data": {"text": "x"}},  # empty subject
        {"subject": "a", "source": "", "data": {"text": "x"}},  # empty source
        {"subject": "a", "source": "s", "data": {"text": "x", "extra": 1}},  # unknown data field
        {"subject": "a", "source": "s", "data": {"text": "x"}, "seq": -1},
        {"subject": "a", "source": "s", "data": {"text": "x"}, "time": datetime(2024, 1, 1)},  # naive
        {"subject": "a", "source": "s", "data": {"text": "x"}, "type": "rx.error"},
        {"subject": "a", "source": "s", "data": {"text": "x"}, "specversion": "0.3"},
    ],
)
def test_invalid_events_are_rejected(bad):
    with pytest.raises(pydantic.ValidationError):
        Query(**bad)


def test_parse_event_picks_the_class_from_type():
    ev = ErrorEvent(subject="a", source="s", data={"code": "query_too_long", "message": "m"})
    back = parse_event(ev.model_dump())
    assert type(back) is ErrorEvent and back == ev


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "rx.nope", "subject": "a", "source": "s", "data": {}},
        {"subject": "a", "source": "s", "data": {"text": "x"}},  # no type
        {"type": "rx.query", "subject": "a", "source": "s"},  # no data
        {"type": ["rx.query"], "subject": "a", "source": "s", "data": {"text": "x"}},
        [1, 2, 3],
    ],
)
def test_parse_event_errors_are_event_decode_errors(obj):
    with pytest.raises(EventDecodeError):
        parse_event(obj)


def test_event_class_unknown_type():
    with pytest.raises(EventDecodeError):
        event_class("rx.unknown")

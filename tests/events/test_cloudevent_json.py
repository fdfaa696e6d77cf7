"""CloudEvents JSON interop, checked against the official `cloudevents` SDK in both directions."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from cloudevents.v1.http import from_json as v1_from_json

from reactor_rt import EventDecodeError
from reactor_rt.events import (
    EVENT_TYPES,
    LearningFeedback,
    ResponseDone,
    from_cloudevent_json,
    to_cloudevent_json,
)
from reactor_rt.events.testing import example_event


def sample(type_: str):
    return example_event(type_, source="reactor-rt/decoder", seq=7, interaction="i-1")


@pytest.mark.parametrize("type_", EVENT_TYPES)
def test_official_sdk_reads_what_we_write(type_):
    ev = sample(type_)
    text = ev.to_cloudevent_json()
    ce = JSONFormat().read(None, text)  # the SDK's own structured-mode JSON reader validates attributes
    assert ce.get_id() == ev.id and ce.get_type() == type_ and ce.get_source() == ev.source
    assert ce.get_specversion() == "1.0" and ce.get_subject() == "alice"
    assert ce.get_time() == ev.time
    assert ce.get_extension("seq") == 7 and ce.get_extension("interaction") == "i-1"
    assert ce.get_data() == ev.data.model_dump()
    assert ce.get_datacontenttype() == "application/json"
    legacy = v1_from_json(text)  # the older v1 API too
    assert legacy["type"] == type_ and legacy["seq"] == 7 and legacy.data == ev.data.model_dump(mode="json")


def test_we_read_what_the_sdk_writes():
    when = datetime(2025, 5, 1, 12, 30, 0, 123456, tzinfo=UTC)
    ce = CloudEvent(
        attributes={
            "id": "abc",
            "source": "other-system",
            "type": "rx.learning.feedback",
            "specversion": "1.0",
            "subject": "bob",
            "time": when,
            "datacontenttype": "application/json",
            "seq": 3,
            "interaction": "i-7",
        },
        data={"target": "i-7", "reward": 1.0, "correction": None},
    )
    ev = from_cloudevent_json(JSONFormat().write(ce))
    assert isinstance(ev, LearningFeedback)
    assert (ev.id, ev.subject, ev.seq, ev.interaction, ev.time) == ("abc", "bob", 3, "i-7", when)
    assert ev.data.reward == 1.0


def test_round_trip_and_z_time():
    ev = sample("rx.response.done")
    doc = json.loads(to_cloudevent_json(ev))
    assert doc["time"].endswith("Z")
    assert from_cloudevent_json(ev.to_cloudevent_json()) == ev
    assert from_cloudevent_json(ev.to_cloudevent_json().encode()) == ev


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '{"type": "rx.nope", "id": "1", "source": "s", "specversion": "1.0", "subject": "a", "data": {}}',
        json.dumps({**json.loads(sample("rx.query").to_cloudevent_json()), "datacontenttype": "text/plain"}),
        json.dumps({**json.loads(sample("rx.query").to_cloudevent_json()), "data_base64": "AAAA"}),
        json.dumps({**json.loads(sample("rx.query").to_cloudevent_json()), "time": "yesterday"}),
    ],
)
def test_bad_documents_are_event_decode_errors(text):
    with pytest.raises(EventDecodeError):
        from_cloudevent_json(text)


def test_response_done_data_survives_json():
    data = {"text": "héllo ✓", "tokens": 2, "stm_version": 1, "generate_ms": 12.5}
    ev = ResponseDone(subject="a", source="s", data=data)
    assert from_cloudevent_json(ev.to_cloudevent_json()) == ev


@pytest.mark.parametrize("depth", [100_000, 900])
def test_a_deeply_nested_document_is_an_event_decode_error(depth):
    nested = "[" * depth + "]" * depth
    doc = ('{"specversion":"1.0","id":"x","source":"t","type":"rx.query","subject":"s",'
           f'"time":"2024-01-01T00:00:00Z","data":{{"text":{nested}}}}}')
    with pytest.raises(EventDecodeError):
        from_cloudevent_json(doc)
    with pytest.raises(EventDecodeError):
        from_cloudevent_json(nested.encode())


def test_a_time_with_another_offset_is_written_in_utc_and_read_by_the_sdk():
    from datetime import timedelta, timezone

    # an offset with seconds is valid for Python but not RFC 3339: the SDK refused the whole document
    for offset in (timedelta(hours=2), timedelta(hours=5, minutes=30, seconds=30), timedelta(hours=-7)):
        when = datetime(2026, 1, 1, 12, 0, 0, 250000, tzinfo=timezone(offset))
        ev = example_event("rx.query", time=when)
        doc = json.loads(to_cloudevent_json(ev))
        assert doc["time"].endswith("Z")
        assert JSONFormat().read(None, to_cloudevent_json(ev)).get_time() == when  # the same instant
        assert from_cloudevent_json(to_cloudevent_json(ev)) == ev


def test_non_finite_floats_make_strict_json_and_come_back():
    import math

    from reactor_rt.events import LearningApplied

    ev = LearningApplied(subject="a", source="learner",
                         data={"weights_version": 3, "loss_before": float("nan"), "loss_after": float("inf")})
    text = to_cloudevent_json(ev)

    def refuse(constant: str) -> None:  # what a strict (RFC 8259) reader does with NaN / Infinity
        raise ValueError(f"not JSON: {constant}")

    doc = json.loads(text, parse_constant=refuse)
    assert doc["data"]["loss_before"] == "NaN" and doc["data"]["loss_after"] == "Infinity"
    back = from_cloudevent_json(text)
    assert math.isnan(back.data.loss_before) and back.data.loss_after == math.inf
    feedback = LearningFeedback(subject="a", source="s", data={"target": "i", "reward": -math.inf})
    assert from_cloudevent_json(to_cloudevent_json(feedback)) == feedback


def test_other_systems_extension_attributes_are_ignored():
    """Any CloudEvent may carry extensions, and brokers add theirs on the way (tracing, Knative, Dapr):
    an agent reading our events through one must still get the event."""
    ev = sample("rx.response.done")
    doc = json.loads(to_cloudevent_json(ev))
    doc.update({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "tracestate": "rojo=00f067aa0ba902b7", "knativearrivaltime": "2026-01-01T00:00:00Z",
                "pubsubname": "events", "topic": "rx", "dataschema": "https://example.com/schema",
                "partitionkey": "alice", "sequence2": 9})
    assert from_cloudevent_json(json.dumps(doc)) == ev
    ce = CloudEvent(attributes={"id": "abc", "source": "s", "type": "rx.query", "specversion": "1.0",
                                "subject": "bob", "seq": 2, "traceparent": "00-1-2-01"}, data={"text": "hi"})
    got = from_cloudevent_json(JSONFormat().write(ce))
    assert (got.id, got.seq, got.data.text) == ("abc", 2, "hi")
    for bad in ({**doc, "Extra_Field": 1}, {**doc, "data": {**doc["data"], "unknown": 1}}):
        with pytest.raises(EventDecodeError):  # not an attribute name CloudEvents allows, or inside data
            from_cloudevent_json(json.dumps(bad))

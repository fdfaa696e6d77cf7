"""msgpack codec: exact round trips, the in-place seq stamp, limits, and fuzzing of decode."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reactor_rt import EventDecodeError, EventEncodeError, ReactorError
from reactor_rt.events import EVENT_TYPES, Query, ResponseChunk, ResponseDone, codec
from reactor_rt.events.codec import CodecLimits, decode, encode, frame_seq, stamp_seq
from reactor_rt.events.testing import EXAMPLE_DATA, example_event


def make(type_: str, seq: int = 0):
    return example_event(type_, seq=seq)


def test_example_data_covers_every_type():
    assert set(EXAMPLE_DATA) == set(EVENT_TYPES)


@pytest.mark.parametrize("type_", EVENT_TYPES)
def test_round_trip_is_exact(type_):
    ev = make(type_, seq=12345)
    back = decode(encode(ev))
    assert type(back) is type(ev) and back == ev
    assert back.time == ev.time and back.time.utcoffset().total_seconds() == 0


def test_frame_is_plain_msgpack():
    ev = make("rx.response.done", seq=3)
    obj = msgpack.unpackb(encode(ev), timestamp=3)
    assert obj["seq"] == 3 and obj["type"] == "rx.response.done" and obj["data"]["tokens"] == 2
    assert obj["time"] == ev.time
    # a frame written by any msgpack encoder (seq packed minimally) decodes too
    assert decode(msgpack.packb(obj, datetime=True)) == ev


@pytest.mark.parametrize("seq", [1, 255, 2**32 + 5, 2**63 - 1])
def test_stamp_seq_in_place(seq):
    ev = make("rx.query")
    frame = stamp_seq(encode(ev), seq)
    assert frame_seq(frame) == seq
    assert decode(frame) == ev.model_copy(update={"seq": seq})


def test_stamp_seq_on_a_foreign_frame():
    ev = make("rx.query")
    foreign = msgpack.packb(msgpack.unpackb(encode(ev), timestamp=3), datetime=True)
    assert frame_seq(stamp_seq(foreign, 9)) == 9 and decode(stamp_seq(foreign, 9)).id == ev.id


def test_batches():
    evs = [make(t, seq=i + 1) for i, t in enumerate(EVENT_TYPES)]
    assert codec.decode_batch(codec.encode_batch(evs)) == evs


def test_frame_size_limit_both_ways():
    small = CodecLimits(max_frame_bytes=512)
    big = Query(subject="a", source="s", data={"text": "x" * 1000})
    with pytest.raises(EventEncodeError):
        encode(big, small)
    frame = encode(big)
    with pytest.raises(EventDecodeError, match="limit"):
        decode(frame, small)
    assert decode(frame) == big


def test_string_and_depth_limits():
    with pytest.raises(EventDecodeError):
        decode(encode(Query(subject="a", source="s", data={"text": "y" * 300})), CodecLimits(max_str_len=100))
    nested: object = 1
    for _ in range(20):
        nested = [nested]
    obj = msgpack.unpackb(encode(make("rx.query")))
    obj["data"]["text"] = nested
    with pytest.raises(EventDecodeError, match="deeper"):
        decode(msgpack.packb(obj))


def test_encode_rejects_non_events():
    with pytest.raises(EventEncodeError):
        encode({"type": "rx.query"})  # type: ignore[arg-type]


def test_decode_rejects_non_bytes():
    with pytest.raises(EventDecodeError):
        decode("not bytes")  # type: ignore[arg-type]


# ---------------------------------------------------------------- fuzzing: only ReactorError escapes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_decode_arbitrary_bytes_raises_only_reactor_errors(raw):
    try:
        ev = decode(raw)
    except ReactorError:
        return
    assert ev.type in EVENT_TYPES  # astronomically unlikely, but then it must be a real event


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
GOOD = msgpack.unpackb(encode(make("rx.response.done", seq=4)), timestamp=0)
FIELDS = sorted(GOOD)
DATA_FIELDS = sorted(GOOD["data"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    top=st.dictionaries(st.sampled_from([*FIELDS, "extra"]), msgpack_values, max_size=3),
    data=st.dictionaries(st.sampled_from([*DATA_FIELDS, "extra"]), msgpack_values, max_size=3),
    drop=st.lists(st.sampled_from(FIELDS), max_size=2),
    type_=st.sampled_from([*EVENT_TYPES, "rx.nope", ""]),
)
def test_decode_valid_msgpack_maps_with_wrong_fields_raises_only_reactor_errors(top, data, drop, type_):
    obj = {**GOOD, "type": type_, "data": {**GOOD["data"], **data}}
    obj.update(top)
    for key in drop:
        obj.pop(key, None)
    raw = msgpack.packb(obj)
    try:
        ev = decode(raw)
    except ReactorError:
        return
    # accepted: then it is a valid event of its type that round-trips
    assert decode(encode(ev)) == ev


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200), seq=st.integers(min_value=0, max_value=2**63 - 1))
def test_round_trip_any_text_and_seq(text, seq):
    for ev in (
        ResponseChunk(subject="s", source="t", seq=seq, data={"text": text}),
        ResponseDone(subject=text or "s", source="t", seq=seq, data={"text": text, "tokens": 0, "stm_version": 0}),
    ):
        assert decode(encode(ev)) == ev

"""msgpack codec: exact round trips, the in-place seq stamp, limits, and fuzzing of decode."""

from __future__ import annotations

import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reactor_rt import EventDecodeError, EventEncodeError, ReactorError
from reactor_rt.events import EVENT_TYPES, MemoryUpdating, Query, ResponseChunk, ResponseDone, codec
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


# ---------------------------------------------------------------- memory bound of one decode


def _array(items: list[bytes]) -> bytes:
    return b"\xdc" + len(items).to_bytes(2, "big") + b"".join(items)


def _in_a_frame(value: bytes) -> bytes:
    return b"\x81\xa4data" + value  # {"data": value}


def _peak_during_refused_decode(frame: bytes) -> tuple[str, float]:
    tracemalloc.start()
    try:
        with pytest.raises(EventDecodeError) as info:
            decode(frame)
        return str(info.value), tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def test_a_frame_of_many_empty_containers_is_refused_without_building_them():
    # ~4 MiB: 4096 arrays of 1000 empty arrays (one byte each on the wire, ~60 bytes each in Python:
    # decoded whole this is ~4M lists, over 250 MB)
    frame = _in_a_frame(_array([_array([b"\x90"] * 1000)] * 4096))
    assert len(frame) <= codec.DEFAULT_LIMITS.max_frame_bytes
    message, peak_mb = _peak_during_refused_decode(frame)
    assert peak_mb < 50 and "more than" in message


def test_a_deep_frame_is_refused_before_its_levels_are_built():
    # every level holds 4095 two-letter strings and the next level: nothing ends before the innermost
    level = _array([b"\xa2" + bytes((65 + i % 26, 65 + i // 26 % 26)) for i in range(4095)] + [b""])
    frame = _in_a_frame(level * 300 + b"\x90")
    message, peak_mb = _peak_during_refused_decode(frame)
    assert peak_mb < 50 and "deeper than" in message


def test_the_item_bound_is_far_above_real_events():
    ids = list(range(100_000, 100_000 + codec.DEFAULT_LIMITS.max_container_len))  # a full token-id list
    ev = MemoryUpdating(subject="s", source="t", data={"memory": "m", "from_version": 1, "input_ids": ids})
    frame = encode(ev)
    assert decode(frame) == ev
    assert decode(frame, CodecLimits(max_total_items=len(frame) - 1)) == ev  # walked, and within the bound
    with pytest.raises(EventDecodeError, match="more than 100 msgpack objects"):
        decode(frame, CodecLimits(max_total_items=100))
    long = ResponseDone(subject="s", source="t", data={"text": "x" * 1_000_000, "tokens": 1, "stm_version": 1})
    assert decode(encode(long)) == long  # a large frame with few items passes the walk


def test_a_truncated_large_frame_is_a_decode_error():
    frame = _in_a_frame(_array([_array([b"\x90"] * 4096)] * 16))
    assert len(frame) > 65536  # long enough to be walked
    for cut in (1, 4096, len(frame) // 2):
        with pytest.raises(EventDecodeError, match="malformed"):
            decode(frame[:-cut], CodecLimits(max_total_items=len(frame) - 1))

"""msgpack wire format for events, with limits; every failure is an `EventDecodeError`.

A frame is one msgpack map whose keys are the event's field names, ``data`` a nested map (optional
fields that are None left out) and ``time`` a msgpack Timestamp. `encode` always writes ``seq`` first, as a fixed-width uint64, so a bus can stamp the
sequence number into an encoded frame with one byte splice (`stamp_seq`) instead of a decode/encode
round trip. Any msgpack reader decodes the frame; the fixed layout is an optimisation, not a contract.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from pydantic import BaseModel

from reactor_rt.errors import EventDecodeError, EventEncodeError
from reactor_rt.events.schemas import Event, parse_event

__all__ = [
    "DEFAULT_LIMITS",
    "CodecLimits",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
    "frame_seq",
    "stamp_seq",
]


@dataclass(frozen=True, slots=True)
class CodecLimits:
    """Bounds on what `decode` accepts (and `encode` writes): a hostile frame cannot exhaust memory."""

    max_frame_bytes: int = 4 * 1024 * 1024
    max_depth: int = 8  # events nest 2 levels (event -> data); room for optional nested fields
    max_str_len: int = 2 * 1024 * 1024
    max_container_len: int = 4096  # entries of one map or array
    # msgpack objects in the whole frame (maps, arrays, keys, values): one byte on the wire can be an empty
    # container (~60 bytes in Python), so without this a 4 MiB frame decodes to ~4M objects (~280 MB).
    # Real events hold ~30, plus at most one token-id list (<= max_container_len).
    max_total_items: int = 65536


DEFAULT_LIMITS = CodecLimits()

# the seq slot: map header (1 byte), key "seq" (fixstr, 4 bytes), uint64 marker (1 byte), 8 value bytes
_SEQ_KEY = b"\xa3seq\xcf"
_SEQ_AT = 1 + len(_SEQ_KEY)  # offset of the 8 value bytes
_SEQ_END = _SEQ_AT + 8
_CONTAINERS = (dict, list)
_ARRAY_HEADS = frozenset((*range(0x90, 0xA0), 0xDC, 0xDD))  # fixarray, array 16, array 32
_MAP_HEADS = frozenset((*range(0x80, 0x90), 0xDE, 0xDF))  # fixmap, map 16, map 32


def encode(event: Event, limits: CodecLimits = DEFAULT_LIMITS) -> bytes:
    """Encode one event as a msgpack frame (``seq`` first, fixed width; see the module docstring).

    Optional data fields that are None are left out (decoding restores their default, None).
    """
    if not isinstance(event, Event):
        raise EventEncodeError(f"not an event: {type(event).__name__}")
    # the models' __dict__ hold exactly their field values: cheaper than model_dump, and the
    # `default` hook below still dumps any nested model a future field may hold
    fields = event.__dict__.copy()
    seq = fields.pop("seq")
    fields["data"] = {k: v for k, v in event.data.__dict__.items() if v is not None}
    try:
        body = msgpack.packb(fields, datetime=True, default=_dump_model)
    except Exception as exc:  # a value msgpack cannot represent
        raise EventEncodeError(f"cannot encode {event.type!r}: {exc}") from exc
    # body starts with a fixmap header (an event has < 15 fields); add one entry for seq in front
    frame = b"".join((bytes((body[0] + 1,)), _SEQ_KEY, seq.to_bytes(8, "big"), memoryview(body)[1:]))
    if len(frame) > limits.max_frame_bytes:
        raise EventEncodeError(
            f"{event.type!r} encodes to {len(frame)} bytes, over the {limits.max_frame_bytes}-byte frame limit"
        )
    return frame


def _dump_model(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump()
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def encode_batch(events: Iterable[Event], limits: CodecLimits = DEFAULT_LIMITS) -> list[bytes]:
    """Encode several events, one frame each."""
    return [encode(ev, limits) for ev in events]


def decode(raw: bytes | bytearray | memoryview, limits: CodecLimits = DEFAULT_LIMITS) -> Event:
    """Decode and validate one frame into its event class.

    Malformed bytes, unknown types, wrong field types and oversize frames raise `EventDecodeError`.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise EventDecodeError(f"expected bytes, got {type(raw).__name__}")
    if len(raw) > limits.max_frame_bytes:
        raise EventDecodeError(f"frame of {len(raw)} bytes is over the {limits.max_frame_bytes}-byte limit")
    # every msgpack object takes at least one byte, so only a frame longer than the bound can exceed it:
    # nearly every real event skips this walk (a long text is one object: its walk is a few steps)
    if len(raw) > limits.max_total_items:
        _check_shape(raw, limits)
    try:
        obj = msgpack.unpackb(
            raw,
            raw=False,
            timestamp=3,  # Timestamp ext -> aware UTC datetime
            strict_map_key=True,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_str_len,
            max_array_len=limits.max_container_len,
            max_map_len=limits.max_container_len,
            max_ext_len=64,
        )
    except Exception as exc:  # msgpack raises ValueError, ExtraData, StackError, UnicodeDecodeError, ...
        raise EventDecodeError(f"malformed msgpack frame: {exc}") from exc
    if not isinstance(obj, dict):
        raise EventDecodeError(f"an event frame must be a map, got {type(obj).__name__}")
    _check_depth(obj, limits.max_depth)
    return parse_event(obj)


def decode_batch(frames: Sequence[bytes], limits: CodecLimits = DEFAULT_LIMITS) -> list[Event]:
    """Decode several frames; the first bad one raises `EventDecodeError`."""
    return [decode(raw, limits) for raw in frames]


def stamp_seq(frame: bytes, seq: int) -> bytes:
    """Return `frame` with its ``seq`` set to `seq`, without decoding it when it has `encode`'s layout."""
    if frame[1:_SEQ_AT] == _SEQ_KEY:
        return frame[:_SEQ_AT] + seq.to_bytes(8, "big") + frame[_SEQ_END:]
    return encode(decode(frame).model_copy(update={"seq": seq}))


def frame_seq(frame: bytes) -> int:
    """The ``seq`` written in a frame (read in place for `encode`'s layout)."""
    if frame[1:_SEQ_AT] == _SEQ_KEY:
        return int.from_bytes(frame[_SEQ_AT:_SEQ_END], "big")
    return decode(frame).seq


def _check_depth(obj: dict[str, Any], max_depth: int) -> None:
    # fast path for every well-formed event: no container below the top-level map but `data`,
    # and nothing but scalars inside `data`
    nested = [v for v in obj.values() if isinstance(v, _CONTAINERS)]
    if not nested:
        return
    if max_depth >= 2 and not any(
        isinstance(x, _CONTAINERS) for v in nested for x in (v.values() if isinstance(v, dict) else v)
    ):
        return
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise EventDecodeError(f"frame nests deeper than {max_depth} levels")
        for value in node.values() if isinstance(node, dict) else node:
            if isinstance(value, dict | list):
                stack.append((value, depth + 1))


def _check_shape(raw: bytes | bytearray | memoryview, limits: CodecLimits) -> None:
    """Refuse a frame nesting deeper than ``max_depth`` or holding more than ``max_total_items`` msgpack
    objects, reading only its headers (nothing is built): a decode never holds more.

    Counting as msgpack builds the containers (its list/object hooks) is not enough: they run as each
    container completes, and a deep frame keeps every level's entries alive until the innermost ends.
    """
    unpacker = msgpack.Unpacker(
        max_str_len=limits.max_str_len,
        max_bin_len=limits.max_str_len,
        max_array_len=limits.max_container_len,
        max_map_len=limits.max_container_len,
        max_ext_len=64,
    )
    unpacker.feed(raw)
    bound, max_depth = limits.max_total_items, limits.max_depth
    left = [1]  # objects still to read in each open container, outermost first (a map entry is 2)
    items = 0
    try:
        while left:
            if not left[-1]:
                left.pop()
                continue
            left[-1] -= 1
            items += 1
            if items > bound:
                raise EventDecodeError(f"frame holds more than {bound} msgpack objects")
            head = raw[unpacker.tell()]
            if head in _ARRAY_HEADS:
                left.append(unpacker.read_array_header())
            elif head in _MAP_HEADS:
                left.append(2 * unpacker.read_map_header())
            else:
                unpacker.skip()  # a scalar: skipped without building it
                continue
            if len(left) - 1 > max_depth:
                raise EventDecodeError(f"frame nests deeper than {max_depth} levels")
    except EventDecodeError:
        raise
    except Exception as exc:  # truncated or malformed: OutOfData, IndexError, ValueError, ...
        raise EventDecodeError(f"malformed msgpack frame: {exc}") from exc

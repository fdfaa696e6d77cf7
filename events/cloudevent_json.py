"""CloudEvents 1.0 structured-mode JSON for interop: `seq` and `interaction` travel as extension attributes."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC
from typing import Any

from reactor_rt.errors import EventDecodeError
from reactor_rt.events.schemas import Event, parse_event

__all__ = ["CONTENT_TYPE", "from_cloudevent_json", "to_cloudevent_json"]

CONTENT_TYPE = "application/cloudevents+json"
_DATA_CONTENT_TYPE = "application/json"
_EVENT_FIELDS = frozenset(Event.model_fields)
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+")


def to_cloudevent_json(event: Event) -> str:
    """Write `event` as one CloudEvents 1.0 JSON document (``time`` in RFC 3339, UTC, ``Z``).

    The document is strict JSON (RFC 8259): a non-finite float in ``data`` (a diverged loss, say) is
    written as the string "NaN", "Infinity" or "-Infinity", which `from_cloudevent_json` reads back.
    """
    doc: dict[str, Any] = event.model_dump(mode="json")
    # an event may carry any aware time; other offsets (some with seconds, not RFC 3339) become UTC
    doc["time"] = event.time.astimezone(UTC).isoformat().replace("+00:00", "Z")
    doc["datacontenttype"] = _DATA_CONTENT_TYPE
    doc["data"] = _finite(doc["data"])
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _finite(value: Any) -> Any:
    """`value` with non-finite floats as the strings pydantic reads back as those floats."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def from_cloudevent_json(text: str | bytes) -> Event:
    """Read a CloudEvents 1.0 JSON document written by `to_cloudevent_json` (or any producer that
    uses our types and fields; other systems' extension attributes are ignored). Anything else raises
    `EventDecodeError`."""
    try:
        doc = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise EventDecodeError(f"not a JSON document: {exc}") from exc
    except RecursionError:  # json's decoder recurses once per nesting level
        raise EventDecodeError("JSON document nests too deeply to be an event") from None
    if not isinstance(doc, dict):
        raise EventDecodeError("a CloudEvents JSON document must be an object")
    content_type = doc.pop("datacontenttype", _DATA_CONTENT_TYPE)
    if not isinstance(content_type, str) or "json" not in content_type:
        raise EventDecodeError(f"unsupported datacontenttype {content_type!r}: events carry JSON data")
    if "data_base64" in doc:
        raise EventDecodeError("binary (data_base64) CloudEvents are not reactor-rt events")
    # Any CloudEvent may carry extension attributes, and brokers and tracing add their own on the way
    # (traceparent, Knative's knativearrivaltime, Dapr's topic...): ignore those (support for an
    # extension is optional), as well as the optional dataschema. Only names valid for a CloudEvents
    # attribute (lower-case ASCII letters and digits) are ignored; anything else is still refused.
    for name in [k for k in doc if k not in _EVENT_FIELDS and _ATTRIBUTE_NAME.fullmatch(k)]:
        del doc[name]
    return parse_event(doc)

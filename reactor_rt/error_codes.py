"""The ``code`` of an ``rx.error`` event and the `ReactorError` subclass it stands for, both ways."""

from __future__ import annotations

from reactor_rt.errors import (
    EmptyQueryError,
    InvalidIdError,
    InvalidQueryError,
    QueryTooLongError,
    QueueFullError,
    ReactorError,
    RuntimeUnavailableError,
    StaleVersionError,
    StoreError,
    StreamClosedError,
)

__all__ = ["code_for", "error_for"]

_BY_CODE: dict[str, type[ReactorError]] = {
    "invalid_id": InvalidIdError,
    "empty_query": EmptyQueryError,
    "invalid_query": InvalidQueryError,
    "query_too_long": QueryTooLongError,
    "queue_full": QueueFullError,
    "stream_closed": StreamClosedError,
    "stale_version": StaleVersionError,
    "store": StoreError,
    "unavailable": RuntimeUnavailableError,
    "internal": ReactorError,
}
# most specific first: StaleVersionError is a StoreError
_BY_CLASS: list[tuple[type[ReactorError], str]] = [
    (StaleVersionError, "stale_version"),
    (StoreError, "store"),
    (InvalidIdError, "invalid_id"),
    (EmptyQueryError, "empty_query"),
    (InvalidQueryError, "invalid_query"),
    (QueryTooLongError, "query_too_long"),
    (QueueFullError, "queue_full"),
    (StreamClosedError, "stream_closed"),
    (RuntimeUnavailableError, "unavailable"),
]


def code_for(exc: BaseException) -> str:
    """The event code for an exception; anything unexpected is ``internal``."""
    for cls, code in _BY_CLASS:
        if isinstance(exc, cls):
            return code
    return "internal"


def error_for(code: str, message: str) -> ReactorError:
    """The exception an ``rx.error`` event with this code raises on the client side."""
    return _BY_CODE.get(code, ReactorError)(message)

"""The exception hierarchy: one root, `ReactorError`; every subclass says when it is raised."""

from __future__ import annotations

__all__ = [
    "BusClosedError",
    "CheckpointError",
    "ConfigError",
    "EmptyQueryError",
    "EventDecodeError",
    "EventEncodeError",
    "EventLogError",
    "InvalidIdError",
    "QueryTooLongError",
    "QueueFullError",
    "ReactorError",
    "RuntimeUnavailableError",
    "StaleVersionError",
    "StoreError",
    "StreamClosedError",
    "SubscriberOverflowError",
    "TokenizerError",
    "TrainingError",
]


class ReactorError(Exception):
    """Root of every error reactor-rt raises on purpose."""


class ConfigError(ReactorError, ValueError):
    """Raised when a model or runtime configuration is invalid."""


class CheckpointError(ReactorError):
    """Raised when a checkpoint is missing, corrupt, or does not match its config."""


class TokenizerError(ReactorError):
    """Raised when a tokenizer file cannot be loaded or lacks the special tokens RxT needs."""


class EventDecodeError(ReactorError):
    """Raised when bytes or JSON cannot be decoded into a valid event (malformed, unknown, oversize)."""


class EventEncodeError(ReactorError):
    """Raised when an event cannot be encoded (a value msgpack cannot hold, or a frame over the size limit)."""


class EventLogError(ReactorError):
    """Raised when the durable event log cannot be opened, read or written."""


class SubscriberOverflowError(ReactorError):
    """Raised when a subscriber fell behind beyond its bounded buffer and the bus disconnected it."""


class BusClosedError(ReactorError):
    """Raised when publishing to, or subscribing on, an event bus that has been closed."""


class InvalidIdError(ReactorError, ValueError):
    """Raised when a stream or memory id is not a printable string of 1-256 characters."""


class QueryTooLongError(ReactorError, ValueError):
    """Raised when a query is empty or exceeds the model's query-token limit (never truncated silently)."""


class InvalidQueryError(ReactorError, ValueError):
    """Raised when a query's text cannot be encoded as UTF-8 (a lone surrogate, which a Python string may
    hold): nothing downstream (tokenizer, event log, wire) can carry it."""


class EmptyQueryError(QueryTooLongError):
    """Raised when a query has no text (a length error at the other end of the range)."""


class QueueFullError(ReactorError):
    """Raised when a stream's pending-query queue is full; the query is rejected, not dropped silently."""


class StreamClosedError(ReactorError):
    """Raised when a query is sent on a stream that has been closed."""


class StoreError(ReactorError):
    """Raised when the STM store cannot read or write a memory (I/O failure, corrupt row)."""


class StaleVersionError(StoreError):
    """Raised when a compare-and-set STM write names a version that is no longer the current one."""


class RuntimeUnavailableError(ReactorError):
    """Raised when an actor of the runtime cannot be reached, even after restarts and retries."""


class TrainingError(ReactorError):
    """Raised when training diverges: too many consecutive steps with a non-finite loss or gradient."""

"""reactor-rt: an event-driven actor runtime for Reactive Transformers (RxT).

Heavy parts (torch, Ray) load lazily: ``import reactor_rt`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reactor_rt.errors import (
    BusClosedError,
    CheckpointError,
    ConfigError,
    EmptyQueryError,
    EventDecodeError,
    EventEncodeError,
    EventLogError,
    InvalidIdError,
    InvalidQueryError,
    QueryTooLongError,
    QueueFullError,
    ReactorError,
    RuntimeUnavailableError,
    StaleVersionError,
    StoreError,
    StreamClosedError,
    SubscriberOverflowError,
    TokenizerError,
)

if TYPE_CHECKING:
    from reactor_rt.bundled import load_model
    from reactor_rt.runtime import Reactor

__version__ = "0.1.0"

__all__ = [
    "BusClosedError",
    "CheckpointError",
    "ConfigError",
    "EmptyQueryError",
    "EventDecodeError",
    "EventEncodeError",
    "EventLogError",
    "InvalidIdError",
    "InvalidQueryError",
    "QueryTooLongError",
    "QueueFullError",
    "Reactor",
    "ReactorError",
    "RuntimeUnavailableError",
    "StaleVersionError",
    "StoreError",
    "StreamClosedError",
    "SubscriberOverflowError",
    "TokenizerError",
    "__version__",
    "load_model",
]

_LAZY = {"Reactor": "reactor_rt.runtime", "load_model": "reactor_rt.bundled"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'reactor_rt' has no attribute {name!r}")

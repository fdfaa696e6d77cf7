"""Which Ray failures are worth trying again: one definition for the engine's retries and the local
link (which sends them on as `LinkClosedError`)."""

from __future__ import annotations

import ray.exceptions

__all__ = ["TRANSIENT", "transient", "unwrap"]

# an actor died or is restarting, or an argument it needed was lost with its owner: try again
TRANSIENT = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.ActorUnavailableError)


def unwrap(exc: BaseException) -> BaseException:
    """The application error inside a task error, or ``exc`` itself."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        if cause is not None:
            return cause
    return exc


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or the error it wraps) says an actor or object is unavailable for now."""
    return isinstance(exc, TRANSIENT) or isinstance(unwrap(exc), TRANSIENT)

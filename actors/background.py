"""Actor calls sent without waiting for them: kept referenced until they end, failures logged."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import ray.exceptions
import structlog

from reactor_rt.errors import RuntimeUnavailableError

__all__ = ["Background"]

log = structlog.get_logger()


class Background:
    """Tasks this object started and nobody awaits (asyncio keeps only weak references to tasks)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` to its end in the background."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def send(self, ref: Any, what: str) -> None:
        """Await an actor call in the background; a Ray failure is only logged (``what`` names it)."""
        self.spawn(_quietly(ref, what))

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def _quietly(ref: Any, what: str) -> None:
    try:
        await ref
    except (ray.exceptions.RayError, RuntimeUnavailableError) as exc:  # actor gone (Ray or the local link)
        log.debug("background_call_failed", call=what, error=type(exc).__name__)

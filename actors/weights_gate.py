"""A readers-writer gate: interactions run concurrently, a weight swap runs alone between them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["WeightsGate"]


class WeightsGate:
    """Interactions enter as readers; a swap waits for the readers in flight, keeps new ones out while
    it runs, and so no interaction ever mixes two weight versions. Writers go first once they wait,
    so a steady stream of interactions cannot starve a swap."""

    def __init__(self) -> None:
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0
        self._changed = asyncio.Condition()
        self.last_pause_ms = 0.0  # how long the last swap kept new interactions out

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._writing and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            async with self._changed:
                self._readers -= 1
                self._changed.notify_all()

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        async with self._changed:
            self._writers_waiting += 1
            started = time.perf_counter()  # from here on, new interactions wait
            try:
                await self._changed.wait_for(lambda: not self._writing and self._readers == 0)
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            async with self._changed:
                self._writing = False
                self.last_pause_ms = 1000 * (time.perf_counter() - started)
                self._changed.notify_all()

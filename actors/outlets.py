"""How generated tokens leave the decode loop: per-request chunking, and a channel that carries many
requests' chunks over one stream.

The decode loop hands every token to an `Outlet`, which gathers them and says when a chunk is due: the
first token alone (time to first token), then when ``chunk_tokens`` have gathered or ``chunk_s`` have
passed, and at the end. A token costs a list append, not an asyncio wake-up.

A `Channel` is what the conductor reads: one long-lived stream of batches, each holding every chunk
that became due since the last batch, for all of the caller's requests. With many streams decoding in
one batch their chunks fall due at the same step, so one message carries them all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

__all__ = ["Channel", "ChunkItem", "Outlet"]

# (request key, tokens, finished?, the error that ended the request or None)
ChunkItem = tuple[int, list[int], bool, BaseException | None]


class Outlet:
    """One request's tokens, gathered per token and handed over once per chunk; ``notify`` is called
    when a chunk is due."""

    __slots__ = ("buffer", "chunk_s", "chunk_tokens", "done", "error", "last_sent", "notify", "sent_first")

    def __init__(self, chunk_tokens: int, chunk_s: float, notify: Callable[[], None]) -> None:
        self.chunk_tokens = chunk_tokens
        self.chunk_s = chunk_s
        self.notify = notify
        self.buffer: list[int] = []
        self.done = False
        self.error: BaseException | None = None
        self.sent_first = False
        self.last_sent = time.perf_counter()

    def push(self, tokens: list[int], done: bool, error: BaseException | None) -> None:
        """The decode loop's sink: add tokens (and the end or an error)."""
        self.buffer.extend(tokens)
        self.done = self.done or done
        self.error = self.error or error
        if (self.done or not self.sent_first or len(self.buffer) >= self.chunk_tokens
                or time.perf_counter() - self.last_sent >= self.chunk_s):
            self.notify()

    def take(self) -> list[int]:
        """The tokens gathered since the last chunk."""
        chunk, self.buffer = self.buffer, []
        self.sent_first = True
        self.last_sent = time.perf_counter()
        return chunk


class Channel:
    """Chunks of many requests over one stream of batches (see the module doc)."""

    def __init__(self, chunk_tokens: int, chunk_s: float) -> None:
        self.chunk_tokens = chunk_tokens
        self.chunk_s = chunk_s
        self._outlets: dict[int, Outlet] = {}
        self._due: dict[int, None] = {}  # keys with a chunk due, in the order they fell due
        self._ready = asyncio.Event()
        self._closed = False

    def outlet(self, key: int) -> Outlet:
        """A new outlet for request ``key``; its chunks appear in this channel's batches."""
        if self._closed:
            raise RuntimeError("the channel is closed")
        outlet = Outlet(self.chunk_tokens, self.chunk_s, lambda: self._mark(key))
        self._outlets[key] = outlet
        return outlet

    def fail(self, key: int, error: BaseException) -> None:
        """End request ``key`` with ``error`` (e.g. it could not be admitted)."""
        outlet = self._outlets.get(key) or self.outlet(key)
        outlet.push([], True, error)

    def drop(self, key: int) -> None:
        """Forget request ``key`` (cancelled by its consumer)."""
        self._outlets.pop(key, None)
        self._due.pop(key, None)

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    def _mark(self, key: int) -> None:
        self._due[key] = None
        self._ready.set()

    async def batches(self) -> AsyncIterator[list[ChunkItem]]:
        """Every chunk due since the last batch, until the channel is closed."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            if self._closed:
                return
            batch: list[ChunkItem] = []
            for key in self._due:
                outlet = self._outlets.get(key)
                if outlet is None:
                    continue
                done, error = outlet.done, outlet.error
                batch.append((key, outlet.take(), done, error))
                if done:
                    del self._outlets[key]
            self._due.clear()
            if batch:
                yield batch

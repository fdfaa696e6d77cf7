"""How generated tokens leave the decode loop: per-request chunking, and a channel that carries many
requests' chunks over one stream.

The decode loop hands every token to an `Outlet`, which gathers them and says when a chunk is due: the
first token alone (time to first token), then when ``chunk_tokens`` have gathered or ``chunk_s`` have
passed, and at the end. A token costs a list append, not an asyncio wake-up.

The decode loop runs in its own thread (see `actors.decoder.DecoderService`) and its consumers on the
event loop, so an outlet is thread-safe: pushes and drains hold its lock, and ``notify`` may be called
from any thread (`Channel` and the service hand the loop a thread-safe wake-up).

A `Channel` is what the conductor reads: one long-lived stream of batches, each holding every chunk
that became due since the last batch, for all of the caller's requests. With many streams decoding in
one batch their chunks fall due at the same step, so one message carries them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

__all__ = ["Channel", "ChunkItem", "Outlet", "call_in_loop"]

# (request key, tokens, finished?, the error that ended the request or None)
ChunkItem = tuple[int, list[int], bool, BaseException | None]

_DROPPED_EARLY_KEPT = 4096  # cancels that overtook their submit, remembered per channel


def call_in_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> Callable[[], None]:
    """``callback`` made callable from any thread: run at once on ``loop``'s own thread, else scheduled
    there (`loop.call_soon_threadsafe` wakes the loop)."""
    loop_thread = threading.get_ident()  # made on the loop's thread

    def call() -> None:
        if threading.get_ident() == loop_thread:
            callback()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed (shutting down): nobody to tell
                loop.call_soon_threadsafe(callback)

    return call


class Outlet:
    """One request's tokens, gathered per token and handed over once per chunk; ``notify`` is called
    (outside the outlet's lock, from the pushing thread) when a chunk is due."""

    __slots__ = ("_lock", "buffer", "chunk_s", "chunk_tokens", "done", "error", "last_sent", "notify",
                 "sent_first")

    def __init__(self, chunk_tokens: int, chunk_s: float, notify: Callable[[], None]) -> None:
        self.chunk_tokens = chunk_tokens
        self.chunk_s = chunk_s
        self.notify = notify
        self.buffer: list[int] = []
        self.done = False
        self.error: BaseException | None = None
        self.sent_first = False
        self.last_sent = time.perf_counter()
        self._lock = threading.Lock()

    def push(self, tokens: list[int], done: bool, error: BaseException | None) -> None:
        """The decode loop's sink: add tokens (and the end or an error)."""
        with self._lock:
            self.buffer.extend(tokens)
            self.done = self.done or done
            self.error = self.error or error
            due = (self.done or not self.sent_first or len(self.buffer) >= self.chunk_tokens
                   or time.perf_counter() - self.last_sent >= self.chunk_s)
        if due:
            self.notify()

    def drain(self) -> tuple[list[int], bool, BaseException | None]:
        """The tokens gathered since the last chunk, and whether (and how) the request has ended, read
        together: a push between reading the end and taking the tokens cannot split them.

        The first chunk is the first token alone, even when more have come meanwhile (the decode thread
        does not wait for the reader): the rest is due at once, and ``notify`` says so."""
        with self._lock:
            first_only = not self.sent_first and len(self.buffer) > 1
            if first_only:
                chunk, self.buffer = self.buffer[:1], self.buffer[1:]
            else:
                chunk, self.buffer = self.buffer, []
            self.sent_first = True
            self.last_sent = time.perf_counter()
            ended = (False, None) if first_only else (self.done, self.error)
        if first_only:
            self.notify()
        return chunk, *ended


class Channel:
    """Chunks of many requests over one stream of batches (see the module doc). Made on the event loop
    that reads it; its outlets may be pushed from any thread."""

    def __init__(self, chunk_tokens: int, chunk_s: float) -> None:
        self.chunk_tokens = chunk_tokens
        self.chunk_s = chunk_s
        self._loop = asyncio.get_running_loop()
        self._outlets: dict[int, Outlet] = {}
        self._due: dict[int, None] = {}  # keys with a chunk due, in the order they fell due
        self._dropped_early: OrderedDict[int, None] = OrderedDict()  # dropped before their request started
        self._ready = asyncio.Event()
        self._closed = False

    def outlet(self, key: int) -> Outlet:
        """A new outlet for request ``key``; its chunks appear in this channel's batches."""
        if self._closed:
            raise RuntimeError("the channel is closed")
        outlet = Outlet(self.chunk_tokens, self.chunk_s, call_in_loop(self._loop, lambda: self._mark(key)))
        self._outlets[key] = outlet
        return outlet

    def fail(self, key: int, error: BaseException) -> None:
        """End request ``key`` with ``error`` (e.g. it could not be admitted)."""
        outlet = self._outlets.get(key) or self.outlet(key)
        outlet.push([], True, error)

    def drop(self, key: int) -> None:
        """Forget request ``key`` (cancelled by its consumer). A key dropped before its request started
        (the cancel overtook the submit) is remembered, so that the request does not start."""
        if self._outlets.pop(key, None) is None:
            self._dropped_early[key] = None
            while len(self._dropped_early) > _DROPPED_EARLY_KEPT:
                self._dropped_early.popitem(last=False)
        self._due.pop(key, None)

    def wants(self, key: int) -> bool:
        """False once for a request whose consumer dropped it before it started (and while closed)."""
        return self._dropped_early.pop(key, 0) is not None and not self._closed

    @property
    def closed(self) -> bool:
        return self._closed

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
            due, self._due = self._due, {}  # a drain may mark its key due again (see `Outlet.drain`)
            for key in due:
                outlet = self._outlets.get(key)
                if outlet is None:
                    continue
                tokens, done, error = outlet.drain()
                batch.append((key, tokens, done, error))
                if done:
                    del self._outlets[key]
            if batch:
                yield batch

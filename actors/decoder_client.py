"""The conductor's end of a decoder channel: it submits answers and routes the chunk batches back.

One long-lived streaming call carries the chunks of every answer this process asked for (see
`actors.outlets.Channel`), instead of one streaming call per answer: a call's setup and one message per
chunk per stream were most of the conductor's work when many streams decode together.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import ray.exceptions

from reactor_rt.actors.background import Background
from reactor_rt.actors.handles import GenerateRequest
from reactor_rt.errors import ReactorError, RuntimeUnavailableError

__all__ = ["ChannelClosedError", "DecoderChannelClient"]

# what a request's queue receives: (tokens, finished?, error or None)
_Item = tuple[list[int], bool, BaseException | None]


class ChannelClosedError(RuntimeUnavailableError):
    """The decoder ended the channel (it restarted or stopped): answers in flight there are lost."""


class _Open:
    """One opened channel: its id, its reader task and the requests waiting on it."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex
        self.routes: dict[int, asyncio.Queue[_Item]] = {}
        self.task: asyncio.Task[None] | None = None


class DecoderChannelClient:
    """Streams answers from a decoder actor over one channel, reopened after a failure."""

    def __init__(self, decoder: Any) -> None:
        self._decoder = decoder
        self._open: _Open | None = None
        self._keys = itertools.count(1)
        self._background = Background()

    async def stream(self, request: GenerateRequest) -> AsyncIterator[list[int]]:
        """The answer's token ids in chunks. Ray failures are raised as they are (the caller decides
        whether to retry); a request the decoder refused raises the decoder's error."""
        channel = self._channel()
        key = next(self._keys)
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        channel.routes[key] = queue
        self._background.spawn(self._watch(self._decoder.submit.remote(channel.id, key, request), queue))
        finished = False
        try:
            while True:
                tokens, done, error = await queue.get()
                if error is not None:
                    finished = True
                    raise _as_raised(error)
                if tokens or done:
                    yield tokens
                if done:
                    finished = True
                    return
        finally:
            channel.routes.pop(key, None)
            if not finished and channel is self._open:
                self._background.send(self._decoder.cancel.remote(channel.id, key), "cancel")

    async def close(self) -> None:
        """Stop reading; answers in flight end with `ChannelClosedError`."""
        channel, self._open = self._open, None
        if channel is not None and channel.task is not None:
            channel.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await channel.task
        self._background.cancel()

    def _channel(self) -> _Open:
        if self._open is None or self._open.task is None or self._open.task.done():
            channel = _Open()
            batches = self._decoder.channel.remote(channel.id)
            channel.task = asyncio.get_running_loop().create_task(self._read(channel, batches))
            self._open = channel
        return self._open

    async def _read(self, channel: _Open, batches: Any) -> None:
        error: BaseException = ChannelClosedError("the decoder closed the channel (restarted or stopped)")
        try:
            async for ref in batches:
                for key, tokens, done, item_error in await ref:
                    queue = channel.routes.get(key)
                    if queue is not None:
                        queue.put_nowait((tokens, done, item_error))
        except asyncio.CancelledError:
            error = ChannelClosedError("the channel was closed")
            raise
        except ray.exceptions.RayError as exc:
            error = exc
        finally:
            if self._open is channel:
                self._open = None
            for queue in channel.routes.values():
                queue.put_nowait(([], True, error))

    async def _watch(self, ack: Any, queue: asyncio.Queue[_Item]) -> None:
        """A submit that failed (e.g. the decoder is down) ends its request with that failure."""
        try:
            await ack
        except ray.exceptions.RayError as exc:
            queue.put_nowait(([], True, exc))


def _as_raised(error: BaseException) -> BaseException:
    """Ray failures and request errors as they are; a failed decode step as a `ReactorError`."""
    if isinstance(error, ray.exceptions.RayError | ReactorError | ValueError | TypeError):
        return error
    return RuntimeUnavailableError(f"generating the answer failed: {type(error).__name__}: {str(error)[:500]}")

"""The conductor's end of a decoder channel: it submits answers and routes the chunk batches back.

One long-lived streaming call carries the chunks of every answer this process asked for (see
`actors.outlets.Channel`), instead of one streaming call per answer: a call's setup and one message per
chunk per stream were most of the conductor's work when many streams decode together.

When the decoder runs on this node, the channel and the submits go over a local link (a Unix socket,
`events.local_link`): four of these messages lie on every answer's time to first token. A submit
travels there without its STM reference, so the decoder takes it only when it has that version's
memory keys/values cached (it warms them after each update); otherwise it goes again through Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import ray.exceptions

from reactor_rt.actors.background import Background
from reactor_rt.actors.handles import GenerateRequest, STMHandle, tensor_from_wire, tensor_to_wire
from reactor_rt.errors import ReactorError, RuntimeUnavailableError
from reactor_rt.events.local_link import LinkClient, LinkClosedError, LinkResolver

__all__ = ["ChannelClosedError", "DecoderChannelClient"]

# what a request's queue receives: (tokens, finished?, error or None)
_Item = tuple[list[int], bool, BaseException | None]


class ChannelClosedError(RuntimeUnavailableError):
    """The decoder ended the channel (it restarted or stopped): answers in flight there are lost."""


class _Open:
    """One opened channel: its id, its reader task and the requests waiting on it."""

    def __init__(self, link: LinkClient | None) -> None:
        self.id = uuid.uuid4().hex
        self.link = link  # None: the channel runs over Ray
        self.routes: dict[int, asyncio.Queue[_Item]] = {}
        self.task: asyncio.Task[None] | None = None


class DecoderChannelClient:
    """Streams answers from a decoder actor over one channel, reopened after a failure.
    ``local_link=False`` keeps everything on Ray even on the decoder's node."""

    def __init__(self, decoder: Any, local_link: bool = True,
                 resolve: Callable[[STMHandle], Awaitable[STMHandle]] | None = None) -> None:
        self._decoder = decoder
        self._resolve = resolve  # gives a handle without its STM reference one (a Ray submit needs it)
        self._links = LinkResolver(lambda: decoder.link_address.remote(), enabled=local_link)
        self._open: _Open | None = None
        self._keys = itertools.count(1)
        self._background = Background()

    async def stream(self, request: GenerateRequest) -> AsyncIterator[list[int]]:
        """The answer's token ids in chunks. Ray failures are raised as they are (the caller decides
        whether to retry); a request the decoder refused raises the decoder's error."""
        channel = await self._channel()
        key = next(self._keys)
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        channel.routes[key] = queue
        if channel.link is None:
            self._background.spawn(self._submit_ray(channel.id, key, request, queue))
        else:
            self._background.spawn(self._submit_linked(channel.link, channel.id, key, request, queue))
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
            if not finished and channel.task is not None and not channel.task.done():
                if channel.link is None:
                    self._background.send(self._decoder.cancel.remote(channel.id, key), "cancel")
                else:
                    self._background.send(channel.link.call("cancel", channel.id, key), "cancel")
            if channel is not self._open and not channel.routes and channel.task is not None:
                channel.task.cancel()  # a channel replaced by a link, now idle

    async def warm(self, handles: list[STMHandle | None], stms: Any) -> None:
        """Have the decoder pre-compute the memory keys/values of new STM versions (``stms``: a Ray
        reference to the list of their tensors; None in ``handles``: skip that one), so the next query
        on each finds them cached. Over the link the message is on its way when this returns: it
        reaches the decoder before any later submit."""
        if self._linked() is not None:
            with contextlib.suppress(ray.exceptions.RayError):  # then Ray's way below
                tensors = await stms  # already here: the commit's call carried them from this process
                self.warm_fields(handles, [None if h is None else tensor_to_wire(t)
                                           for h, t in zip(handles, tensors, strict=True)])
                return
        self._background.send(self._decoder.prepare_many.remote(handles, stms), "prepare")

    def warm_fields(self, handles: list[STMHandle | None], stms: list[list[Any] | None]) -> None:
        """`warm` for STMs held here as `tensor_to_wire` fields (the linked update path)."""
        link = self._linked()
        if link is not None:
            with contextlib.suppress(LinkClosedError):
                link.notify("prepare", [None if h is None else h.to_wire() for h in handles], stms)
                return
        tensors = [None if s is None else tensor_from_wire(s) for s in stms]
        self._background.send(self._decoder.prepare_many.remote(handles, tensors), "prepare")

    def _linked(self) -> LinkClient | None:
        """The open channel's link, if it has a live one."""
        link = self._open.link if self._open is not None else None
        return link if link is not None and not link.closed else None

    async def close(self) -> None:
        """Stop reading; answers in flight end with `ChannelClosedError`."""
        channel, self._open = self._open, None
        if channel is not None and channel.task is not None:
            channel.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await channel.task
        self._background.cancel()

    async def _channel(self) -> _Open:
        """The open channel; a new one if none is, or if a Ray channel can now give way to a link (the
        decoder came back on this node after a restart): the old one serves its answers to their end."""
        current = self._open
        if current is not None and _alive(current) and current.link is not None:
            return current
        link = await self._links.get()  # cheap when there is none: asked again every few seconds only
        current = self._open
        if current is not None and _alive(current) and (current.link is not None or link is None):
            return current  # (or another answer opened one meanwhile)
        if current is not None and _alive(current) and not current.routes:
            current.task.cancel()  # type: ignore[union-attr]  # an idle Ray channel, replaced by the link
        channel = _Open(link)
        batches = _ray_batches(self._decoder.channel.remote(channel.id)) if link is None else (
            link.stream("channel", channel.id))
        channel.task = asyncio.get_running_loop().create_task(self._read(channel, batches))
        self._open = channel
        return channel

    async def _read(self, channel: _Open, batches: AsyncIterator[list[Any]]) -> None:
        error: BaseException = ChannelClosedError("the decoder closed the channel (restarted or stopped)")
        try:
            async for batch in batches:
                for key, tokens, done, item_error in batch:
                    queue = channel.routes.get(key)
                    if queue is not None:
                        queue.put_nowait((tokens, done, item_error))
        except asyncio.CancelledError:
            error = ChannelClosedError("the channel was closed")
            raise
        except ray.exceptions.RayError as exc:
            error = exc
        except LinkClosedError:
            self._links.reset()  # a restarted decoder listens elsewhere
        finally:
            if self._open is channel:
                self._open = None
            for queue in channel.routes.values():
                queue.put_nowait(([], True, error))

    async def _submit_linked(self, link: LinkClient, channel_id: str, key: int, request: GenerateRequest,
                             queue: asyncio.Queue[_Item]) -> None:
        """Submit over the link, without the STM reference; through Ray (with it) if the decoder lacks
        the version's cached memory."""
        try:
            if await link.call("submit", channel_id, key, request.to_wire()):
                return
        except LinkClosedError as exc:
            if not link.closed:  # else the channel's reader ends the request (it may start again)
                queue.put_nowait(([], True, exc))
            return
        except Exception as exc:
            queue.put_nowait(([], True, exc))
            return
        await self._submit_ray(channel_id, key, request, queue)

    async def _submit_ray(self, channel_id: str, key: int, request: GenerateRequest,
                          queue: asyncio.Queue[_Item]) -> None:
        """Submit through Ray (with the STM reference); a submit that failed (e.g. the decoder is down)
        ends its request with that failure."""
        try:
            if request.handle.stm is None and self._resolve is not None:
                request = dataclasses.replace(request, handle=await self._resolve(request.handle))
            await self._decoder.submit.remote(channel_id, key, request)
        except (ray.exceptions.RayError, ReactorError) as exc:
            queue.put_nowait(([], True, exc))


def _alive(channel: _Open) -> bool:
    return channel.task is not None and not channel.task.done()


async def _ray_batches(gen: Any) -> AsyncIterator[list[Any]]:
    async for ref in gen:
        yield await ref


def _as_raised(error: BaseException) -> BaseException:
    """Ray failures and request errors as they are; a failed decode step as a `ReactorError`."""
    if isinstance(error, ray.exceptions.RayError | ReactorError | ValueError | TypeError):
        return error
    return RuntimeUnavailableError(f"generating the answer failed: {type(error).__name__}: {str(error)[:500]}")

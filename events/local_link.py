"""A fast path between processes of one machine: calls and pushed streams over a Unix socket.

A Ray actor call costs about 1.5 ms a round trip on a small shared host; a message over a Unix
socket about 0.05 ms. One interaction's hot path (query in, first token, chunks, end of answer)
crosses four process boundaries, so the runtime sends those messages over a link when both ends run
on the same node, and over Ray otherwise (`LinkResolver` decides; Ray stays the control plane:
placement, restarts, object store).

A `LinkServer` lives in the serving process's event loop and exposes named *calls* (a coroutine:
one reply) and *streams* (an async generator: items pushed as they come, with an optional credit
window for backpressure). A `LinkClient` multiplexes any number of both over one connection.

Trust: only processes of this user get in (on Linux an abstract socket, which leaves no file behind
when its process is killed, and the peer's uid is checked on connect; elsewhere a socket file in a
directory of mode 0700). Even so nothing is unpickled: a frame is a 4-byte little-endian length and
the msgpack of ``[kind, id, payload]``; payloads are msgpack's plain types (tuples arrive as lists),
`Blob` s and exceptions, which travel as class name and message and come back as the same `ReactorError`
subclass (or ValueError, TypeError, KeyError, RuntimeError), anything else as
`RuntimeUnavailableError`. Ray's "actor unavailable" errors arrive as `LinkClosedError`: retry.

Bulk data (a batch of encoded interactions is megabytes) travels as `Blob` s: a large one is not packed
into the msgpack but sent after it, straight from the sender's memory, and arrives as a view of the
receiver's read buffer, which a relaying process can send on without copying it either. Such a frame's
length has its top bit set, its msgpack is preceded by the msgpack's own 4-byte length, and its blobs
start at multiples of 16 bytes from the frame's start (a receiver can view tensors in place).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import msgpack
import structlog

from reactor_rt import errors
from reactor_rt.errors import RuntimeUnavailableError

__all__ = ["Blob", "LinkClient", "LinkClosedError", "LinkHost", "LinkResolver", "LinkServer", "LinkStream", "pack"]

log = structlog.get_logger()

# client -> server
_CALL, _OPEN, _CREDIT, _CANCEL = 1, 2, 3, 4
# server -> client
_REPLY, _FAIL, _ITEM, _END = 5, 6, 7, 8

_HEADER = 4
_NO_REPLY = 0  # the key of a call sent with `LinkClient.notify`
MAX_FRAME = 256 << 20  # a longer length prefix means a broken peer: the connection is dropped
_READ_ROOM = 256 << 10  # free room offered to each read (more when the frame being received needs it)
_JOIN_BELOW = 64 << 10  # frames shorter than this go out as one write (prefix and body joined)
_BACKLOG = 128  # connections waiting to be accepted (every actor and client of a node may connect at once)
_SOCKET_BUFFER = 4 << 20  # kernel send/receive buffers asked for: a megabyte frame leaves in few writes
_OUT_OF_BAND_MIN = 64 << 10  # smaller blobs are packed into the msgpack (a copy is cheaper than a frame buffer)
_HAS_BLOBS = 1 << 31  # set in a frame's length prefix: the frame carries blobs after its msgpack
_BLOB_ALIGN = 16  # blobs start at multiples of this from their frame's start


class LinkClosedError(RuntimeUnavailableError):
    """Raised when a link's connection is gone (its peer stopped or restarted) while a call or stream
    was in flight on it, or when the peer failed because an actor it needed was unavailable: either
    way the work may be tried again."""


class Blob:
    """Bytes for the local link that are not copied into (nor out of) the msgpack: what a sender wraps
    is written to the socket from its own memory, and a large blob arrives as a view of the receiver's
    read buffer, which is then its own (sent on again, it is not copied either). ``bytes(blob)``
    copies it out. What a sender wraps must not change once sent: the transport may write it later."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = memoryview(data).cast("B")

    def __len__(self) -> int:
        return self.data.nbytes

    def __bytes__(self) -> bytes:
        return self.data.tobytes()

    def __repr__(self) -> str:
        return f"Blob({len(self)} bytes)"


_EXCEPTION = 1  # msgpack extension type of an exception: [class name, message]
_BLOB = 2  # msgpack extension type of a blob sent after the msgpack: `_BLOB_REF`
_BLOB_REF = struct.Struct("<QQ")  # a blob's offset (from the first blob's start) and length
_KNOWN_ERRORS: dict[str, type[BaseException]] = {
    **{name: cls for name, cls in vars(errors).items()
       if isinstance(cls, type) and issubclass(cls, errors.ReactorError)},
    "LinkClosedError": LinkClosedError, "ValueError": ValueError, "TypeError": TypeError,
    "KeyError": KeyError, "RuntimeError": RuntimeError,
}


def _error_name(exc: BaseException) -> str:
    name = type(exc).__name__
    if name not in _KNOWN_ERRORS and _ray_unavailable(exc):
        return "LinkClosedError"
    return name


def _ray_unavailable(exc: BaseException) -> bool:
    if "ray.exceptions" not in sys.modules:  # no Ray in this process: no Ray error either
        return False
    from reactor_rt.events.ray_errors import transient

    return transient(exc)


def _to_wire(obj: Any) -> Any:
    if isinstance(obj, BaseException):
        return msgpack.ExtType(_EXCEPTION, msgpack.packb([_error_name(obj), str(obj)[:4096]]))
    raise TypeError(f"the local link carries plain data and exceptions, not {type(obj).__name__}")


def _from_wire(code: int, data: bytes, blobs: memoryview | None = None) -> Any:
    if code == _BLOB and blobs is not None:
        offset, length = _BLOB_REF.unpack(data)
        if offset + length > blobs.nbytes:
            raise ValueError("a blob reaches past its frame")
        return Blob(blobs[offset : offset + length])
    if code != _EXCEPTION:
        return msgpack.ExtType(code, data)
    name, message = msgpack.unpackb(data)
    cls = _KNOWN_ERRORS.get(name)
    if cls is not None:
        try:
            return cls(message)
        except Exception:  # a constructor that wants more than a message
            pass
    return RuntimeUnavailableError(f"{name}: {message}")


def pack(kind: int, key: int, payload: Any) -> bytes:
    """One frame: length prefix + msgpack of ``[kind, key, payload]`` (+ its large blobs, see the module).

    A frame over `MAX_FRAME` raises `RuntimeUnavailableError` here, before anything is written: the
    peer would take it for a broken peer and drop the connection, and every other call and stream on it.
    """
    return b"".join(_frame(kind, key, payload))


def _frame(kind: int, key: int, payload: Any) -> list[bytes | memoryview]:
    """`pack` as pieces to write one after the other: a large body or blob is not copied to join them."""
    blobs: list[tuple[int, memoryview]] = []  # (offset from the first blob's start, data)
    end = 0

    def to_wire(obj: Any) -> Any:
        nonlocal end
        if isinstance(obj, Blob):
            if len(obj) < _OUT_OF_BAND_MIN:
                return obj.data.tobytes()
            offset = _aligned(end)
            blobs.append((offset, obj.data))
            end = offset + len(obj)
            return msgpack.ExtType(_BLOB, _BLOB_REF.pack(offset, len(obj)))
        return _to_wire(obj)

    body = msgpack.packb([kind, key, payload], default=to_wire, use_bin_type=True)
    pieces: list[bytes | memoryview] = [body]
    if blobs:  # the blobs start aligned from the frame's start (so that tensors can be viewed in place)
        pieces.insert(0, len(body).to_bytes(_HEADER, "little"))
        written = 2 * _HEADER + len(body)
        area = _aligned(written)
        for offset, blob in blobs:
            if area + offset > written:
                pieces.append(bytes(area + offset - written))
            pieces.append(blob)
            written = area + offset + blob.nbytes
    size = sum(len(piece) for piece in pieces)
    if size > MAX_FRAME:
        raise RuntimeUnavailableError(
            f"a {size}-byte message is over the local link's {MAX_FRAME}-byte frame limit")
    return [(size | (_HAS_BLOBS if blobs else 0)).to_bytes(_HEADER, "little"), *pieces]


def _aligned(offset: int) -> int:
    return -(-offset // _BLOB_ALIGN) * _BLOB_ALIGN


class _Framed(asyncio.BufferedProtocol):
    """Length-prefixed msgpack frames over a stream transport, with write flow control.

    Frames are read straight into one buffer that grows to hold the frame being received (its length
    is known from its header): a large frame (a batch of encoded interactions is megabytes) arrives
    in a few reads of whatever the socket holds, with no copy per read and none to cut it out. The
    sockets ask the kernel for large buffers, so such a frame also leaves in a few writes. The blobs
    of a frame are views of that buffer: after such a frame the buffer is theirs, and reading goes on
    in a new one.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray(_READ_ROOM)
        self._start = 0  # the first byte not parsed yet
        self._end = 0  # the end of what has been received
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError, AttributeError):  # the kernel caps it at its own maximum
                sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)

    def get_buffer(self, sizehint: int) -> memoryview:
        pending = self._end - self._start
        room = _READ_ROOM
        if pending >= _HEADER:  # the rest of the frame being received, when it is longer
            size = int.from_bytes(self._buffer[self._start : self._start + _HEADER], "little") & ~_HAS_BLOBS
            if size <= MAX_FRAME:  # (a longer one is refused as soon as it is parsed)
                room = max(room, _HEADER + size - pending)
        if len(self._buffer) - self._end < room:
            if len(self._buffer) - pending >= room:  # enough once the unparsed bytes move to the front
                self._buffer[:pending] = self._buffer[self._start : self._end]
            else:
                grown = bytearray(pending + room)
                grown[:pending] = self._buffer[self._start : self._end]
                self._buffer = grown
            self._start, self._end = 0, pending
        return memoryview(self._buffer)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        buffer, start = self._buffer, self._start
        given = False  # the buffer now backs a frame's blobs
        with memoryview(buffer) as view:
            while self._end - start >= _HEADER:
                size = int.from_bytes(buffer[start : start + _HEADER], "little")
                blobs, size = size & _HAS_BLOBS, size & ~_HAS_BLOBS
                if size > MAX_FRAME:
                    log.warning("link.bad_frame", size=size)
                    self.abort()
                    return
                end = start + _HEADER + size
                if self._end < end:
                    break
                try:
                    if blobs:
                        kind, key, payload = _unpack_with_blobs(buffer, start, end)
                        given = True
                    else:
                        kind, key, payload = msgpack.unpackb(view[start + _HEADER : end], ext_hook=_from_wire,
                                                             raw=False, strict_map_key=False)
                except Exception:
                    log.warning("link.bad_frame", size=size)
                    self.abort()
                    return
                start = end
                self.on_frame(kind, key, payload)
        self._start = start
        if given:  # the blobs keep this buffer: what follows their frame moves to a new one
            rest = self._end - start
            self._buffer = bytearray(max(_READ_ROOM, rest))
            self._buffer[:rest] = buffer[start : self._end]
            self._start, self._end = 0, rest
        elif start == self._end:  # all parsed: start over at the front, and let a large buffer go
            self._start = self._end = 0
            if len(buffer) > _READ_ROOM:
                self._buffer = bytearray(_READ_ROOM)

    def on_frame(self, kind: int, key: int, payload: Any) -> None:
        raise NotImplementedError

    def send(self, kind: int, key: int, payload: Any) -> None:
        if self.closed or self.transport is None:
            raise LinkClosedError("the link is closed")
        pieces = _frame(kind, key, payload)
        if len(pieces) == 2 and len(pieces[1]) < _JOIN_BELOW:  # one write: a small frame costs one send
            self.transport.write(pieces[0] + pieces[1])  # type: ignore[operator]
        else:
            for piece in pieces:
                self.transport.write(piece)

    async def drained(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if not self._writable.is_set():
            await self._writable.wait()
        if self.closed:
            raise LinkClosedError("the link is closed")

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._writable.set()  # writers waiting for room see the close

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _unpack_with_blobs(buffer: bytearray, start: int, end: int) -> Any:
    """The ``[kind, key, payload]`` of a frame with blobs (the frame, length prefix included, is
    ``buffer[start:end]``); its blobs are views of ``buffer``."""
    length = int.from_bytes(buffer[start + _HEADER : start + 2 * _HEADER], "little")
    body_end = start + 2 * _HEADER + length
    if body_end > end:
        raise ValueError("the frame's msgpack reaches past its end")
    blobs = memoryview(buffer)[start + _aligned(body_end - start) : end]
    return msgpack.unpackb(memoryview(buffer)[start + 2 * _HEADER : body_end], raw=False, strict_map_key=False,
                           ext_hook=lambda code, data: _from_wire(code, data, blobs))


class _ServerConnection(_Framed):
    def __init__(self, server: LinkServer) -> None:
        super().__init__()
        self._server = server
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._notified: set[asyncio.Task[None]] = set()
        self._credits: dict[int, int] = {}
        self._credit_ready: dict[int, asyncio.Event] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not _same_user(transport.get_extra_info("socket")):
            log.warning("link.refused_other_user")
            transport.abort()
            return
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._server.connections.discard(self)
        for task in self._tasks.values():
            task.cancel()
        for ready in self._credit_ready.values():
            ready.set()

    def on_frame(self, kind: int, key: int, payload: Any) -> None:
        loop = asyncio.get_running_loop()
        if kind == _CALL:
            name, args = payload
            task = loop.create_task(self._call(key, name, args))
            if key != _NO_REPLY:  # (notifications cannot be cancelled: no need to find them)
                self._track(key, task)
            else:
                self._notified.add(task)
                task.add_done_callback(self._notified.discard)
        elif kind == _OPEN:
            name, args, window = payload
            if window is not None:
                self._credits[key] = window
                self._credit_ready[key] = asyncio.Event()
            self._track(key, loop.create_task(self._stream(key, name, args, window is not None)))
        elif kind == _CREDIT:
            if key in self._credits:
                self._credits[key] += payload
                self._credit_ready[key].set()
        elif kind == _CANCEL:
            task = self._tasks.get(key)
            if task is not None:
                task.cancel()

    def _track(self, key: int, task: asyncio.Task[None]) -> None:
        self._tasks[key] = task
        # a task cancelled before its first step never runs its own clean-up (the cancel arrived in
        # the same read as the call or open): forget it when it ends, however it ends
        task.add_done_callback(lambda _task: self._forget(key))

    async def _call(self, key: int, name: str, args: tuple[Any, ...]) -> None:
        try:
            fn = self._server.calls.get(name)
            if fn is None:
                raise ValueError(f"the link serves no call {name!r}")
            # A large reply leaves the socket a piece at a time, each when the loop is free; a handler
            # that computes without awaiting (the encoder's) would hold the rest of the previous reply
            # back for its whole run. Let the caller have it first.
            await self.drained()
            result = await fn(*args)
        except asyncio.CancelledError:
            self._tasks.pop(key, None)
            raise
        except Exception as exc:
            if key == _NO_REPLY:
                log.warning("link.notify_failed", call=name, error=type(exc).__name__)
            else:
                self._reply(_FAIL, key, exc)
        else:
            if key != _NO_REPLY:
                self._reply(_REPLY, key, result)
        self._tasks.pop(key, None)

    def _reply(self, kind: int, key: int, payload: Any) -> None:
        try:
            self.send(kind, key, payload)
        except LinkClosedError:
            pass  # the client is gone: nobody waits for this reply
        except Exception as exc:  # an unpicklable result: the caller hears why
            self.send(_FAIL, key, RuntimeUnavailableError(f"the link could not send the reply: {exc!r}"))

    async def _stream(self, key: int, name: str, args: tuple[Any, ...], windowed: bool) -> None:
        error: BaseException | None = None
        try:
            make = self._server.streams.get(name)
            if make is None:
                raise ValueError(f"the link serves no stream {name!r}")
            items = make(*args)
            try:
                async for item in items:
                    if windowed:
                        while self._credits[key] <= 0 and not self.closed:
                            self._credit_ready[key].clear()
                            await self._credit_ready[key].wait()
                        self._credits[key] -= 1
                    self.send(_ITEM, key, item)
                    await self.drained()
            finally:
                await items.aclose()  # type: ignore[attr-defined]
        except (asyncio.CancelledError, LinkClosedError):
            self._forget(key)
            return
        except Exception as exc:
            error = exc
        self._forget(key)
        self._reply(_END, key, error)

    def _forget(self, key: int) -> None:
        self._tasks.pop(key, None)
        self._credits.pop(key, None)
        self._credit_ready.pop(key, None)


class LinkServer:
    """Serves ``calls`` (name -> coroutine function) and ``streams`` (name -> async generator
    function) on a Unix socket in the running event loop, from the first `start` on."""

    def __init__(self, calls: Mapping[str, Callable[..., Awaitable[Any]]],
                 streams: Mapping[str, Callable[..., AsyncIterator[Any]]]) -> None:
        self.calls = dict(calls)
        self.streams = dict(streams)
        self.connections: set[_ServerConnection] = set()
        self.path: str | None = None
        self._server: asyncio.AbstractServer | None = None
        self._dir: str | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> str:
        """Listen (once) and return the socket's path."""
        async with self._starting:
            if self._server is None:
                if _ABSTRACT:
                    path = f"\0rxrt-link-{uuid.uuid4().hex}"
                else:
                    self._dir = tempfile.mkdtemp(prefix="rxrt-link-")  # mode 0700: only this user gets in
                    path = os.path.join(self._dir, "s")
                # the socket is made here, not by the loop: uvloop (which Ray's actors run when it is
                # installed) cannot bind or connect an abstract name itself
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.bind(path)
                    sock.listen(_BACKLOG)
                    sock.setblocking(False)
                    self._server = await asyncio.get_running_loop().create_unix_server(
                        lambda: _ServerConnection(self), sock=sock)
                except BaseException:
                    sock.close()
                    raise
                self.path = path
        assert self.path is not None
        return self.path

    async def close(self) -> None:
        """Stop listening, drop every connection (their calls and streams end) and remove the socket."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in list(self.connections):
            connection.abort()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.path = None

    def __del__(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


class _End:
    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class LinkStream:
    """The client's end of one stream: an async iterator of the items the server pushes."""

    def __init__(self, client: LinkClient, key: int, windowed: bool) -> None:
        self._client = client
        self._key = key
        self._windowed = windowed
        self._items: deque[Any] = deque()
        self._ready = asyncio.Event()
        self._ended = False

    def _push(self, item: Any) -> None:
        self._items.append(item)
        self._ready.set()

    def __aiter__(self) -> LinkStream:
        return self

    async def __anext__(self) -> Any:
        if self._ended:
            raise StopAsyncIteration
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if isinstance(item, _End):
            self._ended = True
            self._client._streams.pop(self._key, None)
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        if self._windowed:
            with contextlib.suppress(LinkClosedError):  # the end arrives as an item
                self._client.send(_CREDIT, self._key, 1)
        return item

    async def aclose(self) -> None:
        """Stop the stream at the server (a no-op once it ended)."""
        self.close()

    def close(self) -> None:
        """`aclose` without awaiting: call it from the client's event loop (its thread)."""
        if self._ended:
            return
        self._ended = True
        self._client._streams.pop(self._key, None)
        with contextlib.suppress(LinkClosedError):
            self._client.send(_CANCEL, self._key, None)


class LinkClient(_Framed):
    """One connection to a `LinkServer`; use `connect`. Bound to the event loop it was made in."""

    def __init__(self) -> None:
        super().__init__()
        self._keys = itertools.count(1)
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, LinkStream] = {}
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, path: str) -> LinkClient:
        """Connect to the server listening at ``path`` (``OSError`` if none does)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # made here: see `LinkServer.start`
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, path)
            _, client = await loop.create_unix_connection(cls, sock=sock)
        except BaseException:
            sock.close()
            raise
        return client

    async def call(self, name: str, *args: Any) -> Any:
        """Run call ``name`` in the server's process and return its result (or raise its exception)."""
        key = next(self._keys)
        future = self.loop.create_future()
        self._calls[key] = future
        try:
            self.send(_CALL, key, (name, args))
            await self.drained()
            return await future
        finally:
            self._calls.pop(key, None)

    def notify(self, name: str, *args: Any) -> None:
        """Run call ``name`` in the server's process without waiting for (or getting) its result. Sent
        before this returns: calls and streams opened later on this link reach the server after it,
        and the server starts them in that order."""
        self.send(_CALL, _NO_REPLY, (name, args))

    def stream(self, name: str, *args: Any, window: int | None = None) -> LinkStream:
        """Open stream ``name``; with ``window`` the server pushes at most that many items ahead of
        what this side has taken (backpressure)."""
        key = next(self._keys)
        stream = LinkStream(self, key, window is not None)
        self._streams[key] = stream
        self.send(_OPEN, key, (name, args, window))
        return stream

    def on_frame(self, kind: int, key: int, payload: Any) -> None:
        if kind == _ITEM:
            stream = self._streams.get(key)
            if stream is not None:
                stream._push(payload)
        elif kind == _END:
            stream = self._streams.get(key)
            if stream is not None:
                stream._push(_End(payload))
        else:
            future = self._calls.get(key)
            if future is None or future.done():
                return
            if kind == _REPLY:
                future.set_result(payload)
            else:
                future.set_exception(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        error = LinkClosedError("the link's peer went away (it stopped or restarted)")
        for future in self._calls.values():
            if not future.done():
                future.set_exception(error)
        for stream in list(self._streams.values()):
            stream._push(_End(error))

    def close(self) -> None:
        """Drop the connection; calls and streams in flight end with `LinkClosedError`."""
        if self.transport is not None:
            self.transport.close()


class LinkResolver:
    """Finds, connects and keeps the link to one Ray actor when it runs on this node.

    ``address`` is the actor's remote method that starts its server and returns
    ``(node id, socket path)``. `get` returns None when the actor runs on another node, does not
    answer, or ``enabled`` is False: the caller then uses Ray. After a failure, `reset` makes the next
    `get` ask again (a restarted actor listens on a new socket). An actor that could not be reached
    is asked again only after ``retry_s`` (its callers use Ray meanwhile).
    """

    retry_s = 5.0

    def __init__(self, address: Callable[[], Awaitable[tuple[str, str]]], enabled: bool = True) -> None:
        self._address = address
        self.enabled = enabled
        self._client: LinkClient | None = None
        self._remote = False  # the actor answered from another node
        self._retry_at = 0.0  # no link could be made: not before this time (monotonic)
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    async def get(self) -> LinkClient | None:
        if not self.enabled or self._remote or time.monotonic() < self._retry_at:
            return None
        loop = asyncio.get_running_loop()
        client = self._client
        if client is not None and not client.closed and client.loop is loop:
            return client
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            client = self._client
            if client is not None and not client.closed and client.loop is loop:
                return client
            self._client = None
            try:
                node, path = await self._address()
                if node != _this_node():
                    self._remote = True
                    return None
                self._client = await LinkClient.connect(path)
            except Exception as exc:  # no link: Ray carries everything, as it would across nodes
                log.debug("link.unavailable", error=type(exc).__name__)
                self._retry_at = time.monotonic() + self.retry_s
                return None
            return self._client

    def reset(self) -> None:
        """Forget the connection (and a remote verdict): the next `get` resolves again."""
        client, self._client = self._client, None
        self._remote = False
        self._retry_at = 0.0
        if client is not None and client.loop is _running_loop():
            client.close()


# Linux: sockets in the abstract namespace (no file to clean up after a killed process)
_ABSTRACT = sys.platform.startswith("linux")


def _same_user(sock: socket.socket | None) -> bool:
    """Whether the connecting process runs as this user (checked where the OS says: Linux)."""
    if not _ABSTRACT or sock is None:
        return True  # a socket file in a 0700 directory: the file system already checked
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _this_node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class LinkHost:
    """Mixin for an async Ray actor that serves ``self.link`` (a `LinkServer` it builds in its
    constructor): the remote method a `LinkResolver` asks."""

    link: LinkServer

    async def link_address(self) -> tuple[str, str]:
        """(node id, socket path) of this actor's local link (started on the first call)."""
        return _this_node(), await self.link.start()

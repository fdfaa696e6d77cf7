"""The local link: calls, pushed streams, credit windows, errors and a peer that goes away."""

from __future__ import annotations

import asyncio

import pytest

from reactor_rt.errors import QueueFullError, RuntimeUnavailableError
from reactor_rt.events import local_link
from reactor_rt.events.local_link import LinkClient, LinkClosedError, LinkServer, pack

pytestmark = pytest.mark.anyio


class _ForeignError(Exception):
    pass


def _server(produced: list[int] | None = None) -> LinkServer:
    async def add(a: int, b: int) -> int:
        return a + b

    async def fails() -> None:
        raise QueueFullError("the queue is full")

    async def fails_oddly() -> None:
        raise _ForeignError("odd")

    async def returns_an_object() -> object:
        return object()

    async def slow() -> None:
        await asyncio.sleep(3600)

    async def count(n: int, fail_at: int | None = None):  # type: ignore[no-untyped-def]
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"failed at {i}")
            if produced is not None:
                produced.append(i)
            yield i

    async def forever():  # type: ignore[no-untyped-def]
        i = 0
        while True:
            yield i
            i += 1
            await asyncio.sleep(0.001)

    return LinkServer({"add": add, "fails": fails, "fails_oddly": fails_oddly, "slow": slow,
                       "returns_an_object": returns_an_object},
                      {"count": count, "forever": forever})


async def _connected(server: LinkServer) -> LinkClient:
    return await LinkClient.connect(await server.start())


@pytest.fixture
async def linked():  # type: ignore[no-untyped-def]
    """(server, client) with the test server's calls and streams; both closed after the test."""
    server = _server()
    client = await _connected(server)
    yield server, client
    client.close()
    await server.close()


async def test_calls_return_results_and_raise_the_servers_errors(linked) -> None:
    _, client = linked
    assert await client.call("add", 2, 3) == 5
    assert await asyncio.gather(*(client.call("add", i, i) for i in range(50))) == [2 * i for i in range(50)]
    with pytest.raises(QueueFullError, match="full"):
        await client.call("fails")
    with pytest.raises(RuntimeUnavailableError, match="_ForeignError: odd"):  # not one of ours: named
        await client.call("fails_oddly")
    with pytest.raises(RuntimeUnavailableError, match="plain data"):
        await client.call("returns_an_object")
    with pytest.raises(TypeError, match="plain data"):  # refused before it is sent
        await client.call("add", object(), 1)
    assert await client.call("add", 1, 1) == 2  # the connection survived all that
    with pytest.raises(ValueError, match="no call"):
        await client.call("missing")


async def test_a_stream_delivers_every_item_then_ends_or_raises(linked) -> None:
    _, client = linked
    assert [i async for i in client.stream("count", 100)] == list(range(100))
    got = []
    with pytest.raises(ValueError, match="failed at 3"):
        async for i in client.stream("count", 10, 3):
            got.append(i)
    assert got == [0, 1, 2]


async def test_a_window_holds_the_server_back_until_the_client_takes_items() -> None:
    produced: list[int] = []
    server = _server(produced)
    client = await _connected(server)
    try:
        stream = client.stream("count", 100, window=4)
        await asyncio.sleep(0.2)
        # 4 sent and one more pulled from the generator while it waits for credit
        assert len(produced) <= 5
        assert [await stream.__anext__() for _ in range(3)] == [0, 1, 2]
        await asyncio.sleep(0.2)
        assert len(produced) <= 8
        assert [i async for i in stream] == list(range(3, 100))
    finally:
        client.close()
        await server.close()


async def test_closing_a_stream_stops_its_generator_at_the_server(linked) -> None:
    server, client = linked
    stream = client.stream("forever")
    assert await stream.__anext__() == 0
    await stream.aclose()
    await asyncio.sleep(0.05)
    connection = next(iter(server.connections))
    assert not connection._tasks  # the generator's task ended
    assert await client.call("add", 1, 1) == 2  # the connection itself lives on


async def test_a_server_that_goes_away_fails_calls_and_streams_in_flight() -> None:
    server = _server()
    client = await _connected(server)
    call = asyncio.ensure_future(client.call("slow"))
    stream = client.stream("forever")
    assert await stream.__anext__() == 0
    await server.close()
    with pytest.raises(LinkClosedError):
        await call
    with pytest.raises(LinkClosedError):
        async for _ in stream:
            pass
    assert client.closed
    with pytest.raises(LinkClosedError):
        await client.call("add", 1, 2)


async def test_a_client_that_goes_away_cancels_its_work_at_the_server() -> None:
    server = _server()
    client = await _connected(server)
    try:
        call = asyncio.ensure_future(client.call("slow"))
        stream = client.stream("forever")
        await stream.__anext__()
        connection = next(iter(server.connections))
        assert len(connection._tasks) == 2
        client.close()
        with pytest.raises(LinkClosedError):
            await call
        await asyncio.sleep(0.05)
        assert not connection._tasks
        assert not server.connections
    finally:
        await server.close()


async def test_garbage_on_the_socket_drops_that_connection_only() -> None:
    server = _server()
    path = await server.start()
    good = await LinkClient.connect(path)
    bad = await LinkClient.connect(path)
    try:
        assert bad.transport is not None
        bad.transport.write((5).to_bytes(4, "little") + b"\xc1\xc1\xc1\xc1\xc1")  # not msgpack
        bad.transport.write(pack(1, 1, ["add", [1, 2]]))
        await asyncio.sleep(0.1)
        assert bad.closed
        assert await good.call("add", 2, 2) == 4
    finally:
        good.close()
        await server.close()


async def test_the_resolver_links_only_to_an_actor_on_this_node(monkeypatch) -> None:
    from reactor_rt.events import local_link

    server = _server()
    path = await server.start()
    monkeypatch.setattr(local_link, "_this_node", lambda: "node-a")
    asked = []

    async def here() -> tuple[str, str]:
        asked.append("here")
        return "node-a", path

    async def elsewhere() -> tuple[str, str]:
        asked.append("elsewhere")
        return "node-b", path

    async def broken() -> tuple[str, str]:
        raise RuntimeError("no such method")

    try:
        near = local_link.LinkResolver(here)
        client = await near.get()
        assert client is not None and await client.call("add", 1, 2) == 3
        assert await near.get() is client  # kept
        await server.close()  # the actor restarts: the link drops, the next get asks again
        await asyncio.sleep(0.05)
        assert client.closed
        server = _server()
        path = await server.start()
        again = await near.get()
        assert again is not None and again is not client and asked == ["here", "here"]
        again.close()
        far = local_link.LinkResolver(elsewhere)
        assert await far.get() is None and await far.get() is None and asked.count("elsewhere") == 1
        failing = local_link.LinkResolver(broken)
        assert await failing.get() is None  # no link: Ray carries it, and is not asked again at once
        failing._address = here  # type: ignore[method-assign]
        assert await failing.get() is None
        failing.reset()  # e.g. after a Ray failure: ask again now
        linked_again = await failing.get()
        assert linked_again is not None
        linked_again.close()
        assert await local_link.LinkResolver(here, enabled=False).get() is None
    finally:
        await server.close()


async def test_a_large_reply_leaves_before_the_next_call_computes() -> None:
    """A handler that computes without awaiting (the encoder's) must not hold the previous call's reply
    back: a reply larger than the socket buffer leaves a piece at a time, when the server's loop is free."""
    import threading
    import time

    async def big() -> bytes:
        return b"x" * (8 << 20)

    async def busy() -> str:
        time.sleep(0.6)  # computes without awaiting, as a model call does
        return "done"

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = LinkServer({"big": big, "busy": busy}, {})
    try:
        path = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(server.start(), loop))
        client = await LinkClient.connect(path)
        started = time.perf_counter()
        got_big = asyncio.ensure_future(client.call("big"))
        got_busy = asyncio.ensure_future(client.call("busy"))
        assert len(await got_big) == 8 << 20
        big_at = time.perf_counter() - started
        assert await got_busy == "done"
        assert big_at < 0.45, big_at  # not after the 0.6 s the next call computes
        client.close()
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def test_a_message_over_the_frame_limit_fails_alone_and_the_connection_lives_on(monkeypatch) -> None:
    """The receiver drops a connection whose length prefix is over MAX_FRAME (a broken peer): so a side
    must refuse to send such a frame, failing that one call or stream, not everything on the link."""
    from reactor_rt.events import local_link

    async def blob(n: int) -> bytes:
        return b"x" * n

    async def concat(a: bytes, b: bytes) -> bytes:
        return a + b

    async def blobs(n: int):  # type: ignore[no-untyped-def]
        yield b"x"
        yield b"x" * n

    server = LinkServer({"blob": blob, "concat": concat}, {"blobs": blobs})
    client = await _connected(server)
    monkeypatch.setattr(local_link, "MAX_FRAME", 4096)
    try:
        waiting = client.stream("blobs", 10)  # in flight on the same connection
        assert await waiting.__anext__() == b"x"
        with pytest.raises(RuntimeUnavailableError, match="frame limit"):
            await client.call("blob", 10_000)  # a reply too large
        with pytest.raises(RuntimeUnavailableError, match="frame limit"):
            await client.call("concat", b"y" * 10_000, b"")  # a call too large: refused before it is sent
        with pytest.raises(RuntimeUnavailableError, match="frame limit"):
            async for _ in client.stream("blobs", 10_000):  # an item too large ends its stream
                pass
        assert not client.closed
        assert [i async for i in waiting] == [b"x" * 10]
        assert await client.call("blob", 5) == b"xxxxx"
    finally:
        client.close()
        await server.close()


async def test_a_stream_cancelled_before_it_starts_leaves_nothing_at_the_server(linked) -> None:
    server, client = linked
    assert await client.call("add", 1, 1) == 2
    connection = next(iter(server.connections))
    for _ in range(20):
        stream = client.stream("count", 5, window=2)
        await stream.aclose()  # the open and the cancel reach the server in one read
    assert await client.call("add", 2, 2) == 4  # every frame above has been read
    await asyncio.sleep(0.05)
    assert not connection._tasks
    assert not connection._credits and not connection._credit_ready


class _Recorder(local_link._Framed):
    """A framed protocol without a socket: what a test feeds it, read by read, and the frames it parsed."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[int, int, object]] = []
        self.aborted = False

    def on_frame(self, kind: int, key: int, payload: object) -> None:
        self.frames.append((kind, key, payload))

    def abort(self) -> None:
        self.aborted = True

    def feed(self, data: bytes, most: int) -> None:
        """Hand ``data`` over as a transport would: reads of at most ``most`` bytes into `get_buffer`."""
        at = 0
        while at < len(data):
            room = self.get_buffer(-1)
            n = min(len(room), most, len(data) - at)
            room[:n] = data[at : at + n]
            self.buffer_updated(n)
            at += n


@pytest.mark.parametrize("most", [3, 4096, 1 << 30], ids=["headers-split", "4k", "whole"])
def test_frames_are_rebuilt_from_reads_cut_anywhere(most: int) -> None:
    big = bytes(range(256)) * 1200  # 300 kB: more than one read's room
    frames = [(5, 1, "small"), (5, 2, big), (7, 3, ["x", 1.5]), (5, 4, big[:1000])]
    wire = b"".join(pack(*f) for f in frames)
    proto = _Recorder()
    proto.feed(wire, most)
    assert proto.frames == [(k, key, p) for k, key, p in frames] and not proto.aborted
    assert len(proto._buffer) == local_link._READ_ROOM  # the room a large frame needed is let go


def test_a_length_over_the_frame_limit_is_refused_without_taking_the_memory() -> None:
    proto = _Recorder()
    proto.feed((local_link.MAX_FRAME + 1).to_bytes(4, "little") + b"x" * 10, 1 << 30)
    assert proto.aborted and proto.frames == []
    assert len(proto.get_buffer(-1)) <= local_link._READ_ROOM


async def test_a_megabyte_frame_crosses_a_real_socket_both_ways(linked) -> None:
    server, client = linked
    big = bytes(range(256)) * (12 << 12)  # 12 MiB: more than the socket buffers hold

    async def echo(data: bytes) -> bytes:
        return data

    server.calls["echo"] = echo
    assert await client.call("echo", big) == big
    assert await client.call("add", 2, 3) == 5  # the connection goes on after it


def _blob_frames(big: bytes) -> list[tuple[int, int, object]]:
    return [(5, 1, ["a", local_link.Blob(big), local_link.Blob(big[:100]), local_link.Blob(big[7:])]),
            (7, 2, "after"), (5, 3, [local_link.Blob(big[3:])])]


@pytest.mark.parametrize("most", [3, 4096, 1 << 30], ids=["headers-split", "4k", "whole"])
def test_blobs_travel_after_the_msgpack_and_arrive_as_views(most: int) -> None:
    big = bytes(range(251)) * 1000  # 251 kB, over the out-of-band threshold; 100 bytes go inline
    wire = b"".join(pack(*f) for f in _blob_frames(big))
    assert len(wire) < 3 * len(big) + 4096  # each large blob once, not packed and appended
    proto = _Recorder()
    proto.feed(wire, most)
    assert not proto.aborted
    (_, _, first), (_, _, after), (_, _, last) = proto.frames
    assert after == "after"
    assert first[0] == "a" and first[2] == big[:100]  # a small blob is packed: it arrives as bytes
    assert isinstance(first[1], local_link.Blob) and bytes(first[1]) == big
    assert bytes(first[3]) == big[7:] and bytes(last[0]) == big[3:]
    # the frames read after a blob's frame went into another buffer: the views still hold their bytes
    assert bytes(first[1]) == big and bytes(first[3]) == big[7:]


def test_a_received_blob_is_sent_on_out_of_band_again() -> None:
    big = bytes(range(256)) * 1024
    proto = _Recorder()
    proto.feed(pack(5, 1, [local_link.Blob(big)]), 1 << 30)
    relayed = pack(5, 2, proto.frames[0][2])  # a process passing what it received on
    assert len(relayed) < len(big) + 256
    again = _Recorder()
    again.feed(relayed, 1 << 30)
    assert bytes(again.frames[0][2][0]) == big


def test_a_blob_reference_past_its_frame_is_a_broken_peer() -> None:
    frame = bytearray(pack(5, 1, [local_link.Blob(b"x" * (128 << 10))]))
    body_length = int.from_bytes(frame[4:8], "little")
    ref = frame.rindex(local_link._BLOB_REF.pack(0, 128 << 10), 8, 8 + body_length)
    frame[ref : ref + 16] = local_link._BLOB_REF.pack(1, 128 << 10)  # one byte past the end
    proto = _Recorder()
    proto.feed(bytes(frame), 1 << 30)
    assert proto.aborted and proto.frames == []


async def test_a_large_blob_crosses_a_real_socket_both_ways(linked) -> None:
    server, client = linked
    big = bytes(range(256)) * (12 << 12)  # 12 MiB

    async def echo(data: local_link.Blob) -> local_link.Blob:
        return data  # sent back from this side's read buffer

    server.calls["echo"] = echo
    back = await client.call("echo", local_link.Blob(big))
    assert isinstance(back, local_link.Blob) and bytes(back) == big
    assert await client.call("add", 2, 3) == 5


def test_the_link_works_under_uvloop() -> None:
    """Ray runs its async actors on uvloop when it is installed: uvloop cannot bind or connect an
    abstract socket name itself, so the link makes its sockets (before, every link call failed there
    and the runtime fell back to Ray calls)."""
    uvloop = pytest.importorskip("uvloop")
    big = bytes(range(256)) * (4 << 12)  # 4 MiB: a blob frame through uvloop's buffered reads

    async def main() -> tuple[int, bool, bool]:
        server = _server()

        async def echo(data: local_link.Blob) -> local_link.Blob:
            return data

        server.calls["echo"] = echo
        client = await _connected(server)
        try:
            total = await client.call("add", 2, 3)
            connection = next(iter(server.connections))
            checked = local_link._same_user(connection.transport.get_extra_info("socket"))
            back = await client.call("echo", local_link.Blob(big))
            return total, checked, bytes(back) == big
        finally:
            client.close()
            await server.close()

    assert uvloop.run(main()) == (5, True, True)

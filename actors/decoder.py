"""The decoder: continuous batching of many streams' answers, one batched decode step at a time.

``DecoderCore`` is plain, synchronous and unit-tested without Ray; ``DecoderService`` runs its steps in
a thread of their own and streams tokens back to the asyncio loop; ``DecoderActor`` is the thin Ray
actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ray
import structlog
import torch

from reactor_rt.actors.handles import GenerateRequest, STMHandle, tensor_from_wire
from reactor_rt.actors.heap import settle_actor_process
from reactor_rt.actors.outlets import Channel, ChunkItem, Outlet, call_in_loop
from reactor_rt.events.local_link import LinkHost, LinkServer
from reactor_rt.learning import apply_serving_state
from reactor_rt.model import DecodeBatch, ReactiveTransformer, Sampler
from reactor_rt.model.memory import MemoryKV

__all__ = ["DecoderActor", "DecoderActorImpl", "DecoderCore", "DecoderService"]

log = structlog.get_logger()

_CLOSED_CHANNELS_KEPT = 1024  # channel ids whose reader has gone, remembered so late submits start nothing

# (tokens produced since the last call, finished?, the error that ended the request or None) -> None
TokenSink = Callable[[list[int], bool, BaseException | None], None]


@dataclass
class _Pending:
    request_id: int
    request: GenerateRequest
    stm: torch.Tensor | None
    sink: TokenSink
    memory_kv: Any = None  # taken from the cache at submit time, when no STM came with the request


@dataclass
class _Held:
    """A finished request whose last token waits for answers about to end (`align_finish_steps`)."""

    pending: _Pending
    token: int
    waited: int = 0  # steps so far


class DecoderCore:
    """Admits generation requests into a :class:`DecodeBatch` at step boundaries and runs its steps.

    Memory keys/values are pre-computed once per stored STM and kept in a bounded LRU cache keyed on
    its handle's token (`STMHandle.cache_key`), so a stream's later turns on the same version, other
    streams sharing that memory, and new memories (all on the one initial STM) skip the projection.

    Answers that end together have their memory updates batched together (one encoder, memory-updater
    and store call for all), and their streams' next queries then prefill and decode together. Answers
    a few steps apart would split the streams into groups that run out of step with each other from
    then on (more steps with fewer rows, each group's update alone). So an answer that ends while
    another row will reach its token budget within ``align_finish_steps`` steps has its last token held
    back until that row ends, for at most that many steps (0: never). Only rows that will end by their
    budget count; with a single stream nothing waits.

    Threads: `submit`, `cached_memory`, `has_memory` and `warm` may run on one thread while another
    runs `step` (the pending queue is a deque, the cache has a lock); `cancel`, `fail_step` and
    `set_weights` must run where the steps run, or between them.
    """

    def __init__(self, model: ReactiveTransformer, capacity: int = 16, memory_cache_size: int = 256,
                 align_finish_steps: int = 0, compile: bool = False) -> None:
        if align_finish_steps < 0:
            raise ValueError("align_finish_steps must be >= 0")
        self.align_finish_steps = align_finish_steps
        self.model = model.eval()
        self.batch = DecodeBatch(model, capacity=capacity, compile=compile)
        self._memory_cache: OrderedDict[str, Any] = OrderedDict()
        self._memory_cache_size = memory_cache_size
        self._cache_lock = threading.Lock()
        self._pending: deque[_Pending] = deque()
        self._rows: dict[int, _Pending] = {}  # slot -> request
        self._admitting: dict[int, _Pending] = {}  # request id -> taken by this step, not yet placed nor ended
        self._held: list[_Held] = []  # finished, last token held back (see the class doc)
        self._ids = itertools.count(1)

    def set_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load learned parameters in place (between interactions: the conductor makes sure none runs).

        The cached memory keys/values were projected with the old cross-attention weights: dropped. The
        traced step is traced again now (~0.2 s), not in the next answer's first step.
        """
        if self.busy:
            raise RuntimeError("weights can only change between interactions; requests are in flight")
        with torch.no_grad():
            apply_serving_state(self.model, state)
        with self._cache_lock:
            self._memory_cache.clear()
        self.batch.weights_changed()

    def warm(self, handle: STMHandle, stm: torch.Tensor) -> None:
        """Pre-compute (and cache) the memory keys/values of a new STM version before a query needs them."""
        self._memory_kv(handle, stm)

    def warm_many(self, handles: list[STMHandle], stms: list[torch.Tensor]) -> None:
        """`warm` for the versions one update batch wrote, projected in one batched call (16 STMs of
        `tiny`: ~2.5 ms against ~6.5 one by one); versions already cached are skipped."""
        with self._cache_lock:
            todo = [(h, s) for h, s in zip(handles, stms, strict=True) if h.cache_key not in self._memory_cache]
        if len(todo) <= 1:
            for handle, stm in todo:
                self._memory_kv(handle, stm)
            return
        with torch.inference_mode():
            kv = self.model.memory_kv(torch.stack([stm for _, stm in todo]))
            # each row its own copy: a cached entry must not keep the whole batch's tensors alive
            rows = [MemoryKV(kv.k[:, i : i + 1].clone(), kv.v[:, i : i + 1].clone()) for i in range(len(todo))]
        self._cache_memory([(handle.cache_key, row) for (handle, _), row in zip(todo, rows, strict=True)])

    def has_memory(self, handle: STMHandle) -> bool:
        """Whether the pre-computed memory keys/values of this STM version are cached (now: a `warm` on
        another thread may evict them right after; to use them, take them with `cached_memory`)."""
        with self._cache_lock:
            return handle.cache_key in self._memory_cache

    def cached_memory(self, handle: STMHandle) -> Any:
        """The cached memory keys/values of this STM version (now the most recently used), or None. Pass
        them to `submit` as ``memory_kv``: once taken, an eviction cannot lose them."""
        return self._cached_memory_kv(handle)

    @property
    def busy(self) -> bool:
        return bool(self._pending or self._rows or self._held)

    def submit(self, request: GenerateRequest, stm: torch.Tensor | None, sink: TokenSink,
               memory_kv: Any = None) -> int:
        """Queue a request; it joins the batch at the next step. Its memory is ``stm`` or, when that is
        None, ``memory_kv`` (taken with `cached_memory`) or else the cached keys/values, taken now
        (ValueError when the version is not cached). Keys/values taken stay with the request, so an
        eviction before it is admitted cannot lose them."""
        if stm is None and memory_kv is None:
            memory_kv = self._cached_memory_kv(request.handle)
            if memory_kv is None:
                raise ValueError("the STM tensor is needed: its memory keys/values are not cached")
        request_id = next(self._ids)
        self._pending.append(_Pending(request_id, request, stm, sink, memory_kv))
        return request_id

    def cancel(self, request_id: int) -> None:
        """Drop a request (its consumer went away); its row leaves the batch at once."""
        for pending in list(self._pending):  # in place: another thread may be appending
            if pending.request_id == request_id:
                self._pending.remove(pending)
        for slot, pending in list(self._rows.items()):
            if pending.request_id == request_id:
                self.batch.remove(slot)
                del self._rows[slot]
        self._held = [h for h in self._held if h.pending.request_id != request_id]

    def fail_step(self, error: BaseException) -> None:
        """After `step` raised: end the requests that were in that step with ``error``, and only those.

        They are every admitted row (a failed batched step leaves the batch state suspect for all of
        them, just admitted or not), and any request the step's admission had taken from the queue but
        neither placed in a row nor ended (an error escaped `_admit`; its per-request failures end their
        request there). Every row of the batch is freed, one the core lost track of too. Requests still
        queued (submitted while the step ran, or finding no free row) had no part in it: they stay and
        join the next step. A batch that cannot free its rows is replaced by an empty one."""
        self._release_held()  # they ended in earlier steps, complete: not part of the failed one
        ended = list(self._rows.values())
        self._rows.clear()
        while self._admitting:
            ended.append(self._admitting.popitem()[1])
        try:  # every occupied row, one placed by a failed admission before it could be recorded too
            for slot in set(range(self.batch.capacity)) - set(self.batch.free_slots):
                self.batch.remove(slot)
        except Exception:  # its bookkeeping is broken: the step thread must go on with a sound batch
            log.exception("decoder.batch_replaced")
            self.batch = DecodeBatch(self.model, capacity=self.batch.capacity,
                                     compile=self.batch.compiled)
        for pending in ended:
            pending.sink([], True, error)

    def step(self) -> None:
        """Admit what fits, then run one batched decode step and hand each row its token. When it raises,
        `fail_step` ends the requests that were in it."""
        self._admit()
        if not self._rows:
            self._release_held()
            return
        with torch.inference_mode():
            outputs = self.batch.step()
        for out in outputs:
            pending = self._rows.get(out.slot)
            if pending is None:
                continue
            if out.finished:
                self.batch.remove(out.slot)
                del self._rows[out.slot]
                self._held.append(_Held(pending, out.token))
            else:
                pending.sink([out.token], False, None)
        if not self._held:  # the usual step: nothing ended, nothing waits
            return
        left = self.batch.fewest_left()
        if left is None or left > self.align_finish_steps:
            self._release_held()
        else:  # a row ends within the window: the finished ones wait for it, each at most the window
            waiting = []
            for held in self._held:
                if held.waited < self.align_finish_steps:
                    held.waited += 1
                    waiting.append(held)
                else:
                    held.pending.sink([held.token], True, None)
            self._held = waiting

    def _release_held(self) -> None:
        """Send every held request its last token."""
        held, self._held = self._held, []
        for h in held:
            h.pending.sink([h.token], True, None)

    def _admit(self) -> None:
        """Prefill what waits and fits: several requests in one forward (requests that fall due together,
        e.g. after a batched memory update, join in one prefill instead of one each)."""
        if not self._pending:  # the usual step: nothing waits (and counting free rows is not free)
            return
        ready: list[tuple[_Pending, Any, Sampler, torch.Generator | None]] = []
        free = len(self.batch.free_slots)
        while self._pending and len(ready) < free:
            pending = self._pending.popleft()
            self._admitting[pending.request_id] = pending  # part of this step now: fails with it
            req = pending.request
            try:
                memory_kv = pending.memory_kv if pending.stm is None else self._memory_kv(req.handle, pending.stm)
                # on the model's device: sampling on a GPU refuses a CPU generator
                generator = None if req.seed is None else torch.Generator(self.batch.pending.device).manual_seed(req.seed)
                sampler = Sampler(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p)
            except Exception as exc:
                log.exception("decoder.admit_failed", request_id=pending.request_id)
                self._end(pending, exc)
                continue
            ready.append((pending, memory_kv, sampler, generator))
        if len(ready) > 1:
            try:
                with torch.inference_mode():
                    slots = self.batch.add_many(
                        [torch.tensor(p.request.prompt, dtype=torch.long) for p, _, _, _ in ready],
                        [kv for _, kv, _, _ in ready], [s for _, _, s, _ in ready],
                        [p.request.max_new_tokens for p, _, _, _ in ready], [g for _, _, _, g in ready])
            except Exception:  # e.g. one bad prompt: admit them one by one, so only that one fails
                log.debug("decoder.batched_admit_failed", requests=len(ready))
            else:
                for (pending, _, _, _), slot in zip(ready, slots, strict=True):
                    self._place(slot, pending)
                return
        for pending, memory_kv, sampler, generator in ready:
            try:
                with torch.inference_mode():
                    slot = self.batch.add(
                        torch.tensor(pending.request.prompt, dtype=torch.long),
                        memory_kv=memory_kv,
                        sampler=sampler,
                        max_new_tokens=pending.request.max_new_tokens,
                        generator=generator,
                    )
            except Exception as exc:
                log.exception("decoder.admit_failed", request_id=pending.request_id)
                self._end(pending, exc)
                continue
            self._place(slot, pending)

    def _place(self, slot: int, pending: _Pending) -> None:
        del self._admitting[pending.request_id]
        self._rows[slot] = pending

    def _end(self, pending: _Pending, error: BaseException) -> None:
        """End a request taken by `_admit` that could not be admitted (it alone)."""
        del self._admitting[pending.request_id]
        pending.sink([], True, error)

    def _cached_memory_kv(self, handle: STMHandle) -> Any:
        """The cached keys/values of this version (now the most recently used), or None."""
        with self._cache_lock:
            kv = self._memory_cache.get(handle.cache_key)
            if kv is not None:
                self._memory_cache.move_to_end(handle.cache_key)
            return kv

    def _memory_kv(self, handle: STMHandle, stm: torch.Tensor) -> Any:
        kv = self._cached_memory_kv(handle)
        if kv is not None:
            return kv
        with torch.inference_mode():
            kv = self.model.memory_kv(stm.unsqueeze(0))  # (1, L, S, D) -> one row
        self._cache_memory([(handle.cache_key, kv)])
        return kv

    def _cache_memory(self, entries: list[tuple[str, Any]]) -> None:
        """Cache keys/values by version token (as the most recently used), oldest evicted past the bound."""
        with self._cache_lock:
            for key, kv in entries:
                self._memory_cache[key] = kv
                self._memory_cache.move_to_end(key)
            while len(self._memory_cache) > self._memory_cache_size:
                self._memory_cache.popitem(last=False)


class DecoderService:
    """Runs a :class:`DecoderCore` for an asyncio loop and streams each request's tokens in chunks.

    The steps run back to back in a thread of their own (one, started on first use), not on the loop:
    the loop stays free for requests and chunks coming and going while a step computes (torch lets go
    of the GIL), and a step does not wait for it. In the decoder actor that gave 6-13 % more tokens/s
    with 16 and 64 streams (A/B in one runtime); one answer's latency did not change measurably.
    Whatever changes the batch besides a step (a cancel) is handed to that thread and runs between two
    steps; new requests join at the next step as before.

    The first token is sent alone (time to first token); later ones go out when ``chunk_ms`` have
    passed since the last chunk or ``chunk_tokens`` have gathered, and whatever is left at the end.
    Every chunk is a message through the conductor and the bus to each subscriber, and costs more CPU
    than a decode step: 50 ms chunks (20 a second) stream faster than anyone reads, with a few
    messages per answer (the decode loop and the messages share two cores here).
    """

    def __init__(self, core: DecoderCore, chunk_tokens: int = 32, chunk_ms: float = 50.0) -> None:
        self.core = core
        self.chunk_tokens = chunk_tokens
        self.chunk_s = chunk_ms / 1000
        self._runner: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._cancelled: deque[int] = deque()  # request ids, dropped by the step thread between steps
        self._stats = {"steps": 0.0, "step_wall_ms": 0.0, "step_cpu_ms": 0.0}
        self._requests: dict[tuple[int, int], int] = {}  # (channel, key) -> core request id

    async def generate(
        self, request: GenerateRequest, load_stm: Callable[[STMHandle], Awaitable[torch.Tensor]]
    ) -> AsyncIterator[list[int]]:
        """Yield the answer's token ids in chunks; the last chunk ends with EOS when one was produced."""
        # taken, not checked: a warm on another thread may evict the version between a check and a submit
        memory_kv = self.core.cached_memory(request.handle)
        stm = None if memory_kv is not None else await load_stm(request.handle)
        ready = asyncio.Event()
        outlet = Outlet(self.chunk_tokens, self.chunk_s, call_in_loop(asyncio.get_running_loop(), ready.set))
        request_id = self.core.submit(request, stm, outlet.push, memory_kv)
        self._ensure_running()
        done = False
        try:
            while not done:
                await ready.wait()
                ready.clear()
                chunk, done, error = outlet.drain()
                if error is not None:
                    raise error
                if chunk or done:
                    yield chunk
        finally:
            if not done:  # the consumer left early: free its row
                self._cancel(request_id)

    def open_channel(self) -> Channel:
        """A channel for one consumer's requests (see `submit_to`)."""
        return Channel(self.chunk_tokens, self.chunk_s)

    async def submit_to(self, channel: Channel, key: int, request: GenerateRequest,
                        load_stm: Callable[[STMHandle], Awaitable[torch.Tensor]] | None) -> bool:
        """Start ``request``; its chunks arrive in ``channel``'s batches under ``key``. A request that
        cannot start ends there with its error.

        The version's cached memory keys/values are taken at once (a hit awaits nothing); on a miss the
        STM is loaded with ``load_stm``, or, when that is None, nothing is done and False is returned
        (the caller sends the request again with a way to load it). True otherwise."""
        if not channel.wants(key):  # its consumer left (or the channel closed) before it started
            return True
        try:
            # taken, not checked: a warm on another thread may evict the version between a check and a submit
            memory_kv = self.core.cached_memory(request.handle)
            stm = None
            if memory_kv is None:
                if load_stm is None:
                    return False
                stm = await load_stm(request.handle)
                if not channel.wants(key):  # ... while its STM was loading
                    return True
            outlet = channel.outlet(key)

            def sink(tokens: list[int], done: bool, error: BaseException | None) -> None:
                outlet.push(tokens, done, error)
                if done:
                    self._requests.pop((id(channel), key), None)

            self._requests[(id(channel), key)] = self.core.submit(request, stm, sink, memory_kv)
        except Exception as exc:
            channel.fail(key, exc)
            return True
        self._ensure_running()
        return True

    def cancel_in(self, channel: Channel, key: int) -> None:
        """Stop request ``key`` of ``channel`` (its consumer went away); one whose submit is still on its
        way does not start."""
        channel.drop(key)
        request_id = self._requests.pop((id(channel), key), None)
        if request_id is not None:
            self._cancel(request_id)

    def close_channel(self, channel: Channel) -> None:
        """Its reader is gone: close it and stop every request still running on it."""
        channel.close()
        for _, key in [k for k in self._requests if k[0] == id(channel)]:
            self.cancel_in(channel, key)

    async def set_weights(self, state: dict[str, torch.Tensor]) -> None:
        """`DecoderCore.set_weights` once the step thread is idle (raises while requests are in flight)."""
        if self.core.busy:
            raise RuntimeError("weights can only change between interactions; requests are in flight")
        if self._runner is not None and not self._runner.done():
            await asyncio.shield(self._runner)  # the last steps' bookkeeping, or a cancel handed over
        self.core.set_weights(state)

    def close(self) -> None:
        """Let the step thread end once it is idle (a later request starts a new one)."""
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None

    def stats(self) -> dict[str, float]:
        """Decode steps run so far, and their wall and thread-CPU time in ms (operators, benchmarks)."""
        return dict(self._stats)

    def _cancel(self, request_id: int) -> None:
        self._cancelled.append(request_id)
        with contextlib.suppress(RuntimeError):  # no running loop (closed at shutdown): runs with the next steps
            self._ensure_running()

    def _ensure_running(self) -> None:
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # re-checked here, on the loop: work handed over after the thread's last look starts another run
        while self.core.busy or self._cancelled:
            if self._thread is None:  # first use, or after close()
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reactor-decode",
                                                  initializer=torch.set_num_threads,
                                                  initargs=(torch.get_num_threads(),))
            await loop.run_in_executor(self._thread, self._steps)

    def _steps(self) -> None:
        """On the step thread: steps until nothing is left, with the cancels handed over run in between."""
        stats = self._stats
        while True:
            while self._cancelled:
                try:
                    self.core.cancel(self._cancelled.popleft())
                except Exception:
                    log.exception("decoder.cancel_failed")
            if not self.core.busy:
                return
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                self.core.step()
            except Exception as exc:
                # a failed batched step fails the requests in it; those queued meanwhile run next
                log.exception("decoder.step_failed")
                self.core.fail_step(exc)
            stats["steps"] += 1
            stats["step_wall_ms"] += 1000 * (time.perf_counter() - wall)
            stats["step_cpu_ms"] += 1000 * (time.thread_time() - cpu)


class DecoderActorImpl(LinkHost):
    """Ray actor named ``decoder``: one process generating for every stream."""

    def __init__(self, model: ReactiveTransformer, capacity: int = 16, threads: int = 1,
                 chunk_tokens: int = 32, chunk_ms: float = 50.0, align_finish_steps: int = 0,
                 compile: bool = False) -> None:
        torch.set_num_threads(threads)
        core = DecoderCore(model, capacity=capacity, align_finish_steps=align_finish_steps, compile=compile)
        self.service = DecoderService(core, chunk_tokens=chunk_tokens, chunk_ms=chunk_ms)
        self.weights_version = 0
        self._channels: dict[str, Channel] = {}
        self._closed_channels: OrderedDict[str, None] = OrderedDict()  # ids whose reader has gone
        self._submits = {"link_submits": 0, "ray_submits": 0}  # how requests arrived (operators, tests)
        # a conductor on this node submits and reads chunks over a local link (see events.local_link)
        self.link = LinkServer({"submit": self._submit_cached, "cancel": self.cancel,
                                "prepare": self._prepare_wired}, {"channel": self._batches})
        settle_actor_process()

    def _channel(self, channel_id: str) -> Channel:
        channel = self._channels.get(channel_id)
        if channel is None:
            if channel_id in self._closed_channels:  # a late submit for a reader that has gone: a closed
                channel = self.service.open_channel()  # channel starts nothing, and is not kept
                channel.close()
                return channel
            # the first of the channel's stream and a submit (either may come first)
            channel = self._channels[channel_id] = self.service.open_channel()
        return channel

    @ray.method(num_returns="streaming")
    async def channel(self, channel_id: str) -> AsyncIterator[list[ChunkItem]]:
        """The stream of chunk batches for the requests `submit` starts under ``channel_id``; one per
        consumer (the conductor), open as long as it reads."""
        async for batch in self._batches(channel_id):
            yield batch

    async def _batches(self, channel_id: str) -> AsyncIterator[list[ChunkItem]]:
        channel = self._channel(channel_id)
        try:
            async for batch in channel.batches():
                yield batch
        finally:
            self.service.close_channel(channel)  # its requests stop: nobody reads their tokens now
            if self._channels.get(channel_id) is channel:
                del self._channels[channel_id]
            self._closed_channels[channel_id] = None
            while len(self._closed_channels) > _CLOSED_CHANNELS_KEPT:
                self._closed_channels.popitem(last=False)

    async def submit(self, channel_id: str, key: int, request: GenerateRequest) -> None:
        """Start a request; its tokens arrive on the channel (errors too). Returns once it is queued."""
        await self._start(channel_id, key, request, "ray_submits")

    async def _start(self, channel_id: str, key: int, request: GenerateRequest, via: str) -> bool:
        """`DecoderService.submit_to` on the channel; ``via`` "link_submits": the request came without
        its STM reference, so only a cached version starts (False on a miss, with nothing done)."""
        channel = self._channel(channel_id)

        async def load(handle: STMHandle) -> torch.Tensor:
            return await handle.stm

        taken = await self.service.submit_to(channel, key, request, None if via == "link_submits" else load)
        if taken:
            self._submits[via] += 1
        return taken

    async def _submit_cached(self, channel_id: str, key: int, fields: dict[str, Any]) -> bool:
        """`submit` for a request sent without its STM reference (over the local link): starts it and
        returns True when this version's memory keys/values are cached (True too when it is not wanted
        any more: cancelled, or its reader has gone), else returns False with nothing done (the caller
        then sends it with the reference through Ray). The check is the taking: a version evicted
        meanwhile is a miss, not a failed request."""
        return await self._start(channel_id, key, GenerateRequest.from_wire(fields), "link_submits")

    async def _prepare_wired(self, handles: list[list[Any] | None], stms: list[list[Any] | None]) -> None:
        """`prepare_many` as the local link carries it (handles and tensors as plain fields)."""
        await self.prepare_many([None if h is None else STMHandle.from_wire(h) for h in handles],
                                [None if t is None else tensor_from_wire(t, copy=False) for t in stms])  # type: ignore[misc]

    async def cancel(self, channel_id: str, key: int) -> None:
        channel = self._channels.get(channel_id)
        if channel is not None:
            self.service.cancel_in(channel, key)

    async def prepare_many(self, handles: list[STMHandle | None], stms: list[torch.Tensor]) -> None:
        """Warm the memory keys/values of the versions one batched update wrote (None: that item was not
        written), so their next queries do not wait for the STM to be fetched (``stms`` arrive with the
        call, resolved by Ray)."""
        written = [(handle, stm) for handle, stm in zip(handles, stms, strict=True) if handle is not None]
        if not written:
            return
        try:
            # on this thread: the cache has a lock
            self.service.core.warm_many([handle for handle, _ in written], [stm for _, stm in written])
        except Exception:  # only a lost head start: submit() loads the STM itself
            log.exception("decoder.prepare_failed", memories=len(written),
                          memory=written[0][0].memory_id[:256], version=written[0][0].version)

    async def loaded_weights_version(self) -> int:
        """The learned weights this actor serves (0 after a restart, until they are pushed again)."""
        return self.weights_version

    async def set_weights(self, version: int, state: dict[str, torch.Tensor]) -> int:
        await self.service.set_weights(state)
        self.weights_version = version
        return version

    async def stats(self) -> dict[str, float]:
        """Decode-step counters (`DecoderService.stats`), how many requests came over the local link and
        over Ray, and whether a lone answer's steps run compiled (1.0) or not (0.0)."""
        return {**self.service.stats(), **self._submits, "compiled": float(self.service.core.batch.compiled)}

    async def ping(self) -> bool:
        return True


DecoderActor = ray.remote(DecoderActorImpl)

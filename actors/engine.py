"""How the conductor reaches the model: one protocol, an in-process engine and a Ray engine.

The conductor's logic (ordering, queues, events) is the same whichever engine runs the model, so it is
tested in-process and served over Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import ray
import ray.exceptions
import structlog
import torch

from reactor_rt.actors.background import Background
from reactor_rt.actors.decoder import DecoderCore, DecoderService
from reactor_rt.actors.decoder_client import ChannelClosedError, DecoderChannelClient
from reactor_rt.actors.encoder import EncoderCore
from reactor_rt.actors.handles import (
    GenerateRequest,
    STMHandle,
    new_token,
    tensor_from_wire,
    tensor_to_wire,
    wire_copy,
)
from reactor_rt.actors.learner import LearnerCore
from reactor_rt.actors.memory_updater import MemoryUpdaterCore
from reactor_rt.actors.stm_store import STMRegistry
from reactor_rt.actors.update_batcher import UpdateBatcher
from reactor_rt.errors import ReactorError, RuntimeUnavailableError, StaleVersionError
from reactor_rt.events.local_link import LinkClient, LinkClosedError, LinkResolver
from reactor_rt.events.ray_errors import transient as _transient
from reactor_rt.events.ray_errors import unwrap as _unwrap
from reactor_rt.learning import LearningExample, LearningResult
from reactor_rt.model import ReactiveTransformer
from reactor_rt.store import STMStore

__all__ = ["ActorSet", "InteractionEngine", "LocalEngine", "RayEngine", "RetryPolicy", "push_weights"]

log = structlog.get_logger()
T = TypeVar("T")

# a big update batch while no answer is generated runs on 2 torch threads: a 14-item encode is 1.6-1.7x
# faster so (in one process), and the decoder's CPU is idle meanwhile
IDLE_UPDATE_THREADS = 2
IDLE_UPDATE_MIN_ITEMS = 4
_Update = tuple[STMHandle, list[int], str]  # (the version it starts from, the interaction's ids, its id)


class InteractionEngine(Protocol):
    """What one interaction needs from the model side."""

    async def handle(self, memory_id: str) -> STMHandle:
        """The memory's latest version."""
        ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[list[int]]:
        """The answer's token ids, in chunks."""
        ...

    async def update(self, handle: STMHandle, interaction_ids: list[int], interaction: str) -> STMHandle:
        """Encode the interaction, update the memory, persist the new version, return its handle."""
        ...

    async def tensor(self, memory_id: str) -> tuple[int, torch.Tensor]:
        """``(version, stm)`` of the memory's latest version."""
        ...

    async def fork(self, src: str, dst: str) -> STMHandle:
        """Create memory ``dst`` as a copy of ``src``."""
        ...

    async def put(self, memory_id: str, stm: torch.Tensor, expected_version: int) -> STMHandle:
        """Store ``stm`` as the memory's next version (import)."""
        ...

    async def stm_at(self, memory_id: str, version: int) -> torch.Tensor | None:
        """A recent version's STM (None when it is no longer kept)."""
        ...

    async def learn(self, example: LearningExample) -> LearningResult:
        """One live-learning update on the learner (which keeps its own copy of the model)."""
        ...

    async def learner_behind(self) -> bool:
        """Whether the learner is at an older weights version than the one serving (it restarted with
        nothing saved): `swap_weights` then gives it the serving weights, before it learns on."""
        ...

    async def swap_weights(self) -> int:
        """Load the learner's newest weights into every serving model; returns their version.

        The caller guarantees that no interaction is in flight.
        """
        ...

    async def close(self) -> None:
        """Release what the engine holds open (the conductor stops)."""
        ...


class LocalEngine:
    """Runs decoder, encoder, memory update and store in this process (tests, embedded use)."""

    HISTORY = 16  # recent versions kept per memory, as the STM store actor keeps them

    def __init__(self, model: ReactiveTransformer, store: STMStore, capacity: int = 16,
                 learner: LearnerCore | None = None, **chunking: Any) -> None:
        self.model = model
        self.decoder = DecoderService(DecoderCore(model, capacity=capacity), **chunking)
        self.encoder = EncoderCore(model)
        self.updater = MemoryUpdaterCore(model)
        with torch.no_grad():
            initial = model.init_stm(batch_size=1)[0]
        self.registry = STMRegistry(store, initial)
        self.learner = learner
        self.weights_version = 0
        self._history: dict[str, OrderedDict[int, STMHandle]] = {}
        self._initial_token = new_token()  # shared by every memory not written yet (see STMHandle)

    def _handle(self, memory_id: str, version: int, stm: torch.Tensor) -> STMHandle:
        history = self._history.setdefault(memory_id, OrderedDict())
        if version not in history:
            token = self._initial_token if version == 0 else new_token()
            history[version] = STMHandle(memory_id, version, stm, token)
            while len(history) > self.HISTORY:
                history.popitem(last=False)
        return history[version]

    async def handle(self, memory_id: str) -> STMHandle:
        version, stm = self.registry.load(memory_id)
        return self._handle(memory_id, version, stm)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[list[int]]:
        async def load(handle: STMHandle) -> torch.Tensor:
            return handle.stm

        async for chunk in self.decoder.generate(request, load):
            yield chunk

    async def update(self, handle: STMHandle, interaction_ids: list[int], interaction: str) -> STMHandle:
        encoded = self.encoder.encode(interaction_ids)
        new = self.updater.update(handle.stm, encoded)
        version, stm = self.registry.commit(handle.memory_id, handle.version, new, interaction)
        return self._handle(handle.memory_id, version, stm)

    async def tensor(self, memory_id: str) -> tuple[int, torch.Tensor]:
        version, stm = self.registry.load(memory_id)
        return version, stm.clone()

    async def fork(self, src: str, dst: str) -> STMHandle:
        version, stm = self.registry.fork(src, dst)
        return self._handle(dst, version, stm)

    async def put(self, memory_id: str, stm: torch.Tensor, expected_version: int) -> STMHandle:
        version, stored = self.registry.commit(memory_id, expected_version, stm, None)
        return self._handle(memory_id, version, stored)

    async def stm_at(self, memory_id: str, version: int) -> torch.Tensor | None:
        handle = self._history.get(memory_id, {}).get(version)
        return None if handle is None else handle.stm.clone()

    async def learn(self, example: LearningExample) -> LearningResult:
        if self.learner is None:
            raise ReactorError("live learning is off in this runtime")
        # in a thread: an update takes long, and on the loop it held up every stream's chunks and queries
        return await asyncio.to_thread(self.learner.apply, example)

    async def learner_behind(self) -> bool:
        return self.learner is not None and self.learner.weights_version < self.weights_version

    async def swap_weights(self) -> int:
        if self.learner is None:
            return self.weights_version
        version, state = self.learner.weights_since(self.weights_version)
        if state is not None and version < self.weights_version:  # the learner lost its state (RayEngine)
            self.learner.adopt(self.weights_version, self._served_weights())
        elif state is not None:
            await self.decoder.set_weights(state)  # encoder and updater share this model object
            self.weights_version = version
        return self.weights_version

    def _served_weights(self) -> dict[str, torch.Tensor]:
        """The serving model's values of the parameters the learner changes."""
        assert self.learner is not None
        params = dict(self.model.named_parameters())
        return {name: params[name].detach().clone() for name in self.learner.learner.parameter_names()}

    async def close(self) -> None:
        """Stop the decoder's step thread (everything else runs on the caller's loop)."""
        self.decoder.close()


@dataclass(frozen=True)
class ActorSet:
    """Handles of the runtime's model actors."""

    decoder: Any
    encoder: Any
    memory: Any
    stm: Any
    learner: Any = None


@dataclass(frozen=True)
class RetryPolicy:
    """How long idempotent actor calls are retried while an actor restarts (a restart re-imports torch
    and reloads the model: seconds)."""

    deadline_s: float = 60.0
    first_delay_s: float = 0.1
    max_delay_s: float = 2.0



def _reactor_error(exc: BaseException, what: str) -> BaseException:
    """What the conductor sees instead of a raw Ray exception."""
    cause = _unwrap(exc)
    if isinstance(cause, ReactorError | ValueError | TypeError):
        return cause
    if _transient(exc):
        return RuntimeUnavailableError(f"{what}: an actor is unavailable ({type(cause).__name__})")
    return RuntimeUnavailableError(f"{what} failed: {type(cause).__name__}: {str(cause)[:500]}")


class RayEngine:
    """Calls the runtime's Ray actors. The encoded interaction and the new STM pass between actors
    through Ray's object store: this process only forwards references.

    Faults: idempotent calls (reading a handle or a tensor, the memory update: encode and update are
    pure, the commit is idempotent on the interaction id) are retried while an actor restarts; an answer
    is retried only before its first chunk. What still fails is raised as a `ReactorError`.
    """

    # at most this many memories keep the STM this process computed for their next update
    LATEST = 1024

    def __init__(self, actors: ActorSet, weights_version: int = 0, retry: RetryPolicy | None = None,
                 local_link: bool = True) -> None:
        self.actors = actors
        self.weights_version = weights_version
        self.retry = retry or RetryPolicy()
        self.retries = 0  # transient failures retried so far (for operators and tests)
        # memory id -> (version, ref, index): the memory updater's batch result holding that version's
        # STM at ``index``. This process owns the object, so Ray sends it along with the next update
        # (and the decoder's prepare) instead of the receiver fetching the store's copy. Over local
        # links ref is None and index the STM itself, as `tensor_to_wire` fields
        self._latest: OrderedDict[str, tuple[int, Any, Any]] = OrderedDict()
        self._initial: tuple[str, list[Any]] | None = None  # (token, fields) of the shared initial STM
        # encoder and memory updater on this node: the update's two model calls go over local links
        self._encoder_link = LinkResolver(lambda: actors.encoder.link_address.remote(), enabled=local_link)
        self._memory_link = LinkResolver(lambda: actors.memory.link_address.remote(), enabled=local_link)
        # and the STM store: handles committed over it come without the STM reference (see `_full`)
        self._stm_link = LinkResolver(lambda: actors.stm.link_address.remote(), enabled=local_link)
        self._updates: UpdateBatcher[_Update, STMHandle] = UpdateBatcher(self._update_batch)
        self._generating = 0  # answers being generated now (see `_update_threads`)
        self._serving_state: dict[str, torch.Tensor] | None = None  # the learned weights last pushed
        self._background = Background()
        # one chunk stream for every answer (over a local link when the decoder runs on this node)
        self._decoder = DecoderChannelClient(actors.decoder, local_link=local_link, resolve=self._full)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]],
                        on_retry: Callable[[], Awaitable[None]] | None = None) -> T:
        deadline = time.monotonic() + self.retry.deadline_s
        delay = self.retry.first_delay_s
        while True:
            try:
                return await call()
            except ray.exceptions.RayError as exc:
                if not _transient(exc) or time.monotonic() + delay > deadline:
                    raise _reactor_error(exc, what) from None
                self.retries += 1
                log.warning("engine.retry", call=what, error=type(_unwrap(exc)).__name__, delay_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry.max_delay_s)
            if on_retry is not None:
                with contextlib.suppress(ray.exceptions.RayError):  # the next attempt fails again
                    await on_retry()

    async def _once(self, what: str, ref: Awaitable[T]) -> T:
        """A call that is not safe to repeat: Ray failures only become `ReactorError`s."""
        try:
            return await ref
        except ray.exceptions.RayError as exc:
            raise _reactor_error(exc, what) from None

    async def handle(self, memory_id: str) -> STMHandle:
        return await self._retrying("reading the STM handle", lambda: self.actors.stm.handle.remote(memory_id))

    async def generate(self, request: GenerateRequest) -> AsyncIterator[list[int]]:
        self._generating += 1
        try:
            async for chunk in self._generate(request):
                yield chunk
        finally:
            self._generating -= 1

    async def _generate(self, request: GenerateRequest) -> AsyncIterator[list[int]]:
        started = False
        deadline = time.monotonic() + self.retry.deadline_s
        delay = self.retry.first_delay_s
        retried = False
        while True:
            try:
                if retried:
                    await self._resync_weights()
                async for chunk in self._decoder.stream(request):
                    started = True
                    yield chunk
                self._updates.expect()  # its memory update follows: batch it with others ending now
                return
            except (ray.exceptions.RayError, ChannelClosedError, LinkClosedError) as exc:
                # nothing streamed yet: the request can start again; after a chunk the answer is lost
                transient = isinstance(exc, ChannelClosedError | LinkClosedError) or _transient(exc)
                if started or not transient or time.monotonic() + delay > deadline:
                    raise _reactor_error(exc, "generating the answer") from None
                self.retries += 1
                log.warning("engine.retry", call="generate", error=type(_unwrap(exc)).__name__, delay_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry.max_delay_s)
            request = await self._same_version(request)
            retried = True

    async def _resync_weights(self) -> None:
        """A restarted actor comes back with the checkpoint's weights: load the serving ones again, into
        the actors that lack them only (this runs inside an interaction: a decoder serving other
        streams refuses new weights, and the others must not move past it)."""
        if self.actors.learner is None or self.weights_version == 0:
            return
        version, state = await self.actors.learner.weights_since.remote(0)
        if state is None or version != self.weights_version:
            # the learner is past what serves: its update waits for the swap between interactions,
            # which loads it into every actor; loading it now would mix versions mid-interaction
            log.warning("engine.resync_deferred", serving=self.weights_version, learner=version)
            return
        model_actors = (self.actors.decoder, self.actors.encoder, self.actors.memory)
        loaded = await asyncio.gather(*(actor.loaded_weights_version.remote() for actor in model_actors))
        await asyncio.gather(*(actor.set_weights.remote(version, state)
                               for actor, have in zip(model_actors, loaded, strict=True) if have != version))

    async def _same_version(self, request: GenerateRequest) -> GenerateRequest:
        """The request with a fresh handle on the same version (the STM store may have restarted,
        losing the objects it owned)."""
        try:
            fresh = await self.actors.stm.handle.remote(request.handle.memory_id)
        except ray.exceptions.RayError:
            return request
        return dataclasses.replace(request, handle=fresh) if fresh.version == request.handle.version else request

    async def update(self, handle: STMHandle, interaction_ids: list[int], interaction: str) -> STMHandle:
        return await self._updates.submit((handle, interaction_ids, interaction))

    def _update_threads(self, items: int) -> int:
        """Torch threads for an update batch's encoder and memory-updater calls: more than one only for
        a big batch while no answer is being generated (streams that answered together update together,
        and the decoder's CPU then waits for them). 16 streams: 8-14 % more tokens/s (A/B in one runtime);
        a lone update gains next to nothing and would take the CPU from a decode step."""
        return IDLE_UPDATE_THREADS if items >= IDLE_UPDATE_MIN_ITEMS and self._generating == 0 else 1

    async def _update_batch(self, items: list[_Update]) -> list[STMHandle | BaseException]:
        """One encoder, one memory-updater and one store call for every update gathered together.
        A Ray failure sends each item through `_update_retrying` (commits are idempotent)."""
        encoder, memory = await self._encoder_link.get(), await self._memory_link.get()
        if encoder is not None and memory is not None:
            return await self._update_batch_linked(items, encoder, memory)
        sources: list[Any] = []
        where: dict[int, int] = {}
        picks: list[tuple[int, int | None]] = []
        for handle, _, _ in items:
            try:
                ref, index = await self._stm_source(handle)
            except (ray.exceptions.RayError, ReactorError):  # e.g. one version no longer kept: that item fails alone
                return await self._one_at_a_time(items)
            picks.append((where.setdefault(id(ref), len(sources)), index))
            if len(sources) < len(where):
                sources.append(ref)
        try:
            threads = self._update_threads(len(items))
            encoded = self.actors.encoder.encode_many.remote([ids for _, ids, _ in items], threads)
            new = self.actors.memory.update_many.remote(encoded, picks, *sources, threads=threads)
            results = await self.actors.stm.commit_many.remote(
                [(handle.memory_id, handle.version, interaction) for handle, _, interaction in items], new)
        except ray.exceptions.RayError as exc:
            log.warning("engine.batch_update_failed", items=len(items), error=type(_unwrap(exc)).__name__)
            return await self._one_at_a_time(items)
        out, written = self._committed(items, results, lambda i: (new, i))
        if any(h is not None for h in written):
            # the decoder pre-computes the new versions' memory keys/values now, off the next query's path
            await self._decoder.warm(written, new)
        return out

    async def _update_batch_linked(self, items: list[_Update], encoder: LinkClient,
                                   memory: LinkClient) -> list[STMHandle | BaseException]:
        """`_update_batch` with the encoder and memory updater on this node: both calls over local links
        (tensors travel as plain fields); the commit too when the STM store is here (its handles then
        come without the STM reference, see `_full`), else through Ray."""
        try:
            stms = [await self._stm_fields(handle) for handle, _, _ in items]
            threads = self._update_threads(len(items))
            # on one thread the encoder takes one core: the updater does the STM side of the update on
            # another meanwhile (its call after the encoder's is then shorter, and no longer starts cold)
            versions = [[handle.memory_id, handle.version] for handle, _, _ in items] if threads == 1 else None
            if versions is not None:
                memory.notify("prepare_many", versions, stms)
            encoded = await encoder.call("encode_many", [ids for _, ids, _ in items], threads)
            if versions is not None:
                new = await memory.call("update_prepared", versions, encoded)
            else:
                new = await memory.call("update_many", encoded, stms, threads)
            meta = [(handle.memory_id, handle.version, interaction) for handle, _, interaction in items]
            store = await self._stm_link.get()
            if store is None:
                results = await self.actors.stm.commit_many.remote(meta, [tensor_from_wire(f) for f in new])
            else:
                results = [STMHandle.from_wire(r) if isinstance(r, list) else r
                           for r in await store.call("commit_many", meta, new)]
        except Exception as exc:  # a link or an actor went away, or a call failed: one at a time, retried
            if isinstance(exc, LinkClosedError):
                self._encoder_link.reset()
                self._memory_link.reset()
                self._stm_link.reset()
            log.warning("engine.batch_update_failed", items=len(items), error=type(_unwrap(exc)).__name__)
            return await self._one_at_a_time(items)
        out, written = self._committed(items, results, lambda i: (None, wire_copy(new[i])))
        if any(h is not None for h in written):
            self._decoder.warm_fields(written, [None if h is None else new[i] for i, h in enumerate(written)])
        return out

    def _committed(self, items: list[_Update], results: list[Any], source: Callable[[int], tuple[Any, Any]]
                   ) -> tuple[list[STMHandle | BaseException], list[STMHandle | None]]:
        """Each item's outcome, and the handles this batch wrote (None where it did not); remembers the
        written STMs (``source(i)``: where item i's STM is, see ``_latest``) for the next update."""
        out: list[STMHandle | BaseException] = []
        written: list[STMHandle | None] = []
        for i, ((handle, _, _), result) in enumerate(zip(items, results, strict=True)):
            fresh = isinstance(result, STMHandle) and result.version == handle.version + 1
            if fresh:  # this update's result is what the store now holds
                self._remember(result, *source(i))
            else:
                self._latest.pop(handle.memory_id, None)
            written.append(result if fresh else None)
            out.append(result if isinstance(result, STMHandle) else _reactor_error(result, "updating the memory"))
        return out, written

    async def _stm_fields(self, handle: STMHandle) -> list[Any]:
        """The STM of ``handle`` as `tensor_to_wire` fields: the one this process computed for that
        version, the initial STM fetched once (every new memory's version 0 shares it), else the
        store's copy."""
        latest = self._latest.get(handle.memory_id)
        if latest is not None and latest[0] == handle.version:
            ref, index = latest[1], latest[2]
            return index if ref is None else tensor_to_wire((await ref)[index])
        if handle.version == 0 and self._initial is not None and self._initial[0] == handle.token:
            return self._initial[1]
        fields = tensor_to_wire(await (await self._full(handle)).stm)
        if handle.version == 0:
            self._initial = (handle.token, fields)
        return fields

    async def _full(self, handle: STMHandle) -> STMHandle:
        """``handle`` with its STM reference: a version committed over the local link is handed out
        without one, and the store puts it in Ray's object store right after."""
        if handle.stm is not None:
            return handle
        full = await self.actors.stm.handle_at.remote(handle.memory_id, handle.version)
        if full is None:  # no longer kept (many newer versions since): the latest, if it is that version
            full = await self.actors.stm.handle.remote(handle.memory_id)
            if full.version != handle.version:
                raise StaleVersionError(f"version {handle.version} of memory {handle.memory_id[:256]!r} "
                                        f"is no longer kept (the store is at {full.version})")
        return full

    async def _one_at_a_time(self, items: list[_Update]) -> list[STMHandle | BaseException]:
        """A batch that failed: each item through `_update_retrying` (commits are idempotent)."""
        return await asyncio.gather(*(self._update_retrying(*item) for item in items), return_exceptions=True)

    async def _update_retrying(self, handle: STMHandle, interaction_ids: list[int], interaction: str) -> STMHandle:
        """One update with retries while actors restart, from the store's copy of the STM."""
        self._latest.pop(handle.memory_id, None)
        current = handle
        retried = False

        async def attempt() -> STMHandle:
            nonlocal current
            if retried:
                await self._resync_weights()
            current = await self._full(current)
            if current.version != handle.version:
                # the memory moved on: this interaction was committed before the failure (the store
                # then returns that version) or another write won (StaleVersionError)
                return await self.actors.stm.commit.remote(handle.memory_id, handle.version, current.stm, interaction)
            encoded = self.actors.encoder.encode.remote(interaction_ids)
            new_stm = self.actors.memory.update.remote(current.stm, encoded)
            return await self.actors.stm.commit.remote(handle.memory_id, handle.version, new_stm, interaction)

        async def refresh() -> None:
            nonlocal current, retried
            retried = True
            current = await self.actors.stm.handle.remote(handle.memory_id)

        return await self._retrying("updating the memory", attempt, refresh)

    async def _stm_source(self, handle: STMHandle) -> tuple[Any, int | None]:
        """Where the STM of ``handle`` is: our own batch result when we computed that version (sent
        along with the call: no fetch), else the STM store's object."""
        latest = self._latest.get(handle.memory_id)
        if latest is not None and latest[0] == handle.version and latest[1] is not None:
            return latest[1], latest[2]
        return (await self._full(handle)).stm, None

    def _remember(self, handle: STMHandle, ref: Any, index: Any) -> None:
        self._latest[handle.memory_id] = (handle.version, ref, index)
        self._latest.move_to_end(handle.memory_id)
        while len(self._latest) > self.LATEST:
            self._latest.popitem(last=False)

    async def close(self) -> None:
        """Stop the decoder channel's reader and the calls sent without waiting."""
        await self._decoder.close()
        self._background.cancel()

    async def tensor(self, memory_id: str) -> tuple[int, torch.Tensor]:
        return await self._retrying("reading the STM", lambda: self.actors.stm.tensor.remote(memory_id))

    async def fork(self, src: str, dst: str) -> STMHandle:
        return await self._once("forking the memory", self.actors.stm.fork.remote(src, dst))

    async def put(self, memory_id: str, stm: torch.Tensor, expected_version: int) -> STMHandle:
        self._latest.pop(memory_id, None)
        return await self._once("importing the memory",
                                self.actors.stm.commit.remote(memory_id, expected_version, stm, None))

    async def stm_at(self, memory_id: str, version: int) -> torch.Tensor | None:
        try:
            handle = await self.actors.stm.handle_at.remote(memory_id, version)
            return None if handle is None else await handle.stm
        except ray.exceptions.RayError as exc:
            if _transient(exc):
                return None  # the STM store restarted: old versions are no longer kept
            raise _reactor_error(exc, "reading an old STM version") from None

    async def learn(self, example: LearningExample) -> LearningResult:
        if self.actors.learner is None:
            raise ReactorError("live learning is off in this runtime")
        return await self._once("live learning", self.actors.learner.apply.remote(example))

    async def learner_behind(self) -> bool:
        if self.actors.learner is None or self._serving_state is None:
            return False
        version = await self._once("reading the learner's version", self.actors.learner.weights_version.remote())
        return version < self.weights_version

    async def swap_weights(self) -> int:
        if self.actors.learner is None:
            return self.weights_version
        version, state = await self.actors.learner.weights_since.remote(self.weights_version)
        if state is not None and version < self.weights_version and self._serving_state is not None:
            # the learner restarted with nothing saved (no weights directory): its weights are older
            # than the ones serving. Pushing them would move serving back and lose what was learned;
            # it takes the serving ones instead, and learns on from them
            log.warning("engine.learner_behind", learner=version, serving=self.weights_version)
            await self._once("restoring the learner", self.actors.learner.adopt.remote(
                self.weights_version, self._serving_state))
        elif state is not None:
            await push_weights(self.actors, version, state)
            self.weights_version = version
            self._serving_state = state
        return self.weights_version


async def push_weights(actors: ActorSet, version: int, state: dict[str, torch.Tensor]) -> None:
    """Load one weights version into the decoder, encoder and memory-updater actors (one object, shared)."""
    ref = ray.put(state)
    await asyncio.gather(actors.decoder.set_weights.remote(version, ref), actors.encoder.set_weights.remote(version, ref),
                         actors.memory.set_weights.remote(version, ref))

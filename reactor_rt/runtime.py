"""The `Reactor` facade: starts (or joins) Ray, runs the actors, and hands out stream handles.

Everything here is a convenience over the event bus: ``ask()`` publishes a ``Query`` and yields that
interaction's events, which arrive through one watching subscription for all of this client's streams
(`reactor_rt.inbox`: a stream joins its watch list at its first question); the conductor does the work.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
import torch

from reactor_rt.actors.thoughts import Budget, StopRule
from reactor_rt.error_codes import error_for
from reactor_rt.errors import (
    ConfigError,
    QueryTooLongError,
    ReactorError,
    RuntimeUnavailableError,
    StoreError,
)
from reactor_rt.events import Event, LearningFeedback, Query
from reactor_rt.ids import validate_id
from reactor_rt.inbox import Inbox
from reactor_rt.model import ReactiveTransformer, RxTConfig
from reactor_rt.openmp import OPENMP_SPIN_COUNT
from reactor_rt.store.lock import StoreLock
from reactor_rt.store.url import sqlite_path

__all__ = ["DEFAULT_NAMESPACE", "Budget", "Reactor", "Stream", "Subscription", "Thinking", "default_store",
           "resolve_model"]

log = structlog.get_logger()

DEFAULT_NAMESPACE = "reactor_rt"
CLIENT_SOURCE = "reactor-rt/client"
# objects up to this size travel inside Ray's messages (see _ensure_ray)
INLINE_OBJECT_BYTES = 1 << 20
# a query's text can never need more characters than this per allowed token (UTF-8 bytes, worst case)
_MAX_CHARS_PER_TOKEN = 16


def resolve_model(model: str | os.PathLike[str] | ReactiveTransformer | None) -> ReactiveTransformer:
    """A bundled name (``"tiny"``), a checkpoint directory, or a model instance -> an eval-mode model."""
    if isinstance(model, ReactiveTransformer):
        return model.eval()
    from reactor_rt.bundled import load_model

    if model is None:
        return load_model("tiny")
    path = Path(model)
    if path.is_dir():
        return ReactiveTransformer.from_pretrained(path).eval()
    if isinstance(model, str) and os.sep not in model:
        return load_model(model)  # a bundled name; unknown names raise a clear error there
    raise ReactorError(f"model {str(model)!r} is neither a bundled model name nor a checkpoint directory")


def default_store() -> str:
    """``sqlite:///$REACTOR_RT_HOME/stm.db`` (``~/.reactor-rt`` unless the variable says otherwise)."""
    home = Path(os.environ.get("REACTOR_RT_HOME", Path.home() / ".reactor-rt")).expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the reactor-rt home {str(home)!r} (set REACTOR_RT_HOME): {exc}") from exc
    return f"sqlite:///{home / 'stm.db'}"


def _absolute_store(store: str) -> str:
    """``store`` with a SQLite path made absolute (``~`` expanded), so that every process opens the same
    file whatever its working directory; other URLs as they are."""
    path = sqlite_path(store)
    if not path or path == ":memory:":  # (both refused by open_store, with the reason)
        return store
    return "sqlite:///" + str(_absolute_path(path))


def _absolute_path(path: str | None) -> str | None:
    if path is None or path == ":memory:":
        return path
    return str(Path(path).expanduser().absolute())


def weights_path(store: str) -> str | None:
    """Live-learned weights live beside a SQLite STM store (``x.db`` -> ``x.weights/``)."""
    path = sqlite_path(store)
    return None if path is None else str(Path(path).with_name(Path(path).stem + ".weights"))


def event_log_path(store: str) -> str:
    """The durable event log lives beside a SQLite STM store (``x.db`` -> ``x.events.db``); with any
    other store it is an in-memory log, so replays (``subscribe(after=...)``) work while the runtime
    runs."""
    path = sqlite_path(store)
    return ":memory:" if path is None else str(Path(path).with_name(Path(path).stem + ".events.db"))


class Stream:
    """A handle on one interaction stream. It holds only ids, so it survives actor restarts."""

    def __init__(self, reactor: Reactor, stream_id: str, memory_id: str, stm_version: int) -> None:
        self._rx = reactor
        self.id = stream_id
        self.memory_id = memory_id
        self.stm_version = stm_version  # the last completed update this handle knows of
        self._last_query_seq = 0  # memory()/fork() wait for this query, which may still be on the bus

    def __repr__(self) -> str:
        return f"Stream({self.id!r}, memory={self.memory_id!r}, stm_version={self.stm_version})"

    async def ask(self, text: str, *, max_new_tokens: int | None = None, temperature: float | None = None,
                  top_k: int | None = None, top_p: float | None = None) -> AsyncIterator[Event]:
        """Yield this interaction's events in order, up to ``rx.memory.updated``.

        Leaving the loop early is fine: the memory update goes on in the background. An ``rx.error``
        event is yielded, then raised as the matching `ReactorError`.
        """
        query = self._rx._query(self.id, text, max_new_tokens=max_new_tokens, temperature=temperature,
                                top_k=top_k, top_p=top_p)
        bus, inbox = self._rx._bus, self._rx._inbox  # the bus first: it refuses a closed Reactor
        events = await inbox.register(self.id, query.interaction)  # live before the query is published
        try:
            (sent,) = await bus.publish_many([query])
            # concurrent asks may return out of order: memory()/fork() must wait for the latest
            self._last_query_seq = max(self._last_query_seq, sent.seq)
            yield sent  # the query as the bus stamped it (the inbox does not route queries)
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                if event.type == "rx.response.done":
                    self.stm_version = max(self.stm_version, event.data.stm_version)
                elif event.type == "rx.memory.updated":
                    self.stm_version = max(self.stm_version, event.data.version)
                yield event
                if event.type == "rx.error":
                    raise error_for(event.data.code, event.data.message)
                if event.type == "rx.memory.updated":
                    return
        finally:
            inbox.release(self.id, query.interaction)

    async def reply(self, text: str, **sampling: Any) -> str:
        """The answer's text, returned at ``rx.response.done`` (the memory update continues)."""
        events = self.ask(text, **sampling)
        try:
            async for event in events:
                if event.type == "rx.response.done":
                    return event.data.text
        finally:
            await events.aclose()
        raise ReactorError("the interaction ended without an answer")

    async def memory(self) -> torch.Tensor:
        """Wait for this stream's pending memory updates, then return a copy of its STM ``(layers, slots, dim)``."""
        version, stm = await self._rx._call(self._rx._conductor.memory.remote(self.id, self._last_query_seq))
        self.stm_version = version
        return stm.clone()

    async def fork(self, new_stream_id: str) -> Stream:
        """A new stream whose own memory starts as a copy of this one's STM (after pending updates)."""
        info = await self._rx._call(self._rx._conductor.fork.remote(
            self.id, validate_id(new_stream_id, "stream"), self._last_query_seq))
        return Stream(self._rx, info.stream_id, info.memory_id, info.stm_version)

    async def export_memory(self, path: str | os.PathLike[str]) -> None:
        """Write this stream's STM to a ``.safetensors`` file."""
        from reactor_rt.store import save_stm_file

        stm = await self.memory()
        save_stm_file(path, stm, {"memory": self.memory_id, "stm_version": str(self.stm_version)})

    async def import_memory(self, path: str | os.PathLike[str]) -> int:
        """Replace this stream's STM with one read from a ``.safetensors`` file; returns the new version."""
        from reactor_rt.store import load_stm_file

        stm, _ = load_stm_file(path)
        self.stm_version = await self._rx._call(
            self._rx._conductor.import_memory.remote(self.id, stm, self._last_query_seq))
        return self.stm_version

    async def think(self, seed: str, budget: int | Budget | None = None, *, stop: StopRule = None,
                    resume: bool = False, pause_on_query: bool = False) -> Thinking:
        """Start a thought loop: each step's response becomes the next internal query.

        ``budget``: a number of steps or a `Budget` (steps, tokens, seconds); ``stop``: a stop string or
        a predicate on each response. External queries on this stream are answered between steps; with
        ``pause_on_query`` the loop ends at the first one instead. ``resume``: restart the loop when the
        runtime restarts (its state is in the event log; a predicate is not, so ``resume`` with one is a
        `ConfigError`). Closing the stream ends the loop. Returns a handle to wait for or stop it.
        """
        after = await self._rx._bus.last_seq(self.id)
        loop_id = await self._rx._call(self._rx._conductor.think.remote(
            self.id, seed, Budget.of(budget), stop=stop, resume=resume, pause_on_query=pause_on_query))
        return Thinking(self, loop_id, after)

    async def stop_thinking(self) -> bool:
        """End this stream's thought loop after its current step; False when none runs."""
        return await self._rx._call(self._rx._conductor.stop_thinking.remote(self.id))

    async def feedback(self, interaction: str, *, reward: float | None = None,
                       correction: str | None = None) -> Event:
        """Publish ``rx.learning.feedback`` on an interaction of this stream (a reward and/or a corrected
        answer); the learner answers with ``rx.learning.applied`` or ``rx.error``, both carrying the
        returned event's ``interaction``."""
        if reward is None and correction is None:
            raise ValueError("feedback needs a reward or a correction")
        event = LearningFeedback(subject=self.id, source=CLIENT_SOURCE,
                                 data={"target": interaction, "reward": reward, "correction": correction})
        return await self._rx.publish(event.model_copy(update={"interaction": event.id}))

    async def close(self) -> None:
        """Close the stream: later queries on it get ``rx.error`` (`StreamClosedError`)."""
        await self._rx._call(self._rx._conductor.close_stream.remote(self.id))


class Thinking:
    """A running thought loop: iterate its events, wait for its end, or stop it."""

    def __init__(self, stream: Stream, loop_id: str, after: int) -> None:
        self.stream = stream
        self.id = loop_id
        self._after = after  # the loop's events all come after this seq of the stream

    async def events(self) -> AsyncIterator[Event]:
        """The loop's ``rx.thought.query`` / ``rx.thought.response`` events (replayed from the start),
        ending with the final response; `RuntimeUnavailableError` when the event stream ends first."""
        sub = await self.stream._rx._bus.subscribe(types={"rx.thought."}, subject=self.stream.id, after=self._after)
        try:
            async for event in sub:
                if event.data.loop != self.id:
                    continue
                yield event
                if event.type == "rx.thought.response" and event.data.final:
                    return
        finally:
            await sub.aclose()
        raise RuntimeUnavailableError(f"the event stream ended before thought loop {self.id} did (the runtime stopped?)")

    async def wait(self) -> Event:
        """Wait for the loop to end; returns its final ``rx.thought.response``."""
        final = None
        async for event in self.events():  # ends with the final response, or raises
            final = event
        assert final is not None
        return final

    async def stop(self) -> bool:
        """End the loop after its current step."""
        return await self.stream.stop_thinking()


class Subscription:
    """An event subscription: an async iterator, awaitable to register it before iterating."""

    def __init__(self, bus: Any, types: set[str] | None, subject: str | None, after: int | None,
                 limit: int | None) -> None:
        self._bus = bus
        self._args = {"types": types, "subject": subject, "after": after, "limit": limit}
        self._sub: Any = None

    async def _open(self) -> Subscription:
        if self._sub is None:
            self._sub = await self._bus.subscribe(**self._args)
        return self

    def __await__(self) -> Any:
        return self._open().__await__()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        await self._open()
        try:
            return await self._sub.__anext__()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """End the subscription (also done when the iteration ends or fails)."""
        if self._sub is not None:
            await self._sub.aclose()

    async def __aenter__(self) -> Subscription:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Starting:
    """What `Reactor.start` returns: ``async with`` it (stops on exit) or ``await`` it."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._reactor: Reactor | None = None

    def __await__(self) -> Any:
        return Reactor._launch(**self._options).__await__()

    async def __aenter__(self) -> Reactor:
        self._reactor = await Reactor._launch(**self._options)
        return self._reactor

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._reactor is not None:
            await self._reactor.close()


class Reactor:
    """A running reactor-rt: the Ray actors of one namespace, and the bus they talk on."""

    def __init__(self, *, namespace: str, bus: Any, actors: dict[str, Any], model_config: RxTConfig,
                 tokenizer: Any, started_ray: bool, store_lock: StoreLock | None = None) -> None:
        self.namespace = namespace
        self._store_lock = store_lock  # released by close()
        self._bus_handle = bus
        self._actors = actors
        self._conductor_handle = actors["conductor"]
        self.model_config = model_config
        self.tokenizer = tokenizer
        self._started_ray = started_ray
        self._closed = False
        self._inbox = Inbox(bus)  # one subscription for every stream's ask(), opened on the first question

    @classmethod
    def start(cls, model: str | os.PathLike[str] | ReactiveTransformer | None = None,
              store: str | None = None, address: str | None = None, *, namespace: str = DEFAULT_NAMESPACE,
              decoder_capacity: int = 16, decoder_threads: int = 1, max_queue: int = 64,
              max_new_tokens: int = 64, event_log: str | None = None,
              learning: dict[str, Any] | bool = True, weights_dir: str | None = None,
              local_link: bool = True, log_max_age: float | None = None,
              log_max_rows: int | None = None, align_finish_steps: int = 4,
              compile_decode: bool = False) -> _Starting:
        """Start the runtime: ``async with Reactor.start(model="tiny") as rx: ...``.

        Runs ``ray.init()`` locally (loopback only, no dashboard) unless Ray is already initialised in
        this process or ``address`` names a cluster to join; leaving the ``async with`` stops the actors,
        and Ray itself when this call started it. ``model``: a bundled name, a checkpoint directory or a
        `ReactiveTransformer` (default: the bundled ``tiny``). ``store``: ``sqlite:///path`` (beside it
        the durable event log ``path.events.db``) or ``memory://``; default `default_store()`.
        ``learning``: live learning on (True: defaults, or a dict of `LiveLearner` options such as
        ``params="decoder"|"memory"|"all"``, ``lr``, ``max_updates_per_minute``) or off (False); the
        learned weights persist in ``weights_dir`` (default: ``path.weights/`` beside a SQLite store).
        ``local_link``: this client and the actors talk over Unix sockets where they share a node
        (queries, events, the decoder's chunks: ~0.05 ms a message against ~1.5 ms for a Ray call);
        False keeps every message on Ray. ``log_max_age`` (seconds) and ``log_max_rows`` bound the
        durable event log, oldest events first (applied at start and every 1000 logged events; the
        default keeps everything, and recovery reads the whole log at every start).
        ``align_finish_steps``: an answer that ends while another will reach its token budget within
        this many decode steps waits for it (at most that long), so their memory updates batch together
        and their streams stay in step (see `DecoderCore`); 0 sends every answer's end at once.
        ``compile_decode``: the decoder runs a lone answer's steps compiled with torch.compile
        (`DecodeBatch(compile=True)`: batch-1 steps of ``tiny`` ~1.3x faster here than the default
        traced ones; steps of several rows stay traced). The decoder compiles at start: seconds (tens
        on a cold inductor cache), and it needs a C++ compiler.
        """
        _check_retention(log_max_age, log_max_rows)
        if isinstance(align_finish_steps, bool) or not isinstance(align_finish_steps, int) or align_finish_steps < 0:
            raise ConfigError(f"align_finish_steps must be an int >= 0, not {align_finish_steps!r}")
        if not isinstance(compile_decode, bool):
            raise ConfigError(f"compile_decode must be True or False, not {compile_decode!r}")
        _check_limits(decoder_capacity=decoder_capacity, decoder_threads=decoder_threads, max_queue=max_queue,
                      max_new_tokens=max_new_tokens)
        # the actors open these paths in their own working directories (on a joined cluster: other
        # machines' processes): relative paths are made absolute here, where the caller meant them
        return _Starting(model=model, store=_absolute_store(store or default_store()), address=address,
                         namespace=namespace, decoder_capacity=decoder_capacity, decoder_threads=decoder_threads,
                         max_queue=max_queue, max_new_tokens=max_new_tokens, event_log=_absolute_path(event_log),
                         learning=learning, weights_dir=_absolute_path(weights_dir), local_link=local_link,
                         log_max_age=log_max_age, log_max_rows=log_max_rows,
                         align_finish_steps=align_finish_steps, compile_decode=compile_decode)

    @classmethod
    async def _launch(cls, *, model: Any, store: str, address: str | None, namespace: str, decoder_capacity: int,
                      decoder_threads: int, max_queue: int, max_new_tokens: int, event_log: str | None,
                      learning: dict[str, Any] | bool, weights_dir: str | None, local_link: bool,
                      log_max_age: float | None, log_max_rows: int | None, align_finish_steps: int,
                      compile_decode: bool) -> Reactor:
        from reactor_rt.actors.launch import launch_actors
        from reactor_rt.store import open_store

        resolved = resolve_model(model)
        open_store(store).close()  # fail fast on a bad store URL, before starting anything
        store_lock = StoreLock.acquire(store)  # and on a store another runtime uses
        try:
            started_ray = _ensure_ray(address)
        except BaseException:
            store_lock.release()
            raise
        try:
            bus, actors = await launch_actors(
                resolved, store=store, namespace=namespace, event_log=event_log or event_log_path(store),
                decoder_capacity=decoder_capacity, decoder_threads=decoder_threads, max_queue=max_queue,
                max_new_tokens=max_new_tokens, align_finish_steps=align_finish_steps,
                compile_decode=compile_decode, learning=None if learning is False else ({} if learning is True else dict(learning)),
                weights_dir=weights_dir or weights_path(store), local_link=local_link,
                log_max_age=log_max_age, log_max_rows=log_max_rows,
            )
        except BaseException:
            store_lock.release()
            if started_ray:
                import ray

                ray.shutdown()
            raise
        return cls(namespace=namespace, bus=bus, actors=actors, model_config=resolved.config,
                   tokenizer=resolved.tokenizer, started_ray=started_ray, store_lock=store_lock)

    async def __aenter__(self) -> Reactor:
        return self

    def _check_open(self) -> None:
        """Refuse any use after `close`: the actors are gone, and a Ray call would start a new local Ray
        instance in this process (Ray initialises itself on demand) only to fail with a bare Exception."""
        if self._closed:
            raise RuntimeUnavailableError("this Reactor was closed (its `async with` ended): start a new one")

    @property
    def _bus(self) -> Any:
        self._check_open()
        return self._bus_handle

    @property
    def _conductor(self) -> Any:
        self._check_open()
        return self._conductor_handle

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def stream(self, stream_id: str, memory: str | None = None) -> Stream:
        """Get or create a stream; its STM is loaded from the store. ``memory`` shares another memory."""
        stream_id = validate_id(stream_id, "stream")
        if memory is not None:
            memory = validate_id(memory, "memory")
        info = await self._call(self._conductor.open_stream.remote(stream_id, memory))
        return Stream(self, info.stream_id, info.memory_id, info.stm_version)

    async def publish(self, event: Event) -> Event:
        """Publish any event on the bus (a ``Query`` starts an interaction); returns it with its ``seq``."""
        return await self._bus.publish(event)

    def subscribe(self, types: Iterable[str] | None = None, subject: str | None = None,
                  after: int | None = None, limit: int | None = None) -> Subscription:
        """Live events matching the filter; ``after=SEQ`` first replays the log past SEQ; ``limit=N`` stops after N.

        ``async for ev in rx.subscribe(...)`` registers on the first step; ``sub = await rx.subscribe(...)``
        registers at once (nothing published after the await is missed), then iterate ``sub``.
        Types are exact names or prefixes ending in ``.`` (``"rx.memory."``).
        """
        if isinstance(types, str):  # one type name, not an iterable of one-letter names
            types = (types,)
        return Subscription(self._bus, set(types) if types is not None else None, subject, after, limit)

    async def close(self) -> None:
        """Stop the actors of this runtime (and Ray, when `start` started it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        import ray

        from reactor_rt.actors.launch import stop_actors

        try:
            await self._inbox.close()
            await stop_actors(self._actors, self._bus_handle)
        finally:
            if self._started_ray:
                ray.shutdown()
            if self._store_lock is not None:
                self._store_lock.release()

    def _query(self, stream_id: str, text: str, **sampling: Any) -> Query:
        if not isinstance(text, str):
            raise TypeError(f"a query is a str, not {type(text).__name__}")
        limit = self.model_config.max_query_tokens * _MAX_CHARS_PER_TOKEN
        if len(text) > limit:
            raise QueryTooLongError(f"the query has {len(text)} characters; at most {limit} can fit the token limit")
        overrides = {k: v for k, v in sampling.items() if v is not None}
        _check_sampling(overrides)
        data: dict[str, Any] = {"text": text, **overrides}
        return Query(subject=stream_id, source=CLIENT_SOURCE, data=data)

    async def _call(self, ref: Any) -> Any:
        """Await an actor call, turning Ray's failures into `ReactorError`s."""
        import ray.exceptions

        try:
            return await ref
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ReactorError | TypeError | ValueError):
                raise cause from None
            raise RuntimeUnavailableError(f"the runtime failed: {exc}") from None
        except ray.exceptions.RayError as exc:
            raise RuntimeUnavailableError(f"an actor of the runtime is unavailable: {type(exc).__name__}") from None


def _check_sampling(overrides: dict[str, Any]) -> None:
    """Refuse bad per-query settings here, with a `ConfigError`, rather than in the decoder's batch."""
    from reactor_rt.model import Sampler

    budget = overrides.get("max_new_tokens")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
        raise ConfigError(f"max_new_tokens must be a positive int, not {budget!r}")
    Sampler(**{k: v for k, v in overrides.items() if k != "max_new_tokens"})  # ConfigError when invalid


def _check_limits(**limits: Any) -> None:
    """Refuse runtime limits that are not positive ints (a ``ConfigError`` before anything starts, rather
    than from the actors; `ConductorConfig` checks its own fields again)."""
    for name, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive int, not {value!r}")


def _check_retention(max_age: float | None, max_rows: int | None) -> None:
    """Refuse event-log bounds that are not positive numbers (a ``ConfigError`` before anything starts)."""
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int | float) or not max_age > 0):
        raise ConfigError(f"log_max_age must be a positive number of seconds or None, not {max_age!r}")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise ConfigError(f"log_max_rows must be a positive int or None, not {max_rows!r}")


def _local_ray_on_loopback() -> None:
    """Make the local Ray instance listen on 127.0.0.1 only (unless the environment says otherwise).

    Ray takes the machine's external address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is "0", and
    reads that variable once, when it is first imported: setting it here reaches the processes
    `ray.init` starts, but not this process, which has imported Ray already (we do, and so may the
    caller). Its copy of the flag is set too, or the instance would listen on every interface.
    """
    from ray._private import ray_constants

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # what Ray would have read at import time (its own rule: "1" or "true" enables external addresses)
    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"].lower() in ("1", "true")


def _ensure_ray(address: str | None) -> bool:
    """Start or join Ray; True when this call initialised Ray in this process. ``RAY_ADDRESS`` in the
    environment joins that cluster, as ``ray.init`` itself would; a failure is a `RuntimeUnavailableError`."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    join = address if address is not None else (os.environ.get("RAY_ADDRESS") or None)
    try:
        if join is None:
            _local_ray_on_loopback()
            # read by each worker process as it starts (this process has read its own already)
            os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)
            # STMs and encoded interactions are 10-200 KiB: passed inline with the call that needs them
            # rather than through the shared-memory object store (Ray's cut-off is 100 KiB), which saved
            # a few ms per memory update here. Ray runs its worker processes at nice 15 (background
            # batch work), which would put every actor of this runtime - the model's whole work -
            # behind anything else on the machine: they run at the caller's priority instead
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
                     _system_config={"max_direct_call_object_size": INLINE_OBJECT_BYTES,
                                     "worker_niceness": 0})
        else:
            ray.init(address=join, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError, OSError) as exc:  # no cluster there, ports, sockets
        what = f"join the Ray cluster at {join!r}" if join is not None else "start a local Ray instance"
        raise RuntimeUnavailableError(f"cannot {what}: {type(exc).__name__}: {exc}") from exc
    return True

"""The conductor: subscribes to queries on the bus, orders them per memory, pushes the results as events.

Per memory there is one *lane*: a bounded FIFO worked by one task, so a memory's interactions run one at
a time (answer, then memory update, then the next query), while different memories run concurrently and
their decode steps batch together in the decoder. Streams that share a memory share its lane.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray
import structlog
import torch

from reactor_rt.actors.engine import InteractionEngine
from reactor_rt.actors.handles import GenerateRequest, STMHandle
from reactor_rt.actors.heap import settle_actor_process
from reactor_rt.actors.thoughts import Budget, StopRule, ThoughtLoop
from reactor_rt.actors.weights_gate import WeightsGate
from reactor_rt.error_codes import code_for
from reactor_rt.errors import (
    ConfigError,
    EmptyQueryError,
    InvalidQueryError,
    QueryTooLongError,
    QueueFullError,
    ReactorError,
    RuntimeUnavailableError,
    StaleVersionError,
    StreamClosedError,
)
from reactor_rt.events import (
    ErrorEvent,
    Event,
    LearningApplied,
    LearningFeedback,
    MemoryUpdated,
    MemoryUpdating,
    Query,
    ResponseChunk,
    ResponseDone,
    StreamClosed,
    StreamOpened,
    ThoughtQuery,
    ThoughtResponse,
)
from reactor_rt.events.core_bus import BusHost, CoreBus
from reactor_rt.events.ray_bus import EventBusCore, bus_link_server
from reactor_rt.ids import validate_id
from reactor_rt.model import RxTConfig
from reactor_rt.template import build_prompt
from reactor_rt.tokenizer import IncrementalDecoder

__all__ = ["Conductor", "ConductorActor", "ConductorActorImpl", "ConductorConfig", "StreamInfo"]

if TYPE_CHECKING:
    from reactor_rt.learning import MemorySource

log = structlog.get_logger()

# an event's list holds at most this many entries (events.codec's container limit): a longer
# interaction is not logged for replay, and a crash during its update ends it with rx.error
_MAX_LOGGED_IDS = 4096
# the longest a facade call waits for its stream's last query to reach the conductor (normally microseconds);
# past it the call goes on, so a query this conductor can never see (its log pruned) cannot hang it
_CAUGHT_UP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ConductorConfig:
    """Runtime limits; sampling defaults come from the model's config."""

    max_queue: int = 64  # queued queries per memory before `queue_full`
    max_new_tokens: int = 64  # answer budget unless a query asks for less (or more, up to max_seq_len)
    source: str = "reactor-rt/conductor"
    remember_interactions: int = 65536  # ids kept to ignore a redelivered query
    max_feedback_queue: int = 256  # feedback events waiting for the learner before `learning_busy`
    recent_interactions: int = 4096  # interactions kept in memory for feedback on them
    local_link: bool = True  # reach a decoder on this node over a Unix socket (events.local_link)

    def __post_init__(self) -> None:
        # each bounds a queue or a table: 0 would refuse everything (asyncio.Queue(0) even drops its bound)
        for name in ("max_queue", "max_new_tokens", "remember_interactions", "max_feedback_queue",
                     "recent_interactions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, not {value!r}")


@dataclass(frozen=True)
class StreamInfo:
    """What a client learns when it opens a stream."""

    stream_id: str
    memory_id: str
    stm_version: int
    chat: int | None  # the `Chat N:` number when the memory is shared, else None


@dataclass
class _Stream:
    stream_id: str
    memory_id: str
    chat: int | None
    closed: bool = False


@dataclass
class _ThoughtStep:
    loop: ThoughtLoop
    done: asyncio.Future[str | None]  # the response to think about next, or None when the loop ends


@dataclass
class _Job:
    query: Query
    stream: _Stream
    prompt: list[int]
    request_budget: int
    text: str = ""  # the query as the model saw it (with a `Chat N:` prefix on a shared memory)
    thought: _ThoughtStep | None = None


@dataclass
class _Served:
    """What one interaction served: enough to rebuild a live-learning example from feedback on it."""

    memory_id: str
    stm_version: int
    query: str
    answer: str
    answer_ids: list[int]
    stream_id: str  # feedback on it must come on this stream's subject
    ended: bool = True  # the model ended the answer with [EOS] (not cut short at its token limit)
    wrote: int | None = None  # the STM version its memory update wrote (None until it is written)


@dataclass
class _Barrier:
    done: asyncio.Future[None]


@dataclass
class _Lane:
    """One memory's FIFO of interactions and its latest STM handle. The FIFO itself is unbounded: the
    bound (`ConductorConfig.max_queue`) is on the external queries waiting in it (``queries``), so
    `memory()` barriers and a thought loop's next step never take a query's place."""

    memory_id: str
    queue: asyncio.Queue[_Job | _Barrier]
    queries: int = 0  # external queries waiting in ``queue``
    streams: list[str] = field(default_factory=list)
    handle: STMHandle | None = None
    task: asyncio.Task[None] | None = None


class Conductor:
    """Turns ``rx.query`` events into answers and memory updates, emitting every step as an event."""

    def __init__(self, bus: Any, engine: InteractionEngine, tokenizer: Any, model_config: RxTConfig,
                 config: ConductorConfig | None = None) -> None:
        self.bus = bus
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_config = model_config
        self.config = config or ConductorConfig()
        self._streams: dict[str, _Stream] = {}
        self._lanes: dict[str, _Lane] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seen_feedback: OrderedDict[str, None] = OrderedDict()  # feedback event ids, to ignore a redelivery
        self._pump_task: asyncio.Task[None] | None = None
        self._subscription: Any = None
        self._pumped: dict[str, int] = {}  # subject -> seq of the last query taken from the bus
        self._started_from: dict[str, int] = {}  # subject -> seq of its last query logged before `start`
        self._pumped_changed = asyncio.Condition()
        self._loops: dict[str, ThoughtLoop] = {}  # stream id -> its running thought loop
        self._chat_order: dict[str, list[str]] = {}  # memory id -> its streams by first open, from the log
        self._gate = WeightsGate()
        self._weights_version = 0
        self._recent: OrderedDict[str, _Served] = OrderedDict()  # interaction id -> what was served
        self._feedback: asyncio.Queue[LearningFeedback] = asyncio.Queue(self.config.max_feedback_queue)
        self._learn_task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to queries; returns once the subscription is live."""
        self._chat_order = await self._opened_streams()
        self._subscription = await self.bus.subscribe(types={"rx.query", "rx.learning.feedback"})
        # queries published before the subscription never reach the pump, but a client's stream handle
        # outlives a restart and still names them (after_seq): they count as taken in. Read right after
        # subscribing (the in-process bus and log do not yield between), so no query falls in between
        self._started_from = await self._query_positions()
        self._pump_task = asyncio.get_running_loop().create_task(self._pump())
        self._learn_task = asyncio.get_running_loop().create_task(self._learn())

    async def stop(self) -> None:
        """Stop taking queries and cancel the lanes' workers."""
        tasks = [lane.task for lane in self._lanes.values() if lane.task] + [self._pump_task, self._learn_task]
        tasks += [loop.task for loop in self._loops.values()]
        for task in tasks:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
        if self._subscription is not None:  # after the pump has stopped reading it
            await self._subscription.aclose()
        await self.engine.close()

    async def _pump(self) -> None:
        async for event in self._subscription:
            if isinstance(event, LearningFeedback):
                try:
                    self._feedback.put_nowait(event)
                except asyncio.QueueFull:
                    await self._error(event.subject, event.interaction or event.id,
                                      ReactorError("the learner is busy: feedback rejected"), code="learning_busy")
                continue
            if isinstance(event, Query):
                try:
                    await self.on_query(event)
                except Exception:  # one bad query must never stop the pump
                    log.exception("conductor.query_failed", subject=event.subject, interaction=event.interaction)
                async with self._pumped_changed:
                    self._pumped[event.subject] = max(self._pumped.get(event.subject, 0), event.seq)
                    self._pumped_changed.notify_all()

    async def _query_positions(self) -> dict[str, int]:
        """Each subject's last logged query seq (empty when the bus keeps no log); from the log's index,
        not its frames: `recover` has just decoded them all, and a long log takes a while."""
        reader = getattr(self.bus, "last_seqs", None)
        if reader is not None:
            return await reader("rx.query")
        log_ = getattr(self.bus, "log", None)
        return {} if log_ is None else log_.last_seqs("rx.query")

    async def _last_query(self, subject: str) -> int:
        """The seq of the last query logged on ``subject`` (0 when the bus keeps no log)."""
        reader = getattr(self.bus, "last_seq_of", None)
        if reader is not None:
            return await reader(subject, "rx.query")
        log_ = getattr(self.bus, "log", None)
        return 0 if log_ is None else log_.last_seq_of(subject, "rx.query")

    async def _opened_streams(self) -> dict[str, list[str]]:
        """Each memory's streams in the order they were first opened, from the log's ``rx.stream.opened``:
        a stream's ``Chat N:`` number is its place in that order, and must not change with the order
        streams happen to be reopened after a restart (the STM already holds its old number)."""
        first: dict[str, int] = {}
        memory: dict[str, str] = {}
        for event in await self._logged({"rx.stream.opened"}):
            first.setdefault(event.subject, len(first))
            memory[event.subject] = event.data.memory  # the latest binding wins
        order: dict[str, list[str]] = {}
        for subject in sorted(first, key=first.__getitem__):
            order.setdefault(memory[subject], []).append(subject)
        return order

    async def _caught_up(self, subject: str, seq: int) -> None:
        """Wait until the queries published on ``subject`` before the call have been taken in: the last
        one the log holds, whoever published it (an agent may publish on the bus, then ask for the
        STM), and the one with ``seq`` (the caller's own, which a bus without a log cannot tell).

        A seq at or before the subject's last query when this conductor started belongs to a query an
        earlier conductor took in; a seq past the bus's last one was given by a bus that lost its log.
        Neither will ever reach the pump: nothing to wait for.
        """
        seq = max(seq, await self._last_query(subject))
        if seq <= 0 or seq <= self._started_from.get(subject, 0):
            return
        if seq > await self.bus.last_seq(subject):
            return
        try:
            async with asyncio.timeout(_CAUGHT_UP_TIMEOUT_S), self._pumped_changed:
                await self._pumped_changed.wait_for(lambda: self._pumped.get(subject, 0) >= seq)
        except TimeoutError:  # e.g. that query's events were pruned from the log before a restart
            log.warning("conductor.caught_up_timeout", subject=subject[:256], seq=seq,
                        pumped=self._pumped.get(subject, 0))

    async def recover(self) -> dict[str, list[str]]:
        """At start, finish what the durable log shows a crash cut short; returns the interaction ids
        ``{"replayed": [...], "announced": [...], "interrupted": [...]}``.

        * ``rx.memory.updating`` without ``rx.memory.updated``: when the memory is still at
          ``from_version``, the update is replayed from the logged encoder input (the update is
          deterministic: the STM is the one that was lost) and ``rx.memory.updated`` is published; when
          the store already holds the version this interaction produced, it is only announced.
        * an external ``rx.query`` with no end (no update started, no ``rx.error``): ``rx.error``
          (``unavailable``); nothing of it was applied, so sending it again is safe.
        Call it before `start`, while no interaction runs.
        """
        events = await self._logged({"rx.query", "rx.memory.updating", "rx.memory.updated", "rx.error"})
        open_queries: dict[str, Query] = {}
        updating: dict[str, MemoryUpdating] = {}
        for event in events:
            key = event.interaction or event.id
            if isinstance(event, Query):
                open_queries[key] = event
            elif isinstance(event, MemoryUpdating):
                open_queries.pop(key, None)
                updating[key] = event
            else:
                open_queries.pop(key, None)
                updating.pop(key, None)
        report: dict[str, list[str]] = {"replayed": [], "announced": [], "interrupted": []}
        for interaction, event in updating.items():
            data = event.data
            try:
                if data.input_ids is None:
                    raise ReactorError("the log holds no encoder input for this update (written by an older version)")
                current = await self.engine.handle(data.memory)
                if current.version < data.from_version:
                    raise ReactorError(f"the store holds version {current.version}, older than {data.from_version}")
                # the store moved past from_version: the crash came after this update's write (a memory's
                # interactions run one at a time, so that write is this one): announce it. Recomputing it
                # from the newer STM would apply the interaction twice in the engine's caches.
                new = current if current.version > data.from_version else \
                    await self.engine.update(current, list(data.input_ids), interaction)
            except Exception as exc:
                log.warning("conductor.recover_failed", interaction=interaction, error=str(exc)[:200])
                await self._error(event.subject, interaction, exc)
                report["interrupted"].append(interaction)
                continue
            report["replayed" if current.version == data.from_version else "announced"].append(interaction)
            await self._publish(MemoryUpdated(subject=event.subject, source=self.config.source, interaction=interaction,
                                              data={"memory": data.memory, "version": new.version}))
        for interaction, query in open_queries.items():
            if query.data.internal:
                continue
            await self._error(query.subject, interaction, RuntimeUnavailableError(
                "the runtime stopped before this query was answered; nothing was applied, send it again"))
            report["interrupted"].append(interaction)
        if any(report.values()):
            log.info("conductor.recovered", **{k: len(v) for k, v in report.items()})
        return report

    async def _logged(self, types: set[str]) -> list[Event]:
        """Every logged event of these types, in log order (empty when the bus keeps no log)."""
        reader = getattr(self.bus, "read_types", None)
        if reader is not None:
            return await reader(types)
        log_ = getattr(self.bus, "log", None)
        return [] if log_ is None else log_.read_types(list(types))

    # -- streams ----------------------------------------------------------------------------------

    async def open_stream(self, stream_id: str, memory: str | None = None) -> StreamInfo:
        """Get or create a stream (reopening a closed one); its STM version comes from the store."""
        stream_id = validate_id(stream_id, "stream")
        if memory is not None:
            memory = validate_id(memory, "memory")
        stream = self._streams.get(stream_id)
        if stream is not None and memory is not None and memory != stream.memory_id:
            raise ReactorError(f"stream {stream_id!r} already uses memory {stream.memory_id!r}, not {memory!r}")
        if stream is None:
            stream = self._add_stream(stream_id, memory or (await self._remembered(stream_id))[0] or stream_id)
        elif not stream.closed:
            return StreamInfo(stream_id, stream.memory_id, await self._version(stream.memory_id), stream.chat)
        stream.closed = False
        version = await self._version(stream.memory_id)
        await self._publish(StreamOpened(subject=stream_id, source=self.config.source,
                                         data={"memory": stream.memory_id, "stm_version": version}))
        return StreamInfo(stream_id, stream.memory_id, version, stream.chat)

    async def close_stream(self, stream_id: str) -> None:
        """Close a stream: queries already accepted finish; later ones get `stream_closed`. Its thought
        loop ends after the step in progress (final response, reason ``closed``)."""
        stream = self._streams.get(validate_id(stream_id, "stream"))
        if stream is None or stream.closed:
            return
        stream.closed = True
        loop = self._loops.get(stream.stream_id)
        if loop is not None and not loop.stopping:  # its steps are queries on the stream: they end too
            loop.stopping = "closed"
        await self._publish(StreamClosed(subject=stream_id, source=self.config.source, data={}))

    async def memory(self, stream_id: str, after_seq: int = 0) -> tuple[int, torch.Tensor]:
        """Wait for the stream's queued interactions and memory updates, then return ``(version, stm)``.

        ``after_seq``: the seq of the caller's last published query; it is waited for too, since the
        call may overtake that query on its way through the bus.
        """
        stream = await self._stream(stream_id)
        await self._caught_up(stream.stream_id, after_seq)
        await self._barrier(stream.memory_id)
        return await self.engine.tensor(stream.memory_id)

    async def fork(self, stream_id: str, new_stream_id: str, after_seq: int = 0) -> StreamInfo:
        """Copy the stream's STM (after its pending updates) into a new stream with its own memory.

        The new stream may already be open, but only on its own memory with no version yet; anything
        else is refused (`StaleVersionError`, as the store refuses to overwrite a memory) before a
        single write.
        """
        stream = await self._stream(stream_id)
        new_stream_id = validate_id(new_stream_id, "stream")
        await self._caught_up(stream.stream_id, after_seq)
        await self._barrier(stream.memory_id)
        target = self._streams.get(new_stream_id)
        bound = target.memory_id if target is not None else (await self._remembered(new_stream_id))[0]
        if bound is not None and bound != new_stream_id:
            raise StaleVersionError(f"cannot fork {stream.stream_id!r} into stream {new_stream_id!r}: it already "
                                    f"uses memory {bound!r}, and a fork gets a memory of its own")
        await self._barrier(new_stream_id)  # the target's own queued updates land first
        current = await self._version(new_stream_id)
        if current > 0:
            raise StaleVersionError(f"cannot fork {stream.stream_id!r} into {new_stream_id!r}: memory "
                                    f"{new_stream_id!r} already exists (version {current})")
        lane = self._lane(new_stream_id)
        try:  # the store's compare-and-set (expected version 0) refuses a write that raced in since
            lane.handle = await self.engine.fork(stream.memory_id, new_stream_id)
        except BaseException:
            lane.handle = None  # reload what the store holds
            raise
        return await self.open_stream(new_stream_id, memory=new_stream_id)

    async def import_memory(self, stream_id: str, stm: torch.Tensor, after_seq: int = 0) -> int:
        """Replace the stream's STM with ``stm`` as a new version (after pending updates)."""
        stream = await self._stream(stream_id)
        lane = self._lane(stream.memory_id)
        await self._caught_up(stream.stream_id, after_seq)
        await self._barrier(stream.memory_id)
        version = await self._version(stream.memory_id)
        lane.handle = await self.engine.put(stream.memory_id, stm, version)
        return lane.handle.version

    def _add_stream(self, stream_id: str, memory_id: str, closed: bool = False) -> _Stream:
        lane = self._lane(memory_id)
        if stream_id not in lane.streams:  # known from the log: it keeps its number
            lane.streams.append(stream_id)
        chat = lane.streams.index(stream_id) + 1 if memory_id != stream_id else None
        stream = self._streams[stream_id] = _Stream(stream_id, memory_id, chat, closed)
        return stream

    async def _stream(self, stream_id: str) -> _Stream:
        """The stream, opened on first use unless the log shows it was closed (before a restart): a
        closed stream stays closed until `open_stream` reopens it."""
        stream_id = validate_id(stream_id, "stream")
        if stream_id not in self._streams:
            memory, closed = await self._remembered(stream_id)
            if closed and stream_id not in self._streams:
                self._add_stream(stream_id, memory or stream_id, closed=True)
            else:
                await self.open_stream(stream_id)
        return self._streams[stream_id]

    async def _remembered(self, stream_id: str) -> tuple[str | None, bool]:
        """From the durable log: the memory this stream used before a restart, and whether it was closed."""
        try:
            logged = await self.bus.replay(stream_id, after=0, types={"rx.stream.opened", "rx.stream.closed"})
        except Exception:
            log.warning("conductor.replay_failed", stream=stream_id)
            return None, False
        opened = [e for e in logged if isinstance(e, StreamOpened)]
        return (opened[-1].data.memory if opened else None), bool(logged) and isinstance(logged[-1], StreamClosed)

    async def _version(self, memory_id: str) -> int:
        lane = self._lane(memory_id)
        if lane.handle is None:
            lane.handle = await self.engine.handle(memory_id)
        return lane.handle.version

    # -- thought loops ----------------------------------------------------------------------------

    async def think(self, stream_id: str, seed: str, budget: int | Budget | None = None, *,
                    stop: StopRule = None, resume: bool = False, pause_on_query: bool = False) -> str:
        """Start a thought loop on the stream; returns its id. One loop per stream at a time."""
        stream = await self._stream(stream_id)
        if stream.closed:
            raise StreamClosedError(f"stream {stream.stream_id!r} is closed")
        if not isinstance(seed, str) or not seed.strip():
            raise EmptyQueryError("a thought loop needs a non-empty seed")
        if resume and callable(stop):  # a resumed loop is rebuilt from its logged state: code is not in it
            raise ConfigError("a loop with a stop predicate cannot resume after a restart: use a stop string, "
                              "or resume=False")
        current = self._loops.get(stream.stream_id)
        if current is not None and not current.ended and current.task is not None and not current.task.done():
            raise ReactorError(f"stream {stream.stream_id!r} is already thinking (loop {current.loop_id})")
        loop = ThoughtLoop(stream.stream_id, seed, Budget.of(budget), stop, resume, pause_on_query)
        self._job(self._step_query(loop, seed, stream), stream)  # a seed too long fails here, not in the loop
        self._start_loop(loop)
        return loop.loop_id

    async def stop_thinking(self, stream_id: str) -> bool:
        """Ask the stream's loop to end after the step in progress; False when none runs."""
        loop = self._loops.get(validate_id(stream_id, "stream"))
        if loop is None or loop.ended or loop.task is None or loop.task.done():
            return False
        loop.stopping = loop.stopping or "stopped"
        return True

    async def resume_loops(self, events: list[Event]) -> list[str]:
        """Restart the loops that asked for it (``resume=True``) and had not ended, from their events
        in the durable log; returns the resumed loop ids. Call it after `recover`.

        A step cut short (its query without a response) runs again with the same query, unless its
        memory update was applied (`recover` finished it): then the step is done, its response is
        published now, and the loop goes on from its answer (or ends, if that was its last step).
        """
        last: dict[str, Event] = {}
        for event in events:
            if isinstance(event, ThoughtQuery | ThoughtResponse) and event.data.loop:
                last[event.data.loop] = event
        resumed = []
        for loop_id, event in last.items():
            data = event.data
            if data.state is None or not data.state.resume or getattr(data, "final", False):
                continue
            if event.subject in self._loops:
                continue
            loop = ThoughtLoop.from_state(event.subject, loop_id, data.text, data.state)
            applied = await self._applied_answer(event) if isinstance(event, ThoughtQuery) else None
            if applied is not None:
                answer, tokens = applied
                reason = loop.record(answer, tokens)
                await self._thought_response(loop, event.interaction or event.id, answer, reason)
                if reason is not None:
                    continue
                loop.seed = answer
            self._start_loop(loop)
            resumed.append(loop_id)
        return resumed

    async def _applied_answer(self, step: ThoughtQuery) -> tuple[str, int] | None:
        """The answer and token count of a thought step whose memory update was applied, from the log
        (None: the step has to run again)."""
        interaction = step.interaction or step.id
        try:
            logged = await self.bus.replay(step.subject, after=step.seq or 0,
                                           types={"rx.response.done", "rx.memory.updated"})
        except Exception:
            log.warning("conductor.replay_failed", stream=step.subject[:256])
            return None
        mine = {e.type: e for e in logged if e.interaction == interaction}
        done = mine.get("rx.response.done")
        if done is None or "rx.memory.updated" not in mine:
            return None
        return done.data.text, done.data.tokens

    def _start_loop(self, loop: ThoughtLoop) -> None:
        self._loops[loop.stream_id] = loop
        loop.task = asyncio.get_running_loop().create_task(self._run_loop(loop))

    def _step_query(self, loop: ThoughtLoop, text: str, stream: _Stream) -> Query:
        """The internal query of the loop's next step."""
        return Query(subject=stream.stream_id, source=self.config.source,
                     data={"text": text, "internal": True,
                           "max_new_tokens": loop.token_allowance(self.config.max_new_tokens)})

    async def _run_loop(self, loop: ThoughtLoop) -> None:
        text: str | None = loop.seed
        interaction = ""
        try:
            while text is not None:
                stream = await self._stream(loop.stream_id)
                done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
                query = self._step_query(loop, text, stream)
                interaction = query.interaction or query.id
                if stream.closed:  # closed between steps, or before the restart that resumed this loop
                    await self._loop_failed(loop, interaction, reason="closed")
                    return
                try:
                    job = self._job(query, stream)
                except ReactorError as exc:  # e.g. a response too long to be the next query
                    await self._error(stream.stream_id, interaction, exc)
                    await self._loop_failed(loop, interaction)
                    return
                job.thought = _ThoughtStep(loop, done)
                lane = self._lane(stream.memory_id)
                lane.queue.put_nowait(job)  # one step a loop at a time: outside the queries' bound
                self._ensure_worker(lane)
                text = await done
        except Exception as exc:  # anything unforeseen still ends the loop for its watchers
            log.exception("conductor.thought_loop_failed", loop=loop.loop_id)
            await self._error(loop.stream_id, interaction or loop.loop_id, exc)
            await self._loop_failed(loop, interaction or loop.loop_id)
        finally:
            if self._loops.get(loop.stream_id) is loop:
                del self._loops[loop.stream_id]

    async def _loop_failed(self, loop: ThoughtLoop, interaction: str, reason: str = "error") -> None:
        """The loop's final response without a step (after the step's ``rx.error``: reason ``error``), so
        watchers end."""
        loop.ended = reason
        try:
            await self._publish(ThoughtResponse(
                subject=loop.stream_id, source=self.config.source, interaction=interaction,
                data={"text": "", "step": loop.step, "loop": loop.loop_id, "final": True, "reason": reason,
                      "state": loop.state()},
            ))
        except Exception:
            log.exception("conductor.thought_end_failed", loop=loop.loop_id)

    # -- live learning ----------------------------------------------------------------------------

    @property
    def weights_version(self) -> int:
        return self._weights_version

    async def sync_weights(self) -> int:
        """Serve the learner's newest weights (at start: what was learned before a restart)."""
        async with self._gate.writing():
            self._weights_version = await self.engine.swap_weights()
        return self._weights_version

    async def _learn(self) -> None:
        while True:
            feedback = await self._feedback.get()
            try:
                await self.on_feedback(feedback)
            except Exception as exc:  # the learner loop must outlive any one feedback; its sender hears why
                log.exception("conductor.feedback_failed", target=feedback.data.target)
                await self._error(feedback.subject, feedback.interaction or feedback.id, exc)

    async def on_feedback(self, feedback: LearningFeedback) -> None:
        """Rebuild the example from the served interaction, update, swap the weights between
        interactions, announce ``rx.learning.applied`` (or ``rx.error`` when the update is rejected)."""
        from reactor_rt.learning import LearningExample

        if feedback.id in self._seen_feedback:  # redelivered (a client's retry): applied once
            log.info("conductor.duplicate_feedback", feedback=feedback.id)
            return
        self._seen_feedback[feedback.id] = None
        if len(self._seen_feedback) > self.config.remember_interactions:
            self._seen_feedback.popitem(last=False)
        subject, tag = feedback.subject, feedback.interaction or feedback.id
        target = feedback.data.target
        served = self._recent.get(target)
        if served is None or served.stream_id != subject:  # a stream learns only from its own answers
            await self._error(subject, tag, ReactorError(
                f"no recent interaction {target!r} of stream {subject[:256]!r} to learn from"),
                code="unknown_interaction")
            return
        stm = await self.engine.stm_at(served.memory_id, served.stm_version)
        if stm is None:
            await self._error(subject, tag, ReactorError(
                f"the STM version {served.stm_version} that {target!r} read is no longer kept"), code="stm_gone")
            return
        if await self.engine.learner_behind():  # it restarted with nothing saved: serving weights first
            await self.sync_weights()
        try:
            example = LearningExample(query=served.query, answer=served.answer, stm=stm, reward=feedback.data.reward,
                                      correction=feedback.data.correction, answer_ids=served.answer_ids, target=target,
                                      answer_ended=served.ended, source=await self._memory_source(served))
            result = await self.engine.learn(example)
        except (ValueError, ReactorError) as exc:
            await self._error(subject, tag, exc, code="learning_rejected")
            return
        if not result.accepted:
            await self._error(subject, tag, ReactorError(
                f"update rejected ({result.reason}): {result.detail or ''}".strip()), code="learning_rejected")
            return
        await self.sync_weights()
        await self._publish(LearningApplied(
            subject=subject, source=self.config.source, interaction=tag,
            data={"weights_version": result.weights_version, "loss_before": result.loss_before,
                  "loss_after": result.loss_after, "target": target},
        ))

    async def _memory_source(self, served: _Served) -> MemorySource | None:
        """The interaction that wrote the STM ``served`` read, and the STM before it (what training the
        memory attention needs), while both are still kept; else None."""
        from reactor_rt.learning import MemorySource

        writer = next((w for w in reversed(self._recent.values())
                       if w.memory_id == served.memory_id and w.wrote == served.stm_version), None)
        if writer is None:  # version 0, an imported or forked STM, or an interaction no longer kept
            return None
        before = await self.engine.stm_at(served.memory_id, writer.stm_version)
        return None if before is None else MemorySource(before, writer.query, writer.answer)

    # -- queries ----------------------------------------------------------------------------------

    async def on_query(self, query: Query) -> None:
        """Validate and queue one query; every rejection is an ``rx.error`` on the query's subject."""
        interaction = query.interaction or query.id
        if interaction in self._seen:
            log.info("conductor.duplicate_query", interaction=interaction)
            return
        self._seen[interaction] = None
        if len(self._seen) > self.config.remember_interactions:
            self._seen.popitem(last=False)
        try:
            stream = await self._stream(query.subject)
            if stream.closed:
                raise StreamClosedError(f"stream {stream.stream_id!r} is closed")
            job = self._job(query, stream)
            lane = self._lane(stream.memory_id)
            if lane.queries >= self.config.max_queue:
                raise QueueFullError(f"memory {stream.memory_id!r} already has {self.config.max_queue} queued queries")
            lane.queue.put_nowait(job)
            lane.queries += 1
            self._ensure_worker(lane)
            loop = self._loops.get(stream.stream_id)
            if loop is not None and loop.pause_on_query and not loop.stopping:  # only for a query it will answer
                loop.stopping = "query"
        except Exception as exc:  # any failure, typed or not, must reach the asker (or it waits for good)
            if not isinstance(exc, ReactorError):
                log.exception("conductor.query_failed", subject=query.subject[:256], interaction=interaction)
            self._seen.pop(interaction, None)  # rejected, not applied: sending it again is allowed
            await self._error(query.subject, interaction, exc)

    def _job(self, query: Query, stream: _Stream) -> _Job:
        text = query.data.text
        if not text.strip():
            raise EmptyQueryError("the query is empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # the message leaves the text out: it could not be sent either
            raise InvalidQueryError(f"the query is not valid UTF-8 text: {exc.reason} at {exc.start}") from None
        if stream.chat is not None:
            # several streams write one memory: the architecture tells them apart with a prefix
            text = f"Chat {stream.chat}: {text}"
        n_tokens = len(self.tokenizer.encode(text))
        limit = self.model_config.max_query_tokens
        if n_tokens > limit:
            raise QueryTooLongError(f"the query has {n_tokens} tokens; the limit is {limit}")
        prompt = build_prompt(self.tokenizer, text)
        room = self.model_config.max_seq_len - len(prompt) - 1  # keep one position for [EOS]
        budget = min(query.data.max_new_tokens or self.config.max_new_tokens, room)
        if budget < 1:
            raise QueryTooLongError(f"the query leaves no room to answer within {self.model_config.max_seq_len} tokens")
        return _Job(query, stream, prompt, budget, text)

    def _remember(self, interaction: str, served: _Served) -> None:
        self._recent[interaction] = served
        if len(self._recent) > self.config.recent_interactions:
            self._recent.popitem(last=False)

    def _lane(self, memory_id: str) -> _Lane:
        lane = self._lanes.get(memory_id)
        if lane is None:
            lane = self._lanes[memory_id] = _Lane(memory_id, asyncio.Queue(),
                                                  streams=list(self._chat_order.get(memory_id, ())))
        return lane

    def _ensure_worker(self, lane: _Lane) -> None:
        if lane.task is None or lane.task.done():
            lane.task = asyncio.get_running_loop().create_task(self._work(lane))

    async def _barrier(self, memory_id: str) -> None:
        lane = self._lane(memory_id)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane.queue.put_nowait(_Barrier(done))
        self._ensure_worker(lane)
        await done

    async def _work(self, lane: _Lane) -> None:
        while not lane.queue.empty():
            item = lane.queue.get_nowait()
            if isinstance(item, _Barrier):
                if not item.done.done():
                    item.done.set_result(None)
                continue
            if item.thought is None:
                lane.queries -= 1
            interaction = item.query.interaction or item.query.id
            try:
                async with self._gate.reading():  # one weights version for the whole interaction
                    await self._interact(lane, item, interaction)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("conductor.interaction_failed", interaction=interaction)
                lane.handle = None  # the store is the truth after a failure: reload the version it holds
                self._seen.pop(interaction, None)  # a failed interaction may be sent again (same id)
                await self._error(item.stream.stream_id, interaction, exc)
                if item.thought is not None and not item.thought.done.done():
                    await self._loop_failed(item.thought.loop, interaction)  # the error event says why
                    item.thought.done.set_result(None)

    async def _interact(self, lane: _Lane, job: _Job, interaction: str) -> None:
        subject = job.stream.stream_id
        if lane.handle is None:
            lane.handle = await self.engine.handle(lane.memory_id)
        handle = lane.handle
        cfg, q = self.model_config, job.query.data
        request = GenerateRequest(
            prompt=job.prompt,
            handle=handle,
            max_new_tokens=job.request_budget,
            temperature=cfg.temperature if q.temperature is None else q.temperature,
            top_k=cfg.top_k if q.top_k is None else q.top_k,
            top_p=cfg.top_p if q.top_p is None else q.top_p,
        )
        thought = job.thought
        if thought is not None:
            await self._publish(ThoughtQuery(
                subject=subject, source=self.config.source, interaction=interaction,
                data={"text": q.text, "step": thought.loop.step + 1, "loop": thought.loop.loop_id,
                      "state": thought.loop.state()},
            ))
        answer_ids: list[int] = []
        parts: list[str] = []
        detok = IncrementalDecoder(self.tokenizer)
        started = time.perf_counter()
        first_token_ms = None
        async for chunk in self.engine.generate(request):
            if first_token_ms is None:
                first_token_ms = (time.perf_counter() - started) * 1000
            answer_ids.extend(chunk)
            text = "".join(detok.push(t) for t in chunk)
            if text:
                parts.append(text)
                await self._publish(ResponseChunk(subject=subject, source=self.config.source,
                                                  interaction=interaction, data={"text": text, "tokens": len(chunk)}))
        tail = detok.flush()
        if tail:
            parts.append(tail)
            await self._publish(ResponseChunk(subject=subject, source=self.config.source,
                                              interaction=interaction, data={"text": tail}))
        eos = self.tokenizer.eos_id
        finished = "eos" if answer_ids and answer_ids[-1] == eos else "length"
        done = ResponseDone(
            subject=subject, source=self.config.source, interaction=interaction,
            data={"text": "".join(parts), "tokens": len(answer_ids), "stm_version": handle.version,
                  "query_tokens": len(job.prompt), "finish_reason": finished,
                  "first_token_ms": first_token_ms, "generate_ms": (time.perf_counter() - started) * 1000,
                  "weights_version": self._weights_version},
        )
        served = _Served(lane.memory_id, handle.version, job.text, "".join(parts),
                         [t for t in answer_ids if t != eos], stream_id=subject, ended=finished == "eos")
        self._remember(interaction, served)
        # the encoder sees a closed interaction, as in training: [BOS][Q] query [A] answer [EOS]
        full = job.prompt + answer_ids + ([eos] if finished != "eos" and eos >= 0 else [])
        # logged before the update runs (write-ahead): a crash before the new version is stored is
        # recovered by replaying it (see `recover`). One publish with the answer: one log transaction
        updating = MemoryUpdating(subject=subject, source=self.config.source, interaction=interaction,
                                  data={"memory": lane.memory_id, "from_version": handle.version,
                                        "input_ids": full if len(full) <= _MAX_LOGGED_IDS else None})
        await self.bus.publish_many((done, updating))
        await asyncio.sleep(0)  # let the bus hand the answer to its subscribers before the update's calls
        update_started = time.perf_counter()
        lane.handle = await self.engine.update(handle, full, interaction)
        served.wrote = lane.handle.version
        await self._publish(MemoryUpdated(
            subject=subject, source=self.config.source, interaction=interaction,
            data={"memory": lane.memory_id, "version": lane.handle.version,
                  "update_ms": (time.perf_counter() - update_started) * 1000},
        ))
        if thought is not None:
            answer = "".join(parts)
            try:
                reason = thought.loop.record(answer, len(answer_ids))
            except Exception as exc:  # the caller's stop predicate failed: this step is done and applied,
                # so its interaction must not end with rx.error after rx.memory.updated; the loop's does
                log.warning("conductor.stop_rule_failed", loop=thought.loop.loop_id, error=repr(exc)[:200])
                await self._error(subject, thought.loop.loop_id, ReactorError(f"the stop rule failed: {exc!r}"))
                reason = thought.loop.ended = "error"
            await self._thought_response(thought.loop, interaction, answer, reason)
            thought.done.set_result(None if reason is not None else answer)

    # -- events -----------------------------------------------------------------------------------

    async def _thought_response(self, loop: ThoughtLoop, interaction: str, answer: str, reason: str | None) -> None:
        """The response of the loop's step just recorded (final when ``reason`` ends the loop)."""
        await self._publish(ThoughtResponse(
            subject=loop.stream_id, source=self.config.source, interaction=interaction,
            data={"text": answer, "step": loop.step, "loop": loop.loop_id, "final": reason is not None,
                  "reason": reason, "state": loop.state()},
        ))

    async def _publish(self, event: Event) -> Event:
        return await self.bus.publish(event)

    async def _error(self, subject: str, interaction: str, exc: BaseException, code: str | None = None) -> None:
        message = str(exc) if isinstance(exc, ReactorError) else f"{type(exc).__name__}: {exc}"
        try:
            await self._publish(ErrorEvent(subject=subject, source=self.config.source, interaction=interaction,
                                           data={"code": code or code_for(exc), "message": message[:4096]}))
        except Exception:
            log.exception("conductor.error_event_failed", subject=subject[:256], interaction=interaction)


class ConductorActorImpl(BusHost):
    """Ray actor named ``conductor``: a :class:`Conductor` over the model actors, hosting the event bus
    in its own process (it publishes most events: no hop for them), with the durable log at
    ``log_path``. Clients reach the bus with ``RayBus(conductor_handle)``."""

    def __init__(self, actors: Any, tokenizer: Any, model_config: RxTConfig, config: ConductorConfig | None = None,
                 log_path: str | None = None, **bus_options: Any) -> None:
        from reactor_rt.actors.engine import RayEngine

        self.bus_core = EventBusCore(log_path, **bus_options)
        self.bus_core.prune_log()  # a log kept under new bounds shrinks now, not 1000 events later
        self.bus = CoreBus(self.bus_core)
        # clients on this node reach the bus over it; like the Ray methods, it starts the conductor first
        self.link = bus_link_server(self.bus_core, ready=self._ensure_started)
        engine = RayEngine(actors, local_link=config.local_link if config is not None else True)
        self.conductor = Conductor(self.bus, engine, tokenizer, model_config, config)
        # Ray re-runs this constructor after a crash, and nobody calls start() then: the first call
        # that needs the conductor starts it (streams and lanes are rebuilt on demand from ids)
        self._started = False
        self._starting: asyncio.Lock | None = None
        self.recovered: dict[str, list[str]] = {}
        settle_actor_process()

    async def _ensure_started(self) -> None:
        if self._started:
            return
        self._starting = self._starting or asyncio.Lock()
        async with self._starting:
            if self._started:
                return
            await self.conductor.sync_weights()  # what was learned before a restart
            self.recovered = await self.conductor.recover()  # before any new query can run
            await self.conductor.start()
            await self.conductor.resume_loops(await self.bus.read_types({"rx.thought.query", "rx.thought.response"}))
            self._started = True

    async def start(self) -> dict[str, list[str]]:
        """Recover from the log, take queries from the bus, restart the thought loops that asked to
        survive a restart; returns what `Conductor.recover` did. Idempotent."""
        await self._ensure_started()
        return self.recovered

    async def stop(self) -> None:
        await self.conductor.stop()

    async def publish_many(self, records: list[tuple[str, str, bytes]]) -> list[int]:
        await self._ensure_started()  # a query must never reach a bus nobody listens to
        return await super().publish_many(records)

    async def subscribe(self, *args: Any, **kwargs: Any) -> str:
        await self._ensure_started()
        return await super().subscribe(*args, **kwargs)

    async def open_stream(self, stream_id: str, memory: str | None = None) -> StreamInfo:
        await self._ensure_started()
        return await self.conductor.open_stream(stream_id, memory)

    async def close_stream(self, stream_id: str) -> None:
        await self._ensure_started()
        await self.conductor.close_stream(stream_id)

    async def memory(self, stream_id: str, after_seq: int = 0) -> tuple[int, torch.Tensor]:
        await self._ensure_started()
        return await self.conductor.memory(stream_id, after_seq)

    async def fork(self, stream_id: str, new_stream_id: str, after_seq: int = 0) -> StreamInfo:
        await self._ensure_started()
        return await self.conductor.fork(stream_id, new_stream_id, after_seq)

    async def import_memory(self, stream_id: str, stm: torch.Tensor, after_seq: int = 0) -> int:
        await self._ensure_started()
        return await self.conductor.import_memory(stream_id, stm, after_seq)

    async def think(self, stream_id: str, seed: str, budget: Budget, *, stop: StopRule = None,
                    resume: bool = False, pause_on_query: bool = False) -> str:
        await self._ensure_started()
        return await self.conductor.think(stream_id, seed, budget, stop=stop, resume=resume,
                                          pause_on_query=pause_on_query)

    async def stop_thinking(self, stream_id: str) -> bool:
        await self._ensure_started()
        return await self.conductor.stop_thinking(stream_id)

    async def sync_weights(self) -> int:
        return await self.conductor.sync_weights()

ConductorActor = ray.remote(ConductorActorImpl)

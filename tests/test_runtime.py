"""The Reactor facade over Ray actors: streams, ordering, isolation, persistence, bad input."""

from __future__ import annotations

import sys

import anyio
import pytest
import ray
import torch

from reactor_rt import InvalidIdError, QueryTooLongError, Reactor, StreamClosedError
from reactor_rt.model import ReactiveTransformer, RxTConfig

pytestmark = [pytest.mark.anyio, pytest.mark.ray]


def _model() -> ReactiveTransformer:
    torch.manual_seed(0)
    model = ReactiveTransformer(RxTConfig.preset("tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        # answers in bytes only (an untrained argmax is often a special token: an empty answer)
        tok = model.tokenizer
        model.embedding.weight[list(tok.special_ids) + list(range(tok.vocab_size, model.config.vocab_size))] = 0.0
    return model


@pytest.fixture(scope="module")
def model() -> ReactiveTransformer:
    return _model()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


# every test runs twice: the client and the conductor reach the actors over local links (the default on
# one node), then over Ray alone (as across nodes)
@pytest.fixture(scope="module", params=[pytest.param(True, id="local-link"), pytest.param(False, id="ray-only")])
async def rx(request, ray_local, model, tmp_path_factory):
    """One runtime for the module (starting one costs seconds); tests use distinct stream ids."""
    store = f"sqlite:///{tmp_path_factory.mktemp('rx')}/stm.db"
    async with Reactor.start(model=model, store=store, max_new_tokens=8, local_link=request.param) as reactor:
        reactor.local_link = request.param  # type: ignore[attr-defined]
        yield reactor


async def test_actors_are_named_in_the_namespace(rx):
    for name in ("decoder", "encoder", "memory", "stm", "conductor"):
        assert ray.get_actor(name, namespace="reactor_rt") is not None


async def test_the_hot_path_takes_the_local_link_on_one_node_and_ray_otherwise(rx):
    stream = await rx.stream("link-check")
    before = await ray.get_actor("decoder", namespace="reactor_rt").stats.remote()
    for text in ("one", "two", "three"):
        await stream.reply(text)
    after = await ray.get_actor("decoder", namespace="reactor_rt").stats.remote()
    over_link = after["link_submits"] - before["link_submits"]
    over_ray = after["ray_submits"] - before["ray_submits"]
    assert over_link + over_ray == 3
    if rx.local_link:
        # each turn's STM version was warmed in the decoder by the update before: no STM to send
        assert over_link >= 2 and rx._bus._link._client is not None
    else:
        assert over_link == 0 and rx._bus._link._client is None


def _refaults(_actor: object) -> int:
    """Page faults of allocating an 8 MiB buffer again after freeing one (in the actor's process)."""
    import resource

    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buf = bytearray(8 << 20)
        del buf
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
async def test_the_actors_moving_tensors_keep_freed_memory_in_their_heap(rx):
    """Large link frames land in fresh buffers: the actors keep freed memory (see actors.heap)."""
    for name in ("decoder", "encoder", "memory", "stm", "conductor"):
        actor = ray.get_actor(name, namespace="reactor_rt")
        assert await actor.__ray_call__.remote(_refaults) < 100, name  # 2048 pages when handed back


async def test_the_actors_start_up_objects_are_left_out_of_garbage_collections(rx):
    """A full collection over an actor's start-up heap stalls its event loop ~0.1 s (see actors.heap)."""
    import gc

    for name in ("decoder", "encoder", "memory", "stm", "conductor"):
        actor = ray.get_actor(name, namespace="reactor_rt")
        assert await actor.__ray_call__.remote(lambda _self: gc.get_freeze_count()) > 50_000, name


async def test_interleaved_streams_keep_order_and_do_not_leak(rx):
    """8 streams x 5 turns at once: per-stream order holds, and a stream's answers and STM equal those
    of a stream with the same turns run alone."""
    turns = [f"turn {t}: tell me something" for t in range(5)]

    async def run(stream_id: str) -> list[str]:
        stream = await rx.stream(stream_id)
        return [await stream.reply(text) for text in turns]

    alone = await run("solo")
    solo_mem = await (await rx.stream("solo")).memory()
    answers: dict[str, list[str]] = {}
    async with anyio.create_task_group() as tg:
        for i in range(8):
            async def one(sid: str = f"s{i}") -> None:
                answers[sid] = await run(sid)
            tg.start_soon(one)
    for sid in answers:
        assert answers[sid] == alone, sid
        stream = await rx.stream(sid)
        mem = await stream.memory()
        assert stream.stm_version == 5
        torch.testing.assert_close(mem, solo_mem, atol=1e-5, rtol=1e-4)
    # per-stream order in the log: every stream's queries were answered in the order sent
    done = [ev async for ev in rx.subscribe(types={"rx.query", "rx.response.done"}, subject="s3", after=0, limit=10)]
    queries = [e.interaction for e in done if e.type == "rx.query"]
    answered = [e.interaction for e in done if e.type == "rx.response.done"]
    assert queries == answered and len(queries) == 5
    assert [e.seq for e in done] == sorted(e.seq for e in done)


async def test_a_query_sent_during_the_update_is_queued_and_answered(rx):
    stream = await rx.stream("busy")
    await stream.reply("first")  # returns at rx.response.done: the memory update is still running
    events = [ev async for ev in stream.ask("second")]
    done = next(e for e in events if e.type == "rx.response.done")
    assert done.data.stm_version == 1
    assert events[-1].type == "rx.memory.updated" and events[-1].data.version == 2


async def test_shared_memory_streams_see_each_others_writes(rx):
    a = await rx.stream("team-a", memory="team")
    b = await rx.stream("team-b", memory="team")
    await a.reply("My name is Ann.")
    events = [ev async for ev in b.ask("What is my name?")]
    done = next(e for e in events if e.type == "rx.response.done")
    assert done.data.stm_version == 1  # b read the STM that a's interaction wrote
    assert (await a.memory()).equal(await b.memory())


async def test_bad_input_is_a_typed_error_and_serving_goes_on(rx):
    with pytest.raises(InvalidIdError):
        await rx.stream("bad\nid")
    with pytest.raises(InvalidIdError):
        await rx.stream("x" * 300)
    stream = await rx.stream("bad-input")
    seen = []
    with pytest.raises(QueryTooLongError):
        async for ev in stream.ask("   "):
            seen.append(ev.type)
    assert seen[-1] == "rx.error"
    with pytest.raises(QueryTooLongError):
        await stream.reply("word " * 2000)
    await stream.close()
    with pytest.raises(StreamClosedError):
        await stream.reply("hello?")
    other = await rx.stream("still-serving")
    assert isinstance(await other.reply("hello"), str)


async def test_fork_and_export_import(rx, tmp_path):
    src = await rx.stream("fork-src")
    await src.reply("remember the number 42")
    copy = await src.fork("fork-dst")
    assert torch.equal(await copy.memory(), await src.memory())
    path = tmp_path / "stm.safetensors"
    await src.export_memory(path)
    target = await rx.stream("imported")
    version = await target.import_memory(path)
    assert version == 1 and torch.equal(await target.memory(), await src.memory())


async def test_stm_and_learned_weights_persist_across_a_restart(ray_local, model, tmp_path):
    store = f"sqlite:///{tmp_path}/persist.db"
    async with Reactor.start(model=model, store=store, max_new_tokens=4, namespace="persist-test") as rx:
        stream = await rx.stream("p", memory="p-mem")
        await stream.reply("one")
        events = [ev async for ev in stream.ask("two")]
        mem = await stream.memory()
        done = next(e for e in events if e.type == "rx.response.done")
        sent = await stream.feedback(done.interaction, reward=1.0)
        applied = [ev async for ev in rx.subscribe(types={"rx.learning.applied"}, subject="p", after=sent.seq, limit=1)]
        assert applied[0].data.weights_version == 1
    async with Reactor.start(model=model, store=store, max_new_tokens=4, namespace="persist-test") as rx:
        stream = await rx.stream("p")  # the memory it used is remembered from the event log
        assert stream.memory_id == "p-mem" and stream.stm_version == 2
        assert torch.equal(await stream.memory(), mem)
        events = [ev async for ev in stream.ask("three")]  # served with what was learned before
        assert next(e for e in events if e.type == "rx.response.done").data.weights_version == 1


async def test_a_bounded_event_log_is_trimmed_when_the_runtime_starts(ray_local, model, tmp_path):
    from reactor_rt.events.log import EventLog
    from reactor_rt.runtime import event_log_path

    store = f"sqlite:///{tmp_path}/trim.db"
    async with Reactor.start(model=model, store=store, max_new_tokens=4, namespace="trim-test", learning=False) as rx:
        stream = await rx.stream("t")
        for text in ("one", "two", "three"):
            await stream.reply(text)
        await stream.memory()  # the last update logged too (else the restart finishes it: one more event)
    with EventLog(event_log_path(store)) as event_log:
        logged = event_log.count()
    assert logged > 3  # queries, answers and memory updates of three turns
    async with Reactor.start(model=model, store=store, max_new_tokens=4, namespace="trim-test", learning=False,
                             log_max_rows=3) as rx:
        pass
    with EventLog(event_log_path(store)) as event_log:
        assert [e.type for e in event_log.read_types(None)] == ["rx.response.done", "rx.memory.updating",
                                                               "rx.memory.updated"]  # the newest three


@pytest.mark.parametrize("bounds", [{"log_max_rows": 0}, {"log_max_rows": 2.5}, {"log_max_age": -1},
                                    {"log_max_age": float("nan")}, {"log_max_rows": True}])
def test_bad_event_log_bounds_are_refused_before_anything_starts(bounds):
    from reactor_rt.errors import ConfigError

    with pytest.raises(ConfigError):
        Reactor.start(model="tiny", **bounds)


async def test_a_thought_loop_runs_its_budget(rx):
    stream = await rx.stream("thinker")
    loop = await stream.think("Let me think about memory.", 3)
    with anyio.fail_after(120):
        steps = [ev async for ev in loop.events()]
    responses = [e for e in steps if e.type == "rx.thought.response"]
    assert [e.data.step for e in responses] == [1, 2, 3] and responses[-1].data.reason == "steps"
    assert len([e for e in steps if e.type == "rx.thought.query"]) == 3
    assert (await stream.memory()).shape[0] == rx.model_config.layers and stream.stm_version == 3


async def test_feedback_updates_the_weights_between_interactions(rx):
    """Last in this module: the weights it changes stay changed for the runtime's lifetime."""
    stream = await rx.stream("learn")
    events = [ev async for ev in stream.ask("hello")]
    done = next(e for e in events if e.type == "rx.response.done")
    assert done.data.weights_version == 0
    sent = await stream.feedback(done.interaction, correction="Hi there.")
    with anyio.fail_after(120):
        answer = [ev async for ev in rx.subscribe(types={"rx.learning.applied", "rx.error"}, subject="learn",
                                                 after=sent.seq, limit=1)]
    assert answer[0].type == "rx.learning.applied" and answer[0].interaction == sent.interaction
    assert answer[0].data.weights_version == 1 and answer[0].data.loss_after < answer[0].data.loss_before
    events = [ev async for ev in stream.ask("hello again")]
    assert next(e for e in events if e.type == "rx.response.done").data.weights_version == 1
    for name in ("decoder", "encoder", "memory"):  # what a resync after an actor restart compares against
        assert await ray.get_actor(name, namespace="reactor_rt").loaded_weights_version.remote() == 1


async def _compiled_conversation(model: ReactiveTransformer, compile_decode: bool) -> tuple[list[str], float]:
    namespace = f"compiled-{compile_decode}"
    async with Reactor.start(model=model, store="memory://", max_new_tokens=24, learning=False,
                             namespace=namespace, compile_decode=compile_decode) as rx:
        stream = await rx.stream("c")
        answers = [await stream.reply(text) for text in ("hello there", "what did I say?", "and then?")]
        stats = await ray.get_actor("decoder", namespace=namespace).stats.remote()
        return answers, stats["compiled"]


@pytest.mark.slow  # the decoder compiles at start: seconds to tens
@pytest.mark.cxx
async def test_the_compiled_decoder_answers_what_the_eager_one_does(ray_local, model):
    eager, eager_compiled = await _compiled_conversation(model, False)
    compiled, compiled_flag = await _compiled_conversation(model, True)
    assert (eager_compiled, compiled_flag) == (0.0, 1.0)
    assert compiled == eager and all(eager)

"""The Ray engine's fault handling without Ray processes: transient actor failures are retried within the
deadline, application errors are not, and what finally fails is a ReactorError, never a Ray exception."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import ray.exceptions as rex

from reactor_rt.actors.engine import ActorSet, RayEngine, RetryPolicy
from reactor_rt.actors.handles import GenerateRequest, STMHandle
from reactor_rt.errors import RuntimeUnavailableError, StaleVersionError

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(deadline_s=1.0, first_delay_s=0.001, max_delay_s=0.01)


class Method:
    """Stands in for an actor method: ``.remote(...)`` returns an awaitable; fails as scripted first."""

    def __init__(self, result, failures=()):
        self.result = result
        self.failures = list(failures)
        self.calls = 0
        self.args: list[tuple] = []
        self.kwargs: list[dict] = []

    def remote(self, *args, **kwargs):
        self.calls += 1
        self.args.append(args)
        self.kwargs.append(kwargs)
        failure = self.failures.pop(0) if self.failures else None

        async def run():
            if failure is not None:
                raise failure
            return self.result(*args) if callable(self.result) else self.result

        return Ref(run)


class Ref:
    """Like an ObjectRef: it may be passed along and never awaited (the coroutine starts on await)."""

    def __init__(self, run):
        self.run = run

    def __await__(self):
        return self.run().__await__()


def unavailable():
    return rex.ActorUnavailableError("the actor is restarting", None)


def engine(**stm_methods) -> RayEngine:
    stm = SimpleNamespace(**stm_methods)
    return RayEngine(ActorSet(decoder=None, encoder=None, memory=None, stm=stm), retry=FAST)


async def test_a_restarting_actor_is_retried_until_it_answers():
    handle = STMHandle("m", 3, object())
    method = Method(handle, [unavailable(), rex.ActorDiedError(), unavailable()])
    eng = engine(handle=method)
    assert await eng.handle("m") is handle
    assert method.calls == 4 and eng.retries == 3


async def test_an_actor_that_stays_down_becomes_runtime_unavailable():
    method = Method(None, [unavailable()] * 10_000)
    with pytest.raises(RuntimeUnavailableError) as info:
        await engine(tensor=method).tensor("m")
    assert not isinstance(info.value, rex.RayError)


async def test_an_application_error_is_raised_at_once_as_itself():
    stale = StaleVersionError("stale write")
    method = Method(None, [rex.RayTaskError("commit", "tb", stale).as_instanceof_cause()])
    with pytest.raises(StaleVersionError):
        await engine(handle=method).handle("m")
    assert method.calls == 1


async def test_an_unexpected_actor_exception_is_not_retried_and_not_raw():
    method = Method(None, [rex.RayTaskError("handle", "tb", KeyError("boom")).as_instanceof_cause()])
    with pytest.raises(RuntimeUnavailableError):
        await engine(handle=method).handle("m")
    assert method.calls == 1


def lost():
    return rex.ObjectLostError("x", None, "")


def batch_methods_failing():
    """The batched update's calls, failing transiently: the engine falls back to one update at a time."""
    return dict(encode_many=Method("encoded"), update_many=Method("new"), commit_many=Method(None, [lost()]))


async def test_the_update_retries_with_a_fresh_handle_and_is_idempotent():
    old = STMHandle("m", 2, "lost-ref")
    fresh = STMHandle("m", 2, "fresh-ref")
    committed = STMHandle("m", 3, "new-ref")
    batch = batch_methods_failing()
    encoder = SimpleNamespace(encode=Method("encoded"), encode_many=batch["encode_many"])
    memory = SimpleNamespace(update=Method("new-stm"), update_many=batch["update_many"])
    stm = SimpleNamespace(handle=Method(fresh), commit=Method(committed, [lost()]), commit_many=batch["commit_many"])
    decoder = SimpleNamespace(prepare_many=Method(None))
    eng = RayEngine(ActorSet(decoder=decoder, encoder=encoder, memory=memory, stm=stm), retry=FAST)
    assert await eng.update(old, [1, 2, 3], "i-1") is committed
    assert stm.commit_many.calls == 1  # the batched try failed, then one at a time:
    assert stm.commit.calls == 2 and stm.handle.calls == 1  # refreshed once, then committed
    assert [args[0] for args in memory.update.args] == ["lost-ref", "fresh-ref"]  # recomputed from the fresh ref
    assert [args[:2] for args in stm.commit.args] == [("m", 2), ("m", 2)]  # same expected version, same id


async def test_the_update_after_a_lost_acknowledgement_only_asks_the_store():
    old = STMHandle("m", 2, "ref")
    moved_on = STMHandle("m", 3, "ref3")  # the first commit landed before the failure
    batch = batch_methods_failing()
    encoder = SimpleNamespace(encode=Method("encoded"), encode_many=batch["encode_many"])
    memory = SimpleNamespace(update=Method("new"), update_many=batch["update_many"])
    commit = Method(lambda *args: (moved_on if args[1] == 2 else None), [unavailable()])
    stm = SimpleNamespace(handle=Method(moved_on), commit=commit, commit_many=batch["commit_many"])
    eng = RayEngine(ActorSet(decoder=None, encoder=encoder, memory=memory, stm=stm), retry=FAST)
    assert await eng.update(old, [1], "i-1") is moved_on
    assert memory.update.calls == 1  # the retry did not recompute: the store answers for the interaction


def batching_engine(commits):
    encoder = SimpleNamespace(encode_many=Method(lambda interactions: ["enc"] * len(interactions)))
    memory = SimpleNamespace(update_many=Method("new"))
    stm = SimpleNamespace(commit_many=Method(lambda items, stms: [commits[(m, v)] for m, v, _ in items]))
    decoder = SimpleNamespace(prepare_many=Method(None))
    eng = RayEngine(ActorSet(decoder=decoder, encoder=encoder, memory=memory, stm=stm), retry=FAST)
    return eng, encoder, memory, stm, decoder


async def test_the_next_update_starts_from_the_stm_this_engine_computed_and_the_decoder_is_prepared():
    start = STMHandle("m", 2, "store-ref")
    v3, v4 = STMHandle("m", 3, "store-ref-3"), STMHandle("m", 4, "store-ref-4")
    eng, _, memory, _, decoder = batching_engine({("m", 2): v3, ("m", 3): v4})
    assert await eng.update(start, [1], "i-1") is v3
    assert await eng.update(v3, [2], "i-2") is v4
    await asyncio.sleep(0)  # the prepare calls are sent without waiting
    (_, picks1, *sources1), (_, picks2, *sources2) = memory.update_many.args
    assert picks1 == [(0, None)] and sources1 == ["store-ref"]  # nothing computed here yet: the store's copy
    first_result = decoder.prepare_many.args[0][1]  # the memory updater's result, as the decoder got it
    assert picks2 == [(0, 0)] and sources2 == [first_result]  # then our own result, not "store-ref-3"
    assert [args[0] for args in decoder.prepare_many.args] == [[v3], [v4]]
    # a version this engine did not write (e.g. after an import) is read from the store again
    eng.actors.stm.commit = Method(v4)
    await eng.put("m", "imported", 4)
    assert await eng._stm_source(v4) == ("store-ref-4", None)


async def test_updates_due_together_go_out_as_one_batch_and_a_failed_item_fails_alone():
    handles = [STMHandle(f"m{i}", 1, f"ref{i}") for i in range(3)]
    stale = StaleVersionError("another write won")
    commits = {("m0", 1): STMHandle("m0", 2, "a"), ("m1", 1): stale, ("m2", 1): STMHandle("m2", 2, "c")}
    eng, encoder, memory, stm, decoder = batching_engine(commits)
    for _ in handles:
        eng._updates.expect()  # three answers just ended
    results = await asyncio.gather(*(eng.update(h, [i], f"i{i}") for i, h in enumerate(handles)),
                                   return_exceptions=True)
    assert stm.commit_many.calls == 1 and encoder.encode_many.calls == 1 and memory.update_many.calls == 1
    assert results[0].version == 2 and results[2].version == 2 and results[1] is stale
    await asyncio.sleep(0)
    assert decoder.prepare_many.args[0][0] == [results[0], None, results[2]]


class FakeDecoder:
    """Stands in for the decoder actor's channel: each ``submit`` plays its script on the channel's
    stream — chunks (the last one ends the answer) or an exception that breaks the channel."""

    def __init__(self, scripts):
        self.scripts = list(scripts)
        self.submits = 0
        self.channels = 0
        self.channel = SimpleNamespace(remote=self._open)
        self.submit = SimpleNamespace(remote=self._submit)
        self.cancel = Method(None)

    def _open(self, channel_id):
        self.channels += 1
        self.queue = asyncio.Queue()

        async def batches():
            while True:
                item = await self.queue.get()
                if isinstance(item, BaseException):
                    raise item

                async def value(v=item):
                    return v

                yield value()

        return batches()

    def _submit(self, channel_id, key, request):
        self.submits += 1
        script = self.scripts.pop(0)
        for i, item in enumerate(script):
            last = i == len(script) - 1
            self.queue.put_nowait(item if isinstance(item, BaseException) else [(key, item, last, None)])
        return Method(None).remote()


def decoder_engine(decoder, stm) -> RayEngine:
    return RayEngine(ActorSet(decoder=decoder, encoder=None, memory=None, stm=stm), retry=FAST)


async def test_generation_is_retried_only_before_its_first_chunk():
    request = GenerateRequest(prompt=[1], handle=STMHandle("m", 1, "ref"), max_new_tokens=4)
    stm = SimpleNamespace(handle=Method(STMHandle("m", 1, "fresh")))
    decoder = FakeDecoder([[unavailable()], [[5], [6, 7]]])
    eng = decoder_engine(decoder, stm)
    assert [c async for c in eng.generate(request)] == [[5], [6, 7]]
    assert decoder.channels == 2  # the broken channel was reopened for the retry
    await eng.close()

    decoder = FakeDecoder([[[5], rex.ActorDiedError()], [[9]]])
    eng = decoder_engine(decoder, stm)
    got = []
    with pytest.raises(RuntimeUnavailableError):
        async for chunk in eng.generate(request):
            got.append(chunk)
    assert got == [[5]] and decoder.submits == 1  # half an answer is never restarted
    await eng.close()


async def test_answers_share_one_channel_and_a_refused_request_raises_its_own_error():
    request = GenerateRequest(prompt=[1], handle=STMHandle("m", 1, "ref"), max_new_tokens=4)
    decoder = FakeDecoder([[[1], [2]], [[3]]])
    eng = decoder_engine(decoder, SimpleNamespace())
    assert [c async for c in eng.generate(request)] == [[1], [2]]
    assert [c async for c in eng.generate(request)] == [[3]]
    assert decoder.channels == 1 and decoder.submits == 2

    decoder.scripts.append([])
    gen = eng.generate(request)
    task = asyncio.ensure_future(gen.__anext__())
    await asyncio.sleep(0.01)
    decoder.queue.put_nowait([(3, [], True, ValueError("the prompt is empty"))])  # key 3: the third answer
    with pytest.raises(ValueError, match="empty"):
        await task
    await gen.aclose()
    await eng.close()


def _model_actor(loaded: int) -> SimpleNamespace:
    return SimpleNamespace(loaded_weights_version=Method(loaded), set_weights=Method(lambda v, s: v))


@pytest.mark.parametrize("learner_version", [3, 4], ids=["serving-version", "newer-update-pending"])
async def test_a_resync_loads_the_serving_weights_into_the_restarted_actors_only(learner_version):
    """Inside an interaction, after an actor restarted: only the actors that came back with the
    checkpoint's weights get the serving version; an update still waiting for its swap is left to it."""
    decoder, encoder, memory = _model_actor(3), _model_actor(0), _model_actor(3)  # the encoder restarted
    learner = SimpleNamespace(weights_since=Method((learner_version, {"w": 1.0})))
    rx_engine = RayEngine(ActorSet(decoder=decoder, encoder=encoder, memory=memory, stm=None, learner=learner),
                          retry=FAST, weights_version=3)
    await rx_engine._resync_weights()
    pushed = [a.set_weights.args for a in (decoder, encoder, memory)]
    if learner_version == 3:
        assert pushed == [[], [(3, {"w": 1.0})], []]  # the busy decoder is not asked to swap
    else:
        assert pushed == [[], [], []]  # version 4 reaches every actor at the next swap, not mid-answer


async def test_an_update_whose_version_is_no_longer_kept_fails_alone_in_its_batch():
    """Over Ray (no local links), one item of a batch whose STM can no longer be fetched: it ends with
    its StaleVersionError, the others are updated."""
    handles = [STMHandle("m0", 1, "ref0"), STMHandle("m1", 1, None), STMHandle("m2", 1, "ref2")]
    commits = {("m0", 1): STMHandle("m0", 2, "a"), ("m2", 1): STMHandle("m2", 2, "c")}
    eng, encoder, memory, stm, _ = batching_engine(commits)
    stm.handle_at = Method(None)  # m1's version 1 was committed without its reference and is gone
    stm.handle = Method(STMHandle("m1", 3, "ref-3"))  # the store moved on
    encoder.encode = Method("enc")
    memory.update = Method("new")
    stm.commit = Method(lambda memory_id, version, new_stm, interaction: commits[(memory_id, version)])
    for _ in handles:
        eng._updates.expect()
    results = await asyncio.gather(*(eng.update(h, [i], f"i{i}") for i, h in enumerate(handles)),
                                   return_exceptions=True)
    assert results[0].version == 2 and results[2].version == 2
    assert isinstance(results[1], StaleVersionError)


async def test_a_big_batch_runs_on_two_threads_only_while_no_answer_is_being_generated():
    handles = [STMHandle(f"m{i}", 1, f"ref{i}") for i in range(4)]
    commits = {(h.memory_id, 1): STMHandle(h.memory_id, 2, "x") for h in handles}
    eng, encoder, memory, _, _ = batching_engine(commits)
    release = asyncio.Event()

    async def stream(request):
        yield [1]
        await release.wait()
        yield [2]

    eng._decoder.stream = stream  # the decoder client streams these chunks

    async def update_all(count):
        for _ in range(count):
            eng._updates.expect()
        await asyncio.gather(*(eng.update(h, [i], f"i{i}") for i, h in enumerate(handles[:count])))
        return encoder.encode_many.args[-1][1], memory.update_many.kwargs[-1]["threads"]

    answer = eng.generate(GenerateRequest([1], STMHandle("other", 0, None), max_new_tokens=2))
    assert await answer.__anext__() == [1]  # an answer is being generated: the decoder needs its CPU
    assert await update_all(4) == (1, 1)
    release.set()
    assert [chunk async for chunk in answer] == [[2]]
    assert await update_all(4) == (2, 2)  # nothing generating: the batch takes the decoder's CPU too
    assert await update_all(3) == (1, 1)  # a small batch gains too little

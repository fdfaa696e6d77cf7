"""The memory update's model actors: batched encode and update equal one interaction at a time."""

from __future__ import annotations

import asyncio
import copy

import pytest
import torch

from reactor_rt.actors.encoder import EncoderActorImpl, EncoderCore
from reactor_rt.actors.handles import STMHandle, tensor_from_wire, tensor_to_wire, wire_copy
from reactor_rt.actors.memory_updater import MemoryUpdaterActorImpl, MemoryUpdaterCore
from reactor_rt.events import local_link
from reactor_rt.events.local_link import Blob, pack


def _interaction(seed: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, 250, (n,), generator=g).tolist()


def test_batched_encode_and_update_match_one_at_a_time(model):
    encoder, updater = EncoderCore(model), MemoryUpdaterCore(model)
    interactions = [_interaction(i, 7 + 9 * i) for i in range(3)]  # different lengths: padding in the batch
    stms = [model.init_stm(1)[0] + 0.1 * i for i in range(3)]
    encoded = encoder.encode_many(interactions)
    for row, enc in zip(interactions, encoded, strict=True):
        assert torch.allclose(enc, encoder.encode(row), atol=1e-5)
    new = updater.update_many(stms, encoded)
    for stm, enc, got in zip(stms, encoded, new, strict=True):
        assert torch.allclose(got, updater.update(stm, enc), atol=1e-5)


def test_the_actor_picks_each_memory_from_plain_tensors_or_an_earlier_batch(model):
    actor = MemoryUpdaterActorImpl(model)
    encoder = EncoderCore(model)
    encoded = encoder.encode_many([_interaction(1, 9), _interaction(2, 12)])
    plain, earlier = model.init_stm(1)[0], [model.init_stm(1)[0] + 0.5, model.init_stm(1)[0] - 0.5]
    out = asyncio.run(actor.update_many(encoded, [(1, 1), (0, None)], plain, earlier))
    assert torch.allclose(out[0], actor.core.update(earlier[1], encoded[0]), atol=1e-5)
    assert torch.allclose(out[1], actor.core.update(plain, encoded[1]), atol=1e-5)


def test_the_local_link_calls_give_what_the_ray_calls_give(model):
    """Over the local link tensors travel as plain fields: the same numbers, bit for bit."""
    encoder, updater = EncoderActorImpl(model), MemoryUpdaterActorImpl(model)
    interactions = [_interaction(3, 9), _interaction(4, 14)]
    stms = [model.init_stm(1)[0] + 0.3, model.init_stm(1)[0] - 0.3]

    async def both() -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        encoded = await encoder.encode_many(interactions)
        wired = await encoder._encode_many_wired(interactions)
        new = await updater._update_many_wired(wired, [tensor_to_wire(s) for s in stms])
        return encoded, [tensor_from_wire(w) for w in wired], [tensor_from_wire(n) for n in new]

    encoded, encoded_wired, new_wired = asyncio.run(both())
    for a, b in zip(encoded, encoded_wired, strict=True):
        assert torch.equal(a, b)
    for got, want in zip(new_wired, updater.core.update_many(stms, encoded), strict=True):
        assert torch.equal(got, want)


def test_equal_lengths_take_the_unpadded_path_with_the_same_results(model):
    encoder, updater = EncoderCore(model), MemoryUpdaterCore(model)
    interactions = [_interaction(i, 11) for i in range(2)]
    stms = [model.init_stm(1)[0] + 0.2 * i for i in range(2)]
    encoded = encoder.encode_many(interactions)
    for row, enc in zip(interactions, encoded, strict=True):
        assert torch.allclose(enc, encoder.encode(row), atol=1e-5)
    for stm, enc, got in zip(stms, encoded, updater.update_many(stms, encoded), strict=True):
        assert torch.allclose(got, updater.update(stm, enc), atol=1e-5)


def test_tensors_cross_the_wire_unchanged_in_every_serving_dtype():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        t = torch.randn(2, 3, 5).to(dtype)
        assert torch.equal(tensor_from_wire(tensor_to_wire(t)), t)
        assert tensor_from_wire(tensor_to_wire(t)).dtype == dtype
    assert tensor_from_wire(tensor_to_wire(torch.empty(0, 4))).shape == (0, 4)
    view = torch.arange(12.0).reshape(3, 4).t()  # not contiguous
    assert torch.equal(tensor_from_wire(tensor_to_wire(view)), view)


def test_the_in_process_engine_gives_new_memories_the_one_initial_stm_token(model):
    from reactor_rt.actors.engine import LocalEngine
    from reactor_rt.store import MemorySTMStore

    async def run() -> None:
        engine = LocalEngine(model, MemorySTMStore())
        a, b = await engine.handle("a"), await engine.handle("b")
        assert a.version == b.version == 0 and a.token == b.token  # one projection in the decoder
        written = await engine.update(a, [1, 5, 6, 2], "i1")
        assert written.version == 1 and written.token != a.token

    asyncio.run(run())


class _Receiver(local_link._Framed):
    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[object] = []

    def on_frame(self, kind: int, key: int, payload: object) -> None:
        self.payloads.append(payload)


def _received(fields: list) -> list:  # type: ignore[type-arg]
    """``fields`` as a peer receives them over the local link (a large blob: a view of its read buffer)."""
    receiver, data, at = _Receiver(), pack(5, 1, fields), 0
    while at < len(data):
        room = receiver.get_buffer(-1)
        n = min(len(room), len(data) - at)
        room[:n] = data[at : at + n]
        receiver.buffer_updated(n)
        at += n
    return receiver.payloads[0]  # type: ignore[return-value]


def test_a_received_tensor_is_a_view_only_when_asked_and_aligned():
    t = torch.randn(64, 512)  # 128 KiB: out of band
    fields = _received(tensor_to_wire(t))
    assert isinstance(fields[2], Blob)
    view, copy = tensor_from_wire(fields, copy=False), tensor_from_wire(fields)
    assert torch.equal(view, t) and torch.equal(copy, t)
    view.add_(1.0)  # shares the received bytes; the copy does not
    assert torch.equal(tensor_from_wire(fields), t + 1.0) and torch.equal(copy, t)
    assert view.data_ptr() % 4 == 0
    misaligned = [fields[0], [8], Blob(fields[2].data[1:33])]
    assert tensor_from_wire(misaligned, copy=False).data_ptr() % 4 == 0


def test_kept_fields_own_their_bytes():
    t = torch.randn(64, 512)
    fields = _received(tensor_to_wire(t))
    kept = wire_copy(fields)
    tensor_from_wire(fields, copy=False).zero_()  # the message's buffer is reused or changed
    assert torch.equal(tensor_from_wire(kept), t)


def test_a_prepared_update_gives_the_same_bits_and_is_taken_once(model):
    """The updater does the STM side of a batch while the encoder encodes (`prepare_many`, a notification),
    then the rest when the encoded interactions come (`update_prepared`): what `update_many` gives."""
    encoder, updater = EncoderCore(model), MemoryUpdaterActorImpl(model)
    interactions = [_interaction(5, 9), _interaction(6, 13)]  # padded in the batch
    stms = [model.init_stm(1)[0] + 0.3, model.init_stm(1)[0] - 0.2]
    versions = [["a", 3], ["b", 0]]
    encoded = encoder.encode_many(interactions)

    async def prepared() -> list[torch.Tensor]:
        await updater._prepare_many_wired(versions, [tensor_to_wire(s) for s in stms])
        new = await updater._update_prepared_wired(versions, [tensor_to_wire(e) for e in encoded])
        return [tensor_from_wire(n) for n in new]

    for got, want in zip(asyncio.run(prepared()), updater.core.update_many(stms, encoded), strict=True):
        assert torch.equal(got, want)
    with pytest.raises(LookupError, match="no prepared update"):  # taken by its update
        asyncio.run(updater._update_prepared_wired(versions, [tensor_to_wire(e) for e in encoded]))


def test_new_weights_drop_the_prepared_updates(model):
    updater = MemoryUpdaterActorImpl(copy.deepcopy(model))
    stm, versions = [tensor_to_wire(model.init_stm(1)[0])], [["a", 1]]
    enc = [tensor_to_wire(EncoderCore(model).encode_many([_interaction(7, 8)])[0])]

    async def run() -> None:
        await updater._prepare_many_wired(versions, stm)
        state = {k: v + 0.01 for k, v in updater.core.model.state_dict().items() if k.startswith("memory_attention.")}
        await updater.set_weights(1, state)  # the plan was made with the weights replaced
        await updater._update_prepared_wired(versions, enc)

    with pytest.raises(LookupError):
        asyncio.run(run())


class _Link:
    """A local link to an actor of this process: its calls run in the order they were sent, as over a
    real link (a notification's handler runs before a later call's)."""

    def __init__(self, name: str, actor, sent: list) -> None:  # type: ignore[no-untyped-def]
        self.name, self.actor, self.sent = name, actor, sent
        self._pending: list[asyncio.Future] = []  # type: ignore[type-arg]

    def notify(self, call: str, *args) -> None:  # type: ignore[no-untyped-def]
        self.sent.append((self.name, call))
        self._pending.append(asyncio.ensure_future(self.actor.link.calls[call](*args)))

    async def call(self, call: str, *args):  # type: ignore[no-untyped-def]
        self.sent.append((self.name, call))
        for earlier in self._pending:
            await earlier
        self._pending.clear()
        return await self.actor.link.calls[call](*args)


class _Store:
    def __init__(self) -> None:
        self.stms: list[torch.Tensor] = []

    async def call(self, name: str, meta, stms):  # type: ignore[no-untyped-def]
        self.stms += [tensor_from_wire(s) for s in stms]
        return [STMHandle(memory_id, version + 1, None).to_wire() for memory_id, version, _ in meta]


@pytest.mark.parametrize(("items", "generating", "prepared"), [(1, 0, True), (4, 1, True), (4, 0, False)])
def test_the_linked_update_prepares_the_stm_side_while_the_encoder_runs(model, items, generating, prepared):
    """A batch on one thread: the updater gets the STMs before the encoder's call and only the encoded
    interactions after it. A big batch while nothing is generated runs on two threads in each actor
    (see `_update_threads`): the updater would only compete with the encoder, so it gets both at once."""
    from types import SimpleNamespace

    from reactor_rt.actors.engine import ActorSet, RayEngine

    eng = RayEngine(ActorSet(decoder=None, encoder=None, memory=None, stm=None))
    eng._generating = generating
    encoder, updater, store, sent = EncoderActorImpl(model), MemoryUpdaterActorImpl(model), _Store(), []
    stms = [model.init_stm(1)[0] + 0.1 * i for i in range(items)]
    handles = [STMHandle(f"m{i}", 2, None) for i in range(items)]
    interactions = [_interaction(10 + i, 8 + 3 * i) for i in range(items)]

    async def fields(handle: STMHandle) -> list:  # type: ignore[type-arg]
        return tensor_to_wire(stms[int(handle.memory_id[1:])])

    async def store_link() -> _Store:
        return store

    eng._stm_fields = fields  # type: ignore[method-assign]
    eng._stm_link = SimpleNamespace(get=store_link)
    eng._decoder = SimpleNamespace(warm_fields=lambda handles, stms: None)

    async def run() -> list:  # type: ignore[type-arg]
        links = _Link("encoder", encoder, sent), _Link("memory", updater, sent)
        return await eng._update_batch_linked(list(zip(handles, interactions, ["i"] * items, strict=True)), *links)

    results = asyncio.run(run())
    assert [(h.memory_id, h.version) for h in results] == [(h.memory_id, 3) for h in handles]
    if prepared:
        assert sent[:3] == [("memory", "prepare_many"), ("encoder", "encode_many"), ("memory", "update_prepared")]
    else:
        assert sent[:2] == [("encoder", "encode_many"), ("memory", "update_many")]
    want = MemoryUpdaterCore(model).update_many(stms, EncoderCore(model).encode_many(interactions))
    for got, expected in zip(store.stms, want, strict=True):
        assert torch.equal(got, expected)

"""The memory update's model actors: batched encode and update equal one interaction at a time."""

from __future__ import annotations

import asyncio

import torch

from reactor_rt.actors.encoder import EncoderActorImpl, EncoderCore
from reactor_rt.actors.handles import tensor_from_wire, tensor_to_wire, wire_copy
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

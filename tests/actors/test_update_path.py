"""The memory update's model actors: batched encode and update equal one interaction at a time."""

from __future__ import annotations

import torch

from reactor_rt.actors.encoder import EncoderCore
from reactor_rt.actors.memory_updater import MemoryUpdaterActorImpl, MemoryUpdaterCore


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
    out = actor.update_many(encoded, [(1, 1), (0, None)], plain, earlier)
    assert torch.allclose(out[0], actor.update(earlier[1], encoded[0]), atol=1e-5)
    assert torch.allclose(out[1], actor.update(plain, encoded[1]), atol=1e-5)


def test_equal_lengths_take_the_unpadded_path_with_the_same_results(model):
    encoder, updater = EncoderCore(model), MemoryUpdaterCore(model)
    interactions = [_interaction(i, 11) for i in range(2)]
    stms = [model.init_stm(1)[0] + 0.2 * i for i in range(2)]
    encoded = encoder.encode_many(interactions)
    for row, enc in zip(interactions, encoded, strict=True):
        assert torch.allclose(enc, encoder.encode(row), atol=1e-5)
    for stm, enc, got in zip(stms, encoded, updater.update_many(stms, encoded), strict=True):
        assert torch.allclose(got, updater.update(stm, enc), atol=1e-5)

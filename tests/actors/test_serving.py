"""intra_op_threads: a block on more torch threads (capped by the CPUs the process may use), then back."""

from __future__ import annotations

import os

import pytest
import torch

from reactor_rt.actors.encoder import EncoderActorImpl
from reactor_rt.actors.serving import intra_op_threads

pytestmark = pytest.mark.anyio


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def test_threads_inside_and_restored_after(one_thread):
    with intra_op_threads(2):
        assert torch.get_num_threads() == min(2, usable_cpus())
    assert torch.get_num_threads() == 1
    with pytest.raises(RuntimeError, match="inside"), intra_op_threads(2):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 1  # restored after a failure too


def test_never_more_threads_than_usable_cpus(one_thread):
    with intra_op_threads(10_000):
        assert torch.get_num_threads() == usable_cpus()
    with intra_op_threads(0):
        assert torch.get_num_threads() == 1


async def test_an_encode_on_two_threads_matches_one_and_leaves_one(model, one_thread):
    actor = EncoderActorImpl(model)
    interactions = [[5 + i, 6, 7, 8 + i] for i in range(4)]
    one = await actor.encode_many(interactions)
    two = await actor.encode_many(interactions, threads=2)
    for a, b in zip(one, two, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.get_num_threads() == 1

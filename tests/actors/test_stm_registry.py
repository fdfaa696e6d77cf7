"""STMRegistry: versions, compare-and-set, idempotency and forks over a store."""

from __future__ import annotations

import pytest
import torch

from reactor_rt.actors.stm_store import STMRegistry
from reactor_rt.errors import StaleVersionError, StoreError
from reactor_rt.store import MemorySTMStore, SQLiteSTMStore


@pytest.fixture
def initial() -> torch.Tensor:
    return torch.randn(2, 4, 8)


def test_a_new_memory_is_version_zero_with_the_initial_stm(initial):
    reg = STMRegistry(MemorySTMStore(), initial)
    version, stm = reg.load("m")
    assert version == 0 and torch.equal(stm, initial)


def test_commit_is_compare_and_set_and_idempotent(initial):
    reg = STMRegistry(MemorySTMStore(), initial)
    v1, _ = reg.commit("m", 0, initial + 1, "i-1")
    assert v1 == 1
    with pytest.raises(StaleVersionError):
        reg.commit("m", 0, initial + 2, "i-2")
    again, stm = reg.commit("m", 0, initial + 3, "i-1")  # a retry of i-1: its version, not a new one
    assert again == 1 and torch.equal(stm, initial + 1)


def test_versions_survive_a_new_registry(tmp_path, initial):
    store = SQLiteSTMStore(tmp_path / "s.db")
    STMRegistry(store, initial).commit("m", 0, initial * 2, "i")
    store.close()
    version, stm = STMRegistry(SQLiteSTMStore(tmp_path / "s.db"), initial).load("m")
    assert version == 1 and torch.equal(stm, initial * 2)


def test_fork_copies_the_latest_or_initial_stm(initial):
    reg = STMRegistry(MemorySTMStore(), initial)
    assert torch.equal(reg.fork("new", "copy-of-new")[1], initial)
    reg.commit("m", 0, initial + 5, None)
    version, stm = reg.fork("m", "copy")
    assert version == 1 and torch.equal(stm, initial + 5)


def test_a_wrong_shape_is_refused(initial):
    reg = STMRegistry(MemorySTMStore(), initial)
    with pytest.raises(StoreError, match="shape"):
        reg.commit("m", 0, torch.zeros(3, 3), None)


@pytest.mark.parametrize("bad", [lambda s: s.double(), lambda s: s.to(torch.bfloat16), lambda s: s > 0,
                                 lambda s: s.index_fill(0, torch.tensor([1]), float("nan")),
                                 lambda s: s.index_fill(2, torch.tensor([0]), float("inf")),
                                 lambda s: s.index_fill(2, torch.tensor([1]), -float("inf")),
                                 # +inf and -inf together: a check by sum must still see them
                                 lambda s: s.index_fill(2, torch.tensor([0]), float("inf")).index_fill(
                                     2, torch.tensor([1]), -float("inf"))],
                         ids=["float64", "bfloat16", "bool", "nan", "inf", "-inf", "inf-and-minus-inf"])
def test_an_stm_the_model_cannot_read_is_refused_and_nothing_is_stored(initial, bad):
    reg = STMRegistry(MemorySTMStore(), initial)
    with pytest.raises(StoreError, match=r"dtype|NaN"):
        reg.commit("m", 0, bad(initial), None)
    version, stm = reg.load("m")
    assert version == 0 and torch.equal(stm, initial)


def test_huge_but_finite_values_are_stored(initial):
    """Values whose float32 sum would overflow are still finite: the check must not refuse them."""
    reg = STMRegistry(MemorySTMStore(), initial)
    huge = torch.full_like(initial, 3e38)
    version, stm = reg.commit("m", 0, huge, None)
    assert version == 1 and torch.equal(stm, huge)


@pytest.mark.ray
def test_a_commit_over_the_local_link_is_durable_at_once_and_put_in_ray_only_when_asked(ray_local, initial):
    import asyncio

    from reactor_rt.actors.handles import STMHandle, tensor_to_wire
    from reactor_rt.actors.stm_store import STMStoreActorImpl

    actor = STMStoreActorImpl("memory://", initial)
    new = initial + 1.0

    async def run() -> None:
        (wired, refused) = await actor._commit_many_wired(
            [["m", 0, "i1"], ["m", 0, "i2"]], [tensor_to_wire(new), tensor_to_wire(new)])
        handle = STMHandle.from_wire(wired)
        assert handle.version == 1 and handle.stm is None
        assert isinstance(refused, StaleVersionError)  # one item failed, the other still committed
        assert actor.registry.store.load("m").version == 1  # durable before the reply
        assert ("m", 1) in actor._unput  # not in Ray's store yet
        full = await actor.handle_at("m", 1)  # asked for through Ray: put now, same token
        assert full is not None and full.token == handle.token and torch.equal(await full.stm, new)
        assert (await actor.handle("m")).stm is full.stm  # one put per version, never two
        assert not actor._unput
        # a version evicted before anyone asked is never put
        for v in range(actor.HISTORY + 1):
            await actor._commit_many_wired([["n", v, f"n{v}"]], [tensor_to_wire(new)])
        assert ("n", 1) not in actor._unput and len(actor._unput) == actor.HISTORY

    asyncio.run(run())


def test_a_committed_stm_owns_its_memory_when_given_a_view_of_a_message(initial):
    """The STM store commits views of the received link message: what it keeps must be copies."""
    from reactor_rt.actors.handles import tensor_from_wire, tensor_to_wire
    from reactor_rt.events.local_link import Blob

    dtype, shape, data = tensor_to_wire(initial + 1)
    message = bytearray(bytes(data))
    view = tensor_from_wire([dtype, shape, Blob(message)], copy=False)
    reg = STMRegistry(MemorySTMStore(), initial)
    reg.commit("m", 0, view, "i")
    message[:] = bytes(len(message))  # the message buffer is reused or freed
    assert torch.equal(reg.load("m")[1], initial + 1)
    reg.forget("m")  # and the store's own copy
    assert torch.equal(reg.load("m")[1], initial + 1)

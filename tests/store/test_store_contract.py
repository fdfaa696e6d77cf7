"""The STMStore contract, run against every store implementation (SQLite and in-memory)."""

from __future__ import annotations

import pytest
import torch

from reactor_rt import InvalidIdError, StaleVersionError, StoreError
from reactor_rt.store import MemorySTMStore, SQLiteSTMStore, STMStore, StoredSTM


@pytest.fixture(params=["sqlite", "memory"])
def make_store(request, tmp_path):
    """A factory: make_store(history_size=...) -> a fresh store of the parametrized kind."""
    made: list[STMStore] = []

    def make(**kwargs) -> STMStore:
        if request.param == "sqlite":
            store = SQLiteSTMStore(tmp_path / f"stm-{len(made)}.db", **kwargs)
        else:
            store = MemorySTMStore(**kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store) -> STMStore:
    return make_store()


def stm(seed: int = 0, shape=(2, 3, 4, 8), dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


class TestSTMStoreContract:
    def test_absent_memory_loads_none(self, store):
        assert store.load("nobody") is None
        assert store.list_ids() == []
        assert store.applied_version("nobody", "i1") is None

    def test_save_then_load_round_trips_exactly(self, store):
        t = stm(1)
        assert store.save("alice", t, expected_version=0, interaction="i1") == 1
        got = store.load("alice")
        assert isinstance(got, StoredSTM)
        assert got.memory_id == "alice" and got.version == 1 and got.interaction == "i1"
        assert torch.equal(got.stm, t) and got.stm.dtype == t.dtype
        assert got.updated_at > 0

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
    def test_dtypes_round_trip(self, store, dtype):
        t = stm(2, dtype=dtype)
        store.save("m", t, expected_version=0)
        got = store.load("m").stm
        assert got.dtype == dtype and torch.equal(got, t)

    def test_versions_increase_by_one(self, store):
        for v in range(5):
            assert store.save("m", stm(v), expected_version=v) == v + 1
        got = store.load("m")
        assert got.version == 5 and torch.equal(got.stm, stm(4)) and got.interaction is None

    def test_compare_and_set_rejects_stale_and_future_versions(self, store):
        store.save("m", stm(0), expected_version=0)
        store.save("m", stm(1), expected_version=1)
        for wrong in (0, 1, 3):
            with pytest.raises(StaleVersionError) as info:
                store.save("m", stm(9), expected_version=wrong)
            err = info.value
            assert isinstance(err, StoreError)
            assert "'m'" in str(err) and f"expected version {wrong}" in str(err)
            assert (err.memory_id, err.expected_version, err.current_version) == ("m", wrong, 2)
        got = store.load("m")
        assert got.version == 2 and torch.equal(got.stm, stm(1))

    def test_create_needs_expected_version_zero(self, store):
        with pytest.raises(StaleVersionError, match="does not exist"):
            store.save("m", stm(0), expected_version=1)
        assert store.load("m") is None

    def test_same_interaction_twice_gives_one_version(self, store):
        assert store.save("m", stm(0), expected_version=0, interaction="q1") == 1
        # the retry carries the now-stale expected version and other bytes: still answered, not written
        assert store.save("m", stm(5), expected_version=0, interaction="q1") == 1
        got = store.load("m")
        assert got.version == 1 and torch.equal(got.stm, stm(0))
        assert store.applied_version("m", "q1") == 1

    def test_idempotency_is_per_memory(self, store):
        assert store.save("a", stm(0), expected_version=0, interaction="q") == 1
        assert store.save("b", stm(1), expected_version=0, interaction="q") == 1
        assert torch.equal(store.load("b").stm, stm(1))
        assert store.applied_version("b", "q") == 1

    def test_old_interaction_retried_after_later_writes_returns_its_version(self, store):
        store.save("m", stm(0), expected_version=0, interaction="q1")
        store.save("m", stm(1), expected_version=1, interaction="q2")
        store.save("m", stm(2), expected_version=2)
        assert store.save("m", stm(9), expected_version=1, interaction="q1") == 1
        assert store.save("m", stm(9), expected_version=1, interaction="q2") == 2
        assert store.load("m").version == 3

    def test_history_is_bounded_to_the_newest_interactions(self, make_store):
        store = make_store(history_size=3)
        for v in range(6):
            store.save("m", stm(v), expected_version=v, interaction=f"q{v}")
        assert [store.applied_version("m", f"q{v}") for v in range(6)] == [None, None, None, 4, 5, 6]
        # a forgotten interaction is no longer deduplicated, but compare-and-set still guards it
        with pytest.raises(StaleVersionError):
            store.save("m", stm(0), expected_version=0, interaction="q0")

    @pytest.mark.parametrize(("bad", "error"), [(2.5, TypeError), (True, TypeError), ("3", TypeError), (0, ValueError)])
    def test_a_bad_history_size_is_refused_when_the_store_is_made(self, make_store, bad, error):
        # 2.5 used to be accepted by the SQLite store, whose every later save then failed
        with pytest.raises(error, match="history_size"):
            make_store(history_size=bad)

    def test_tensors_are_copied_in_and_out(self, store):
        t = stm(0)
        original = t.clone()
        store.save("m", t, expected_version=0)
        t.add_(100.0)  # the caller keeps using its tensor
        first = store.load("m").stm
        assert torch.equal(first, original)
        first.zero_()  # the caller mutates what it loaded
        assert torch.equal(store.load("m").stm, original)

    def test_non_contiguous_and_grad_tensors_are_stored(self, store):
        t = stm(0, shape=(4, 6)).t()  # non-contiguous view
        store.save("m", t, expected_version=0)
        assert torch.equal(store.load("m").stm, t)
        g = torch.ones(3, requires_grad=True)
        store.save("g", g * 2, expected_version=0)
        got = store.load("g").stm
        assert not got.requires_grad and torch.equal(got, torch.full((3,), 2.0))

    def test_list_ids_is_sorted(self, store):
        for name in ["carol", "alice", "bob"]:
            store.save(name, stm(0), expected_version=0)
        assert store.list_ids() == ["alice", "bob", "carol"]

    def test_delete_forgets_memory_and_history(self, store):
        store.save("m", stm(0), expected_version=0, interaction="q1")
        store.save("other", stm(1), expected_version=0)
        assert store.delete("m") is True
        assert store.delete("m") is False
        assert store.load("m") is None and store.applied_version("m", "q1") is None
        assert store.list_ids() == ["other"]
        assert store.save("m", stm(2), expected_version=0, interaction="q1") == 1  # starts over

    def test_copy_forks_at_version_one(self, store):
        for v in range(3):
            store.save("seed", stm(v), expected_version=v, interaction=f"q{v}")
        assert store.copy("seed", "fork") == 1
        fork = store.load("fork")
        assert fork.version == 1 and fork.interaction is None and torch.equal(fork.stm, stm(2))
        assert store.applied_version("fork", "q2") is None  # history is not inherited
        # the two evolve independently
        store.save("fork", stm(7), expected_version=1)
        assert torch.equal(store.load("seed").stm, stm(2)) and store.load("seed").version == 3

    def test_copy_onto_existing_memory_is_refused(self, store):
        store.save("a", stm(0), expected_version=0)
        store.save("b", stm(1), expected_version=0)
        store.save("b", stm(2), expected_version=1)
        for dst in ("b", "a"):
            with pytest.raises(StaleVersionError, match="already exists") as info:
                store.copy("a", dst)
            assert info.value.memory_id == dst
        assert torch.equal(store.load("b").stm, stm(2)) and store.load("b").version == 2

    def test_copy_of_missing_memory_is_a_store_error(self, store):
        with pytest.raises(StoreError, match=r"'ghost'.*does not exist"):
            store.copy("ghost", "new")
        assert store.load("new") is None

    @pytest.mark.parametrize("bad", ["", "x" * 257, "a\nb", 7])
    def test_ids_are_validated(self, store, bad):
        with pytest.raises(InvalidIdError, match="memory id"):
            store.save(bad, stm(0), expected_version=0)
        with pytest.raises(InvalidIdError, match="memory id"):
            store.load(bad)
        with pytest.raises(InvalidIdError, match="interaction id"):
            store.save("m", stm(0), expected_version=0, interaction=bad)
        with pytest.raises(InvalidIdError):
            store.copy("m", bad)
        assert store.list_ids() == []

    def test_bad_arguments_are_rejected(self, store):
        with pytest.raises(TypeError, match=r"torch\.Tensor"):
            store.save("m", [1.0, 2.0], expected_version=0)
        with pytest.raises(TypeError, match="expected_version"):
            store.save("m", stm(0), expected_version=True)
        with pytest.raises(ValueError, match="expected_version"):
            store.save("m", stm(0), expected_version=-1)
        with pytest.raises(TypeError):
            store.save("m", stm(0), 0)  # expected_version is keyword-only

    def test_a_meta_tensor_is_a_type_error_and_nothing_is_stored(self, store):
        # it used to reach the copy to the CPU and fail there with a raw NotImplementedError
        with pytest.raises(TypeError, match="meta"):
            store.save("m", torch.zeros(2, 3, device="meta"), expected_version=0)
        assert store.load("m") is None

    def test_close_is_idempotent_and_blocks_later_calls(self, store):
        store.save("m", stm(0), expected_version=0)
        store.close()
        store.close()
        assert store.closed
        with pytest.raises(StoreError, match="closed"):
            store.load("m")
        with pytest.raises(StoreError, match="closed"):
            store.save("m", stm(0), expected_version=1)

    def test_context_manager_closes(self, make_store):
        with make_store() as s:
            s.save("m", stm(0), expected_version=0)
        assert s.closed

    def test_concurrent_saves_have_exactly_one_winner_per_version(self, store, race):
        threads_n, rounds = 8, 4
        for version in range(rounds):
            outcomes = race(
                lambda i, v=version: store.save("race", stm(100 * v + i), expected_version=v), threads_n
            )
            winners = [i for i, o in enumerate(outcomes) if o == version + 1]
            assert len(winners) == 1, outcomes
            assert outcomes.count("stale") == threads_n - 1
            assert torch.equal(store.load("race").stm, stm(100 * version + winners[0]))
        assert store.load("race").version == rounds

    def test_concurrent_retries_of_one_interaction_write_once(self, store, race):
        outcomes = race(lambda i: store.save("m", stm(i), expected_version=0, interaction="same"), 6)
        assert outcomes == [1] * 6
        assert store.load("m").version == 1

"""FaultyStore: fault injection that later reliability tests build on."""

from __future__ import annotations

import pytest
import torch

from reactor_rt import StoreError
from reactor_rt.store import MemorySTMStore
from reactor_rt.store.testing import Fault, FaultyStore, InjectedFault


def test_failing_the_nth_save_before_it_writes():
    store = FaultyStore(MemorySTMStore(), [Fault("save", 2)])
    assert store.save("m", torch.zeros(2), expected_version=0) == 1
    with pytest.raises(InjectedFault, match="save call #2"):
        store.save("m", torch.ones(2), expected_version=1)
    assert store.load("m").version == 1  # nothing written
    assert store.save("m", torch.ones(2), expected_version=1) == 2
    assert store.calls["save"] == 3 and store.calls["load"] == 1


def test_lost_acknowledgement_then_idempotent_retry():
    store = FaultyStore(MemorySTMStore())
    store.fail_next("save", after=True)
    with pytest.raises(StoreError):
        store.save("m", torch.ones(2), expected_version=0, interaction="q1")
    assert store.inner.load("m").version == 1  # the write happened
    # the caller retries the same interaction with the same expected version: one version, no error
    assert store.save("m", torch.ones(2), expected_version=0, interaction="q1") == 1


def test_custom_error_and_other_operations():
    boom = OSError("disk on fire")
    with FaultyStore(MemorySTMStore(), [Fault("load", 1, error=boom), Fault("list_ids", 1)]) as store:
        with pytest.raises(OSError, match="disk on fire"):
            store.load("m")
        with pytest.raises(InjectedFault):
            store.list_ids()
        assert store.list_ids() == []
        store.add(Fault("copy", 1))
        store.save("a", torch.zeros(1), expected_version=0)
        with pytest.raises(InjectedFault):
            store.copy("a", "b")
    assert store.inner.closed

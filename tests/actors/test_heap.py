"""actors.heap: a buffer allocated again after a free reuses the heap instead of faulting in new pages;
start-up objects are left out of garbage collections."""

from __future__ import annotations

import subprocess
import sys

import pytest

# allocate, touch, free, then count the page faults of the same allocation once more (and again)
_PROBE = """
import resource, sys
from reactor_rt.actors.heap import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else None
def faults(size):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buf = bytearray(size)  # zero-filled: every page touched
    del buf
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
size = 8 << 20
faults(size)
print(tuned, faults(size), faults(size))
"""


def _probe(mode: str) -> tuple[str, int, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True).stdout
    tuned, second, third = out.split()
    return tuned, int(second), int(third)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_freed_memory_stays_in_the_heap():
    pages = (8 << 20) // 4096
    tuned, second, third = _probe("tuned")
    assert tuned == "True"
    assert second < pages // 20 and third < pages // 20  # reused: no page faulted in again
    _, untuned_second, _ = _probe("plain")
    assert untuned_second > pages // 2  # glibc's defaults: the pages come from the kernel again


def test_it_is_a_no_op_without_glibc(monkeypatch):
    from reactor_rt.actors import heap

    monkeypatch.setattr(heap.sys, "platform", "darwin")
    assert heap.keep_freed_memory() is False


_FREEZE_PROBE = """
import gc, weakref
from reactor_rt.actors.heap import freeze_startup_objects
import torch  # a heap of the size an actor has after start-up
class Node:
    pass
kept = [[i] for i in range(200_000)]
cycle = Node()
cycle.self = cycle  # garbage by the time of the freeze: collected, not frozen
gone = weakref.ref(cycle)
del cycle
frozen = freeze_startup_objects()
print(frozen, len(gc.get_objects()), gone() is None)
"""


def test_freezing_leaves_the_start_up_heap_out_of_collections_after_collecting_its_garbage():
    out = subprocess.run([sys.executable, "-c", _FREEZE_PROBE], capture_output=True, text=True, check=True).stdout
    frozen, still_collected, garbage_gone = out.split()
    assert int(frozen) > 200_000  # the kept lists and everything imported: no collection walks them
    assert int(still_collected) < 1_000  # what a full collection still walks
    assert garbage_gone == "True"

"""How a serving actor's process treats its heaps: freed memory stays in malloc's, and what the process
built at start-up (Ray, torch, the model: ~220,000 objects) leaves the cycle collector's.

`keep_freed_memory`: tensors crossing the local link are fresh buffers each time. Every large frame
the link receives lands in a new buffer (its blobs keep the old one), and the actors copy STMs in and
out of them: hundreds of kilobytes to megabytes per memory update, allocated and freed again and
again. glibc hands memory above its mmap threshold (128 KiB at first) back to the kernel on free, and
trims the heap's top beyond twice that threshold, so the next allocation page-faults every page in
afresh: the STM store took ~60 page faults for one single-stream update, and a two-process round trip
of 15 tensors of 235 kB each way took 5.0 ms where 2.1 ms suffice once freed memory stays in the heap
(two processes, measured alternately). Raising both thresholds keeps it there: the price is up to
`TRIM_THRESHOLD` of freed memory kept per process.

`freeze_startup_objects`: Python's full (generation 2) collection walks every tracked object, and an
actor process holds ~220,000 after start-up. One such collection took 133 ms in the conductor during a
5-second run of single-stream and 16-stream turns, and meanwhile the conductor's event loop, and so
every stream, stood still. Frozen (`gc.freeze`), those objects are left out of every collection: a full
one then takes well under a millisecond. They live as long as the process anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "freeze_startup_objects", "keep_freed_memory", "settle_actor_process"]

MMAP_THRESHOLD = 32 << 20  # allocations below this come from the heap (glibc's own ceiling for its dynamic threshold)
TRIM_THRESHOLD = 128 << 20  # freed memory at the heap's top kept up to this much

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Tune this process's glibc malloc as the module doc says; False where there is no glibc (other
    platforms, musl) and nothing was changed. Idempotent."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def freeze_startup_objects() -> int:
    """Collect what is garbage now, then freeze every object left (see the module doc); returns how many
    objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def settle_actor_process() -> None:
    """The end of an actor's constructor: `keep_freed_memory` and `freeze_startup_objects`."""
    keep_freed_memory()
    freeze_startup_objects()

"""Keep freed memory in an actor's heap: tensors crossing the local link are fresh buffers each time.

Every large frame the link receives lands in a new buffer (its blobs keep the old one), and the actors
copy STMs in and out of them: hundreds of kilobytes to megabytes per memory update, allocated and freed
again and again. glibc hands memory above its mmap threshold (128 KiB at first) back to the kernel on
free, and trims the heap's top beyond twice that threshold, so the next allocation page-faults every
page in afresh: the STM store took ~60 page faults for one single-stream update, and a two-process
round trip of 15 tensors of 235 kB each way took 5.0 ms where 2.1 ms suffice once freed memory stays
in the heap (``linkbench``, alternating). Raising both thresholds keeps it there: the price is up to
`TRIM_THRESHOLD` of freed memory kept per process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

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

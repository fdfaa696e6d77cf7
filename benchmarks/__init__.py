"""Side-by-side benchmarks of reactor-rt: RxT against a stateless decoder-only baseline of the same
blocks, memory footprint, attention variants, decode speed, runtime overhead and the event bus.

    python -m benchmarks [--quick]      # runs them all and writes benchmarks/RESULTS.md + PNG plots

Each module also runs on its own (`python -m benchmarks.conversation_scaling --quick`, ...).
"""

import os

from reactor_rt.openmp import OPENMP_SPIN_COUNT

__all__: list[str] = []

# the direct calls' update batches on 2 threads (runtime_overhead) run with the OpenMP spin the Reactor's
# actors get (`Reactor.start`); this process's OpenMP reads it once, when torch loads, so it is set here
os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)

"""Side-by-side benchmarks of reactor-rt: RxT against a stateless decoder-only baseline of the same
blocks, memory footprint, attention variants, decode speed, runtime overhead and the event bus.

    python -m benchmarks [--quick]      # runs them all and writes benchmarks/RESULTS.md + PNG plots

Each module also runs on its own (`python -m benchmarks.conversation_scaling --quick`, ...).
"""

__all__: list[str] = []

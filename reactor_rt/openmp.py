"""How long idle OpenMP worker threads spin before they sleep: the one setting of this module, kept free
of torch so that a process can set it before torch loads (GNU OpenMP reads it once, then)."""

from __future__ import annotations

__all__ = ["OPENMP_SPIN_COUNT"]

# OpenMP worker threads of the local instance's processes (`Reactor.start`) wait for the next parallel region by
# spinning this many iterations (~0.3 ms here), then sleep. An encoder or memory-updater call on 2 threads
# (a big update batch, see RayEngine._update_threads) runs hundreds of small regions back to back: with
# the worker asleep between them (OMP_WAIT_POLICY=PASSIVE, as our test script sets) the second thread
# gained nothing (16-row encode 31 ms on 1 thread, 26-31 ms on 2; 19 ms with this spin); GNU OpenMP's
# default spin (~10 ms here after every region) or ACTIVE (no end) would take a core from the decoder.
# This value wins over OMP_WAIT_POLICY. One-thread work (decode steps, small updates) starts no workers.
OPENMP_SPIN_COUNT = "10000"

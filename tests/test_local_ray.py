"""The local Ray instance `Reactor.start` runs: how it is configured for the runtime's actors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


def test_a_local_instance_keeps_its_workers_at_the_callers_priority(monkeypatch):
    import ray

    from reactor_rt import runtime

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert runtime._ensure_ray(None) is True
    assert calls[0]["_system_config"]["worker_niceness"] == 0  # Ray's default is 15


def test_a_local_instance_bounds_how_long_openmp_threads_spin(monkeypatch):
    import ray

    from reactor_rt import runtime

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    runtime._ensure_ray(None)
    assert os.environ["GOMP_SPINCOUNT"] == runtime.OPENMP_SPIN_COUNT  # for the processes ray.init starts
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    runtime._ensure_ray(None)
    assert os.environ["GOMP_SPINCOUNT"] == "5"  # the caller's own choice stays


def test_joining_a_cluster_leaves_its_openmp_settings_alone(monkeypatch):
    import ray

    from reactor_rt import runtime

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: None)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    runtime._ensure_ray("10.0.0.5:6379")
    assert "GOMP_SPINCOUNT" not in os.environ  # its workers run with the cluster's environment


@pytest.mark.skipif(not hasattr(os, "nice"), reason="process priorities are a POSIX notion")
def test_the_actors_of_a_local_instance_run_at_the_callers_niceness():
    """In a process of its own (one Ray instance per process; ~10 s): an actor started through the
    runtime's Ray set-up runs at the driver's niceness, not at Ray's background level, and its OpenMP
    threads spin briefly whatever OMP_WAIT_POLICY the caller has (PASSIVE here, as the tests run)."""
    script = textwrap.dedent("""
        import os, ray
        from reactor_rt.runtime import _ensure_ray
        _ensure_ray(None)

        @ray.remote(num_cpus=0)
        class Probe:
            def nice(self):
                return os.nice(0), os.environ.get("GOMP_SPINCOUNT")

        print("NICE", os.nice(0), *ray.get(Probe.remote().nice.remote()))
        ray.shutdown()
    """)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("RAY_ADDRESS", None)
    env.pop("GOMP_SPINCOUNT", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("NICE")), None)
    assert line is not None, out.stderr[-2000:]
    _, driver, actor, spin = line.split()
    assert actor == driver
    from reactor_rt.runtime import OPENMP_SPIN_COUNT

    assert spin == OPENMP_SPIN_COUNT

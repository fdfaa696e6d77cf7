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


@pytest.mark.skipif(not hasattr(os, "nice"), reason="process priorities are a POSIX notion")
def test_the_actors_of_a_local_instance_run_at_the_callers_niceness():
    """In a process of its own (one Ray instance per process; ~10 s): an actor started through the
    runtime's Ray set-up runs at the driver's niceness, not at Ray's background level."""
    script = textwrap.dedent("""
        import os, ray
        from reactor_rt.runtime import _ensure_ray
        _ensure_ray(None)

        @ray.remote(num_cpus=0)
        class Probe:
            def nice(self):
                return os.nice(0)

        print("NICE", os.nice(0), ray.get(Probe.remote().nice.remote()))
        ray.shutdown()
    """)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("NICE")), None)
    assert line is not None, out.stderr[-2000:]
    _, driver, actor = line.split()
    assert actor == driver

"""Shared fixtures: the anyio backend and one local Ray instance per test session (bound to loopback)."""

from __future__ import annotations

import os

# must be set before Ray is imported anywhere: bind to 127.0.0.1 only, no usage reporting
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# uvloop comes with the dev tools (for the local link's test under it), and Ray would then run every
# actor on it: the suite runs them on asyncio's own loop, as a plain install does
os.environ.setdefault("RAY_USE_UVLOOP", "0")

import shutil

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``@pytest.mark.cxx`` tests (torch.compile on a CPU) are skipped where no C++ compiler is found."""
    if any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return
    skip = pytest.mark.skip(reason="torch.compile on a CPU needs a C++ compiler")
    for item in items:
        if item.get_closest_marker("cxx") is not None:
            item.add_marker(skip)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (ray.init takes ~10 s): start it once, not per test."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    yield ray
    if started:
        ray.shutdown()

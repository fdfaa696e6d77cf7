"""Every example runs (on the bundled model, in the session's Ray)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = [pytest.mark.anyio, pytest.mark.ray]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_quickstart(ray_local):
    answers = await load("quickstart").main()
    assert len(answers) == 3 and "Tomi" in answers[-1]  # the bundled model remembers across turns


async def test_multi_stream(ray_local):
    module = load("multi_stream")
    results = await module.main(streams=4)
    assert sorted(results) == [f"user-{i}" for i in range(4)]
    for i in range(4):  # each stream recalls its own name, not another stream's
        assert module.NAMES[i] in results[f"user-{i}"], results


async def test_subscribe(ray_local):
    seen = await load("subscribe").main()
    assert len(seen) == 12
    assert {subject for subject, _ in seen} == {"carol", "dave"}
    for subject in ("carol", "dave"):
        types = [t for s, t in seen if s == subject]
        assert types == ["rx.response.done", "rx.memory.updating", "rx.memory.updated"] * 2


async def test_infinite_thoughts(ray_local):
    thoughts = await load("infinite_thoughts").main(steps=3)
    assert set(thoughts) == {"dreamer", "planner"}
    assert len(thoughts["dreamer"]) == 3  # the external query did not cost the loop a step


async def test_live_learning(ray_local):
    history = await load("live_learning").main(rounds=8)
    versions = [v for v, _ in history]
    assert versions == sorted(versions) and versions[0] == 0
    assert history[-1][1].strip() == "Paris."  # the correction became the answer

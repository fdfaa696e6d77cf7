"""The Ray engine's weights swap without Ray processes: a learner that restarted with nothing saved is
behind the weights serving; it takes them instead of moving serving back."""

from __future__ import annotations

import pytest
import torch

from reactor_rt.actors.engine import ActorSet, RayEngine

pytestmark = pytest.mark.anyio


class Call:
    """Stands in for an actor method: ``.remote(...)`` records its arguments and returns an awaitable."""

    def __init__(self, result=None) -> None:
        self.result = result
        self.args: list[tuple] = []

    def remote(self, *args):
        self.args.append(args)

        async def run():
            return self.result(*args) if callable(self.result) else self.result

        return run()


class Learner:
    def __init__(self, version: int, state: dict[str, torch.Tensor]) -> None:
        self.weights_since = Call(lambda since: (version, None if since == version else state))
        self.weights_version = Call(version)
        self.adopt = Call()


@pytest.fixture
def pushed(monkeypatch) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """The weights pushed to the model actors, in order (instead of pushing them)."""
    from reactor_rt.actors import engine as engine_module

    calls: list[tuple[int, dict[str, torch.Tensor]]] = []

    async def push(actors, version, state):
        calls.append((version, state))

    monkeypatch.setattr(engine_module, "push_weights", push)
    return calls


async def test_a_learner_behind_the_serving_weights_takes_them(pushed):
    serving = {"w": torch.full((2,), 3.0)}
    learner = Learner(0, {"w": torch.zeros(2)})  # back at version 0, the checkpoint's weights
    engine = RayEngine(ActorSet(decoder=None, encoder=None, memory=None, stm=None, learner=learner))
    engine.weights_version, engine._serving_state = 5, serving  # what the last swap pushed
    assert await engine.learner_behind()
    assert await engine.swap_weights() == 5  # serving stays where it was
    assert learner.adopt.args == [(5, serving)] and pushed == []


async def test_with_nothing_pushed_yet_the_learners_weights_serve(pushed):
    """Right after a conductor restart nothing was pushed by this engine: the learner's weights serve."""
    learner = Learner(3, {"w": torch.ones(2)})
    eng = RayEngine(ActorSet(decoder=None, encoder=None, memory=None, stm=None, learner=learner))
    assert not await eng.learner_behind()
    assert await eng.swap_weights() == 3
    assert [v for v, _ in pushed] == [3] and learner.adopt.args == []
    assert eng._serving_state is pushed[0][1]

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


class Ref:
    """Stands in for an ObjectRef: awaiting it gives the tensor, and is counted."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor, self.fetched = tensor, 0

    def __await__(self):
        self.fetched += 1
        yield from []
        return self.tensor


async def test_the_shared_initial_stm_is_fetched_once_for_every_new_memory():
    from reactor_rt.actors.handles import STMHandle, tensor_from_wire

    engine = RayEngine(ActorSet(decoder=None, encoder=None, memory=None, stm=None, learner=None))
    initial = Ref(torch.randn(2, 4, 8))
    for memory in ("a", "b", "c"):  # memories never written: one object under one token
        fields = await engine._stm_fields(STMHandle(memory, 0, initial, token="initial"))
        assert torch.equal(tensor_from_wire(fields), initial.tensor)
    assert initial.fetched == 1
    restarted = Ref(initial.tensor.clone())  # a restarted store puts it again, under a new token
    await engine._stm_fields(STMHandle("d", 0, restarted, token="initial-2"))
    assert restarted.fetched == 1

"""DecoderCore with the compiled one-row step (`Reactor.start(compile_decode=True)`)."""

from __future__ import annotations

import pytest

from reactor_rt.actors.decoder import DecoderCore
from reactor_rt.actors.handles import GenerateRequest, STMHandle

pytestmark = pytest.mark.cxx


def _answer(core: DecoderCore, prompt: list[int], budget: int) -> list[int]:
    tokens: list[int] = []
    core.submit(GenerateRequest(prompt, STMHandle("m", 0, None), max_new_tokens=budget), core.model.init_stm(1)[0],
                lambda new, done, error: tokens.extend(new))
    while core.busy:
        core.step()
    return tokens


def test_a_lone_answer_gets_the_eager_tokens(model):
    eager, compiled = DecoderCore(model, capacity=4), DecoderCore(model, capacity=4, compile=True)
    assert compiled.batch.compiled and not eager.batch.compiled
    for prompt in ([5, 6, 7], [9, 10, 11, 12, 13]):
        assert _answer(compiled, prompt, 24) == _answer(eager, prompt, 24)


def test_a_replaced_batch_is_compiled_too(model):
    core = DecoderCore(model, capacity=2, compile=True)
    core.submit(GenerateRequest([5, 6], STMHandle("m", 0, None), max_new_tokens=8), model.init_stm(1)[0],
                lambda *args: None)
    core.step()

    def broken(slot: int) -> None:
        raise RuntimeError("bookkeeping lost")

    core.batch.remove = broken  # type: ignore[method-assign]
    core.fail_step(RuntimeError("step failed"))
    assert core.batch.compiled and not core.busy
    assert len(_answer(core, [5, 6, 7], 6)) == 6

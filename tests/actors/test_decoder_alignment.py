"""DecoderCore's finish alignment: answers that end within a few steps of each other end together."""

from __future__ import annotations

import pytest
import torch

from reactor_rt.actors.decoder import DecoderCore
from reactor_rt.actors.handles import GenerateRequest, STMHandle


class Recorder:
    """Sinks that note each request's tokens and the step (by count) at which it was told it ended."""

    def __init__(self) -> None:
        self.step = 0
        self.tokens: dict[str, list[int]] = {}
        self.ended_at: dict[str, int] = {}
        self.errors: dict[str, BaseException] = {}

    def sink(self, name: str):
        self.tokens[name] = []

        def put(tokens: list[int], done: bool, error: BaseException | None) -> None:
            self.tokens[name].extend(tokens)
            if error is not None:
                self.errors[name] = error
            if done:
                self.ended_at[name] = self.step
        return put


def _core(model, align: int) -> DecoderCore:
    core = DecoderCore(model, capacity=4, align_finish_steps=align)
    core.batch.eos_id = -1  # answers end by their budgets alone: the steps they end at are known
    return core


def _run(core: DecoderCore, budgets: dict[str, int], rec: Recorder, steps: int = 40) -> None:
    stm = model_stm(core)
    for i, (name, budget) in enumerate(budgets.items()):
        core.submit(GenerateRequest([5 + i, 6, 7], STMHandle(f"m{name}", 0, None), max_new_tokens=budget), stm,
                    rec.sink(name))
    for _ in range(steps):
        if not core.busy:
            break
        rec.step += 1
        core.step()
    assert not core.busy


def model_stm(core: DecoderCore) -> torch.Tensor:
    return core.model.init_stm(1)[0]


def test_an_answer_waits_for_one_about_to_end_and_gets_the_same_tokens(model):
    # budgets 6 and 8: the first token comes with the step after the prefill, the last with step budget+1
    plain, aligned = Recorder(), Recorder()
    _run(_core(model, 0), {"a": 6, "b": 8}, plain)
    _run(_core(model, 4), {"a": 6, "b": 8}, aligned)
    assert plain.ended_at == {"a": 6, "b": 8}
    assert aligned.ended_at == {"a": 8, "b": 8}  # a waited two steps for b
    assert aligned.tokens == plain.tokens and len(aligned.tokens["a"]) == 6


def test_an_answer_does_not_wait_for_one_far_from_its_end(model):
    rec = Recorder()
    _run(_core(model, 4), {"a": 6, "b": 20}, rec)
    assert rec.ended_at == {"a": 6, "b": 20}


def test_the_wait_is_bounded_by_the_window(model):
    # a ends at 6 with b 3 steps from its end, and when b ends c is 3 steps from its own: a is let go
    # after its 4 steps, b waits for c
    rec = Recorder()
    _run(_core(model, 4), {"a": 6, "b": 9, "c": 12}, rec)
    assert rec.ended_at == {"a": 10, "b": 12, "c": 12}


def test_a_lone_answer_never_waits(model):
    rec = Recorder()
    _run(_core(model, 8), {"a": 5}, rec)
    assert rec.ended_at == {"a": 5}


def test_a_held_answer_that_is_cancelled_is_dropped(model):
    core, rec = _core(model, 4), Recorder()
    stm = model_stm(core)
    rid = core.submit(GenerateRequest([5, 6], STMHandle("ma", 0, None), max_new_tokens=3), stm, rec.sink("a"))
    core.submit(GenerateRequest([7, 8], STMHandle("mb", 0, None), max_new_tokens=5), stm, rec.sink("b"))
    for _ in range(3):
        core.step()
    assert core._held and "a" not in rec.ended_at  # a has ended and waits for b
    core.cancel(rid)
    while core.busy:
        core.step()
    assert "a" not in rec.ended_at and len(rec.tokens["a"]) == 2 and len(rec.tokens["b"]) == 5


def test_a_failed_step_ends_the_rows_in_it_but_delivers_the_held_answer(model):
    core, rec = _core(model, 4), Recorder()
    stm = model_stm(core)
    core.submit(GenerateRequest([5, 6], STMHandle("ma", 0, None), max_new_tokens=3), stm, rec.sink("a"))
    core.submit(GenerateRequest([7, 8], STMHandle("mb", 0, None), max_new_tokens=5), stm, rec.sink("b"))
    for _ in range(3):
        core.step()
    assert core._held
    core.fail_step(RuntimeError("boom"))
    assert "a" not in rec.errors and len(rec.tokens["a"]) == 3 and "a" in rec.ended_at
    assert isinstance(rec.errors["b"], RuntimeError) and not core.busy


def test_a_negative_window_is_refused(model):
    with pytest.raises(ValueError, match="align_finish_steps"):
        DecoderCore(model, capacity=1, align_finish_steps=-1)

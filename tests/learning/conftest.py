"""Fixtures for the live-learning tests: the tiny preset with nudged weights, an STM, a fake clock."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from reactor_rt.model import ReactiveTransformer, RxTConfig
from reactor_rt.template import build_prompt

QUERY = "What is the capital of France?"


def make_model(seed: int = 0) -> ReactiveTransformer:
    """The tiny preset with every weight nudged (no zero-initialised branch hides a path); greedy."""
    torch.manual_seed(seed)
    model = ReactiveTransformer(RxTConfig.preset("tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def make_stm(model: ReactiveTransformer, seed: int = 1) -> torch.Tensor:
    """A non-trivial STM (layers, slots, dim): the learned initial one plus noise."""
    g = torch.Generator().manual_seed(seed)
    base = model.init_stm(1)[0].detach()
    return base + 0.3 * torch.randn(base.shape, generator=g)


def greedy_answer(model: ReactiveTransformer, query: str, stm: torch.Tensor, max_new_tokens: int = 16) -> str:
    """The model's greedy answer to query reading stm (what serving would say)."""
    prompt = torch.tensor([build_prompt(model.tokenizer, query)])
    out = model.generate(prompt, stm[None], max_new_tokens=max_new_tokens)[0].tolist()
    return model.tokenizer.decode(out)


def snapshot(model: ReactiveTransformer) -> dict[str, torch.Tensor]:
    """Copies of every parameter, for bit-exact comparisons."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(model: ReactiveTransformer, before: dict[str, torch.Tensor]) -> set[str]:
    """Names of the parameters that are not bit-identical to `before`."""
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


class FakeClock:
    """A settable monotonic clock for the rate limit."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def model() -> ReactiveTransformer:
    return make_model()


@pytest.fixture
def stm(model: ReactiveTransformer) -> torch.Tensor:
    return make_stm(model)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def kit() -> SimpleNamespace:
    """The helpers above, for test modules (conftest is not importable by name under importlib mode)."""
    return SimpleNamespace(
        QUERY=QUERY,
        make_model=make_model,
        make_stm=make_stm,
        greedy_answer=greedy_answer,
        snapshot=snapshot,
        changed=changed,
    )

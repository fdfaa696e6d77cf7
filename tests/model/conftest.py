"""Shared fixtures of the model tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from reactor_rt.model import ReactiveTransformer, RxTConfig


def _perturbed(cfg: RxTConfig, seed: int = 0) -> ReactiveTransformer:
    torch.manual_seed(seed)
    m = ReactiveTransformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.fixture(scope="session")
def perturbed() -> Callable[..., ReactiveTransformer]:
    """``perturbed(cfg, seed=0)``: a model of ``cfg`` with every weight nudged (seeded), so that no
    zero-initialised branch hides a path."""
    return _perturbed

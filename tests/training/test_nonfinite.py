"""The loop skips a step whose loss or gradient is not finite, and stops a run that keeps producing them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from reactor_rt.errors import ReactorError, TrainingError
from reactor_rt.training.loop import MAX_NONFINITE_STREAK, OptimConfig, run_loop


def _model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 1)


def _finite_loss(model: nn.Linear, step: int) -> torch.Tensor:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
    return (model(x) - 1.0).pow(2).mean()


def _assert_finite(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), f"{name} has non-finite values"


@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_nan_loss_steps_are_skipped_and_weights_stay_finite(tmp_path, clip):
    model = _model()
    bad = {3, 7}

    def step_fn(step):
        loss = _finite_loss(model, step)
        if step in bad:
            loss = loss * float("nan")
        return loss, {"loss": float(loss.detach())}

    cfg = OptimConfig(steps=12, lr=1e-2, warmup=1, clip=clip)
    r = run_loop("nan", model, step_fn, cfg, checkpoint_dir=tmp_path, progress=False)
    _assert_finite(model)
    assert r.extra["nonfinite_steps"] == 2
    assert math.isfinite(r.first_loss) and math.isfinite(r.last_loss)
    saved = torch.load(tmp_path / "done.pt", weights_only=True)
    for k, v in saved["modules"]["model"].items():
        assert torch.isfinite(v).all(), k


def test_infinite_gradient_with_finite_loss_is_skipped():
    model = _model()

    def step_fn(step):
        loss = _finite_loss(model, step)
        if step == 2:
            s = model.weight.sum()
            loss = loss + torch.sqrt(s - s.detach())  # value 0, gradient +inf
            assert math.isfinite(float(loss.detach()))
        return loss, {}

    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = run_loop("inf", model, step_fn, OptimConfig(steps=5, lr=1e-2, warmup=1), progress=False)
    _assert_finite(model)
    assert r.extra["nonfinite_steps"] == 1
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # it still trained


def test_a_diverged_run_raises_training_error(tmp_path):
    model = _model()
    calls = []

    def step_fn(step):
        calls.append(step)
        loss = _finite_loss(model, step)
        return (loss if step < 2 else loss * float("nan")), {}

    with pytest.raises(TrainingError, match="consecutive") as info:
        run_loop("diverge", model, step_fn, OptimConfig(steps=50, lr=1e-2, warmup=1),
                 checkpoint_dir=tmp_path, progress=False)  # fmt: skip
    assert isinstance(info.value, ReactorError)
    assert len(calls) == 2 + MAX_NONFINITE_STREAK  # stopped at the limit, not at the end of the stage
    _assert_finite(model)
    assert not (tmp_path / "done.pt").exists()


def test_a_finite_step_resets_the_streak():
    model = _model()
    # MAX - 1 bad steps, one good, MAX - 1 bad again: never MAX in a row
    n = MAX_NONFINITE_STREAK - 1
    bad = set(range(1, 1 + n)) | set(range(2 + n, 2 + 2 * n))

    def step_fn(step):
        loss = _finite_loss(model, step)
        return (loss * float("nan") if step in bad else loss), {}

    r = run_loop("streak", model, step_fn, OptimConfig(steps=3 + 2 * n, lr=1e-2, warmup=1), progress=False)
    assert r.extra["nonfinite_steps"] == 2 * n
    _assert_finite(model)

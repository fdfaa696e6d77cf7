"""A stage checkpoint that cannot be read is a clear CheckpointError naming the file, not a torch traceback."""

from __future__ import annotations

import pytest
import torch

from reactor_rt.errors import CheckpointError, ReactorError
from reactor_rt.training.loop import OptimConfig, run_loop

CFG = OptimConfig(steps=6, lr=1e-2, warmup=1)


def _model(dim: int = 4) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(dim, 1)


def _step_fn(model, fail_at=None):
    def step(i):
        if i == fail_at:
            raise KeyboardInterrupt
        return model(torch.ones(2, model.in_features)).pow(2).mean(), {}

    return step


def _interrupted_run(tmp_path):
    m = _model()
    with pytest.raises(KeyboardInterrupt):
        run_loop("s", m, _step_fn(m, fail_at=4), CFG, checkpoint_dir=tmp_path, save_every=2, progress=False)
    assert (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_torn_last_checkpoint_is_a_checkpoint_error(tmp_path, damage):
    _interrupted_run(tmp_path)
    last = tmp_path / "last.pt"
    data = last.read_bytes()
    last.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint"}[damage])
    m = _model()
    with pytest.raises(CheckpointError, match=r"cannot resume from .*last\.pt.*--restart") as info:
        run_loop("s", m, _step_fn(m), CFG, checkpoint_dir=tmp_path, save_every=2, progress=False)
    assert isinstance(info.value, ReactorError)  # the CLI prints it as 'error: ...' without a traceback


def test_a_checkpoint_of_another_model_is_a_checkpoint_error(tmp_path):
    m = _model()
    run_loop("s", m, _step_fn(m), CFG, checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "done.pt").exists()
    other = _model(dim=5)
    with pytest.raises(CheckpointError, match=r"done\.pt"):
        run_loop("s", other, _step_fn(other), CFG, checkpoint_dir=tmp_path, progress=False)


def test_checkpoint_writes_leave_no_temporary_file(tmp_path):
    _interrupted_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    m = _model()
    run_loop("s", m, _step_fn(m), CFG, checkpoint_dir=tmp_path, save_every=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.pt"]

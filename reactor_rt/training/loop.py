"""The optimisation loop every stage shares: AdamW, warm-up + cosine, clipping, progress, checkpoints.

A stage supplies ``step_fn(step) -> (loss, stats)``; the loop does the rest. Data for a step is drawn
from a seed derived from (run seed, stage, step) — see `step_seed` — so a run resumed from a
checkpoint at step s draws exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
import os
import random
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog
import torch
from torch import Tensor, nn

from reactor_rt.errors import CheckpointError, TrainingError
from reactor_rt.fsync import fsync_directory

__all__ = [
    "MAX_NONFINITE_STREAK",
    "OptimConfig",
    "StageResult",
    "StepFn",
    "lr_at",
    "run_loop",
    "step_rng",
    "step_seed",
    "torch_generator",
]

log = structlog.get_logger()

StepFn = Callable[[int], tuple[Tensor, dict[str, float]]]

# A few non-finite steps in a row are skipped (a rare overflow); this many mean the run has diverged.
MAX_NONFINITE_STREAK = 10


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``."""

    steps: int
    lr: float = 1.5e-3
    warmup: int = 50
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    clip: float = 1.0


@dataclass
class StageResult:
    """What one stage did: losses at the start and end (means over a window), time, extra figures."""

    name: str
    steps: int
    first_loss: float
    last_loss: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)  # stats, mean of the last window
    first_extra: dict[str, Any] = field(default_factory=dict)  # stats, mean of the first window

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        extra = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.extra.items()
        )
        return (
            f"{self.name}: {self.steps} steps in {self.seconds:.0f}s, "
            f"loss {self.first_loss:.4f} -> {self.last_loss:.4f} {extra}".rstrip()
        )


def step_seed(seed: int, stage: str, step: int) -> int:
    """A 31-bit seed that depends only on (run seed, stage name, step)."""
    return zlib.crc32(f"{seed}/{stage}/{step}".encode()) & 0x7FFFFFFF


def step_rng(seed: int, stage: str, step: int) -> random.Random:
    return random.Random(step_seed(seed, stage, step))


def torch_generator(seed: int, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, stage, step))


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then cosine to ``min_lr_ratio``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    ratio = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * ratio


def make_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; 1-D parameters (norm weights, biases, gates) get no weight decay."""
    params = list(params)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def _save_atomic(obj: Any, path: Path) -> None:
    """Write ``path`` whole or not at all: a crash leaves the previous checkpoint, never a torn one."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())  # the bytes on disk before the rename makes them the checkpoint
    os.replace(tmp, path)
    fsync_directory(path.parent)


def _load_checkpoint(path: Path, restore: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read a stage checkpoint and ``restore`` from it; any failure is a `CheckpointError` naming the file.

    A torn or foreign file (a crash on a file system without durable renames, a run of another model)
    otherwise surfaced as a bare unpickling, EOF or state-dict error from deep inside torch.
    """
    try:
        state = torch.load(path, weights_only=True)  # only tensors and plain containers are stored
        restore(state)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"cannot resume from {path}: {type(exc).__name__}: {reason}. Delete that file to redo the stage "
            "from its start, or start the run over (--restart / --no-resume)"
        ) from exc
    return state


def run_loop(
    name: str,
    model: nn.Module,
    step_fn: StepFn,
    cfg: OptimConfig,
    *,
    params: Iterable[nn.Parameter] | None = None,
    checkpoint_dir: str | Path | None = None,
    save_every: int = 0,
    resume: bool = True,
    progress: bool = True,
    before_step: Callable[[int], None] | None = None,
    extra_modules: dict[str, nn.Module] | None = None,
    finalize: Callable[[StageResult], None] | None = None,
) -> StageResult:
    """Run ``cfg.steps`` optimisation steps of one stage.

    ``checkpoint_dir``: where ``last.pt`` (every ``save_every`` steps) and ``done.pt`` (at the end) go;
    with ``resume`` a finished stage is loaded and skipped, an unfinished one continues from
    ``last.pt``. ``before_step(step)`` may change which parameters train (gradual unfreezing).
    ``extra_modules`` (e.g. a critic) are optimised and checkpointed with the model. ``finalize``
    may add figures to the result (e.g. an evaluation) before it is saved with ``done.pt``.

    A step whose loss or gradient norm is not finite is skipped (no optimiser step, a warning, counted
    in ``extra["nonfinite_steps"]``), so one overflow cannot turn every weight to NaN and be saved;
    `MAX_NONFINITE_STREAK` such steps in a row raise `TrainingError`.
    """
    from tqdm.auto import tqdm

    extra_modules = extra_modules or {}
    all_params = list(params) if params is not None else list(model.parameters())
    for module in extra_modules.values():
        all_params += list(module.parameters())
    opt = make_optimizer(all_params, cfg)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start, losses, stats_log, elapsed = 0, [], [], 0.0
    skipped, streak = 0, 0  # non-finite steps: in total, and in a row

    def modules_state() -> dict[str, Any]:
        return {"model": model.state_dict(), **{k: m.state_dict() for k, m in extra_modules.items()}}

    def load_modules(state: dict[str, Any]) -> None:
        model.load_state_dict(state["model"])
        for k, m in extra_modules.items():
            m.load_state_dict(state[k])

    if ckpt_dir is not None and resume:
        done = ckpt_dir / "done.pt"
        last = ckpt_dir / "last.pt"
        # the loop's checkpoints hold only tensors and plain containers/numbers/strings
        if done.exists():

            def restore_done(state: dict[str, Any]) -> None:
                load_modules(state["modules"])
                state["result"] = StageResult(**state["result"])

            state = _load_checkpoint(done, restore_done)
            log.info("stage already done, loaded", stage=name)
            return state["result"]
        if last.exists():

            def restore_last(state: dict[str, Any]) -> None:
                load_modules(state["modules"])
                opt.load_state_dict(state["optimizer"])

            state = _load_checkpoint(last, restore_last)
            start, losses, stats_log, elapsed = (
                state["step"],
                state["losses"],
                state["stats"],
                state["seconds"],
            )
            skipped = state.get("nonfinite_steps", 0)
            log.info("stage resumed", stage=name, step=start)

    model.train()
    t0 = time.perf_counter() - elapsed
    bar = tqdm(
        total=cfg.steps, initial=start, desc=name, disable=not progress, dynamic_ncols=True, leave=True
    )
    for step in range(start, cfg.steps):
        if before_step is not None:
            before_step(step)
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, stats = step_fn(step)
        opt.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        grad_norm = float("nan")
        if math.isfinite(loss_value):
            loss.backward()
            grad_norm = _grad_norm([p for p in all_params if p.grad is not None], cfg.clip)
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            opt.zero_grad(set_to_none=True)  # drop the bad gradients; the weights stay as they were
            skipped, streak = skipped + 1, streak + 1
            log.warning(
                "non-finite step skipped", stage=name, step=step, loss=loss_value, grad_norm=grad_norm
            )
            if streak >= MAX_NONFINITE_STREAK:
                raise TrainingError(
                    f"stage {name!r}: {streak} consecutive steps with a non-finite loss or gradient "
                    f"(last at step {step}, loss {loss_value}, grad norm {grad_norm}); training diverged"
                    " — lower the learning rate or check the data"
                )
        else:
            streak = 0
            opt.step()
            losses.append(loss_value)
            stats_log.append(stats)
            window = losses[-20:]
            bar.set_postfix(loss=f"{sum(window) / len(window):.3f}", lr=f"{lr:.2e}", refresh=False)
        bar.update(1)
        if ckpt_dir is not None and save_every and (step + 1) % save_every == 0 and step + 1 < cfg.steps:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            _save_atomic(
                {
                    "modules": modules_state(),
                    "optimizer": opt.state_dict(),
                    "step": step + 1,
                    "losses": losses,
                    "stats": stats_log,
                    "seconds": time.perf_counter() - t0,
                    "nonfinite_steps": skipped,
                },
                ckpt_dir / "last.pt",
            )
    bar.close()
    model.eval()
    window = max(1, min(20, len(losses) // 5))
    result = StageResult(
        name=name,
        steps=cfg.steps,
        first_loss=sum(losses[:window]) / window if losses else float("nan"),
        last_loss=sum(losses[-window:]) / window if losses else float("nan"),
        seconds=time.perf_counter() - t0,
        extra=_mean_stats(stats_log[-window:]),
        first_extra=_mean_stats(stats_log[:window]),
    )
    if skipped:
        result.extra["nonfinite_steps"] = skipped
    if finalize is not None:
        finalize(result)
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _save_atomic({"modules": modules_state(), "result": result.as_dict()}, ckpt_dir / "done.pt")
        (ckpt_dir / "last.pt").unlink(missing_ok=True)
    log.info("stage done", stage=name, summary=result.line())
    return result


def _grad_norm(params: list[nn.Parameter], clip: float) -> float:
    """The total gradient norm before clipping; clips to ``clip`` when it is > 0."""
    if not params:
        return 0.0
    if clip > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, clip))
    return float(torch.nn.utils.get_total_norm([p.grad for p in params]))


def _mean_stats(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / max(1, sum(k in r for r in rows)) for k in sorted(keys)}

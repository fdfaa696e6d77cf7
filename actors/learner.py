"""The learner: turns feedback into live-learning updates and hands out the versioned weights.

The work is `reactor_rt.learning.LiveLearner`; `LearnerCore` adds persistence (each accepted update is
saved before its result is returned, so an `rx.learning.applied` announced from it survives a restart)
and the actor is a thin shell over it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
import structlog
import torch

from reactor_rt.errors import CheckpointError
from reactor_rt.learning import LearningExample, LearningResult, LiveLearner, saved_version
from reactor_rt.learning.learner import LearnerSnapshot
from reactor_rt.learning.persistence import STATE_FILE, VERSIONS_DIR, DamagedLearnerFile
from reactor_rt.model import ReactiveTransformer

__all__ = ["LearnerActor", "LearnerActorImpl", "LearnerCore"]

log = structlog.get_logger()


class LearnerCore:
    """A LiveLearner over `model` (changed in place), saved to `save_dir` after every change.

    save_dir: where the learned weights live; a directory holding a saved learner is loaded at start,
    so a restarted runtime keeps what was learned. None: nothing is persisted. options: LiveLearner's
    keyword arguments (params, lr, steps_per_feedback, max_updates_per_minute, ...).
    """

    def __init__(self, model: ReactiveTransformer, save_dir: str | Path | None = None, **options: Any) -> None:
        self.learner = LiveLearner(model, **options)
        self.save_dir = Path(save_dir) if save_dir is not None else None
        if self.save_dir is not None:
            self._load(self.save_dir)

    def _load(self, directory: Path) -> None:
        """Load what was learned before. A state file damaged on disk (unreadable, or NaN/inf weights)
        is put aside as ``learner.safetensors.damaged`` and the newest kept version is loaded instead
        (its weights; the optimizer moments start over); a state file for another model or parameter
        set is an error, as is damage with no usable kept version."""
        try:
            if saved_version(directory) is not None:
                self.learner.load(directory)
            return
        except DamagedLearnerFile as exc:
            damage = exc
        version = self.learner.load_kept_version(directory)
        if version is None:
            raise CheckpointError(f"{damage}; no kept version under {directory / VERSIONS_DIR} is usable either "
                                  "(move the directory away to start from the checkpoint's weights)") from damage
        state = directory / STATE_FILE
        state.replace(state.with_name(STATE_FILE + ".damaged"))  # kept for a look; the next save writes anew
        log.error("learner.state_damaged_recovered", error=str(damage)[:500], version=version)

    @property
    def weights_version(self) -> int:
        """The current weights version."""
        return self.learner.weights_version

    def apply(self, example: LearningExample) -> LearningResult:
        """One update (or a rejection); an accepted one is on disk when this returns.

        When saving it fails, the update is undone (weights, optimizer, version, kept versions, baseline)
        before the error propagates: an update reported as failed never reaches serving.
        """
        if self.save_dir is None:
            return self.learner.apply(example)
        with self.learner.locked():  # nothing reads the weights between the update and its undo
            # not snapshot(): a full copy of weights and optimizer state for every feedback, the ones the
            # rate limit drops included, made a flood of feedback as costly as that many updates' copies
            result, before = self.learner.apply_undoable(example)
            if result.accepted:
                self._persist(before)
            return result

    def weights(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(version, the changed parameters by name), read together."""
        return self.learner.weights()

    def weights_since(self, version: int) -> tuple[int, dict[str, torch.Tensor] | None]:
        """Like `weights`, but None in place of the state when `version` is still the current one."""
        if version == self.learner.weights_version:
            return version, None
        return self.learner.weights()

    def adopt(self, version: int, state: dict[str, torch.Tensor]) -> None:
        """`LiveLearner.adopt`, saved (put back when saving fails)."""
        with self.learner.locked():
            before = self.learner.snapshot() if self.save_dir is not None else None
            self.learner.adopt(version, state)
            self._persist(before)

    def rollback(self, version: int) -> int:
        """Return to a kept earlier version's weights as a new version (saved); ValueError if not kept."""
        with self.learner.locked():
            before = self.learner.snapshot() if self.save_dir is not None else None
            new = self.learner.rollback(version)
            self._persist(before)
            return new

    def _persist(self, before: LearnerSnapshot | None) -> None:
        """Save the learner; on any failure put `before` back, then raise (CheckpointError for I/O)."""
        if self.save_dir is None:
            return
        assert before is not None
        try:
            self.learner.save(self.save_dir)
        except BaseException as exc:
            self.learner.restore(before)
            if isinstance(exc, OSError):
                raise CheckpointError(f"cannot save the learned weights to {self.save_dir}: {exc}") from exc
            raise


class LearnerActorImpl:
    """Ray actor named ``learner``. Calls run one at a time (a plain actor), so an update and a weights
    read never interleave."""

    def __init__(
        self, model: ReactiveTransformer, save_dir: str | None = None, threads: int = 1, **options: Any
    ) -> None:
        torch.set_num_threads(threads)
        self.core = LearnerCore(model, save_dir, **options)

    def apply(self, example: LearningExample) -> LearningResult:
        return self.core.apply(example)

    def weights(self) -> tuple[int, dict[str, torch.Tensor]]:
        return self.core.weights()

    def weights_since(self, version: int) -> tuple[int, dict[str, torch.Tensor] | None]:
        return self.core.weights_since(version)

    def weights_version(self) -> int:
        return self.core.weights_version

    def rollback(self, version: int) -> int:
        return self.core.rollback(version)

    def adopt(self, version: int, state: dict[str, torch.Tensor]) -> None:
        self.core.adopt(version, state)

    def ping(self) -> bool:
        return True


LearnerActor = ray.remote(LearnerActorImpl)

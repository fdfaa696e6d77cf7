"""LiveLearner: turns feedback on one interaction into a few guarded gradient steps on the model.

Every update is all-or-nothing: the trainable parameters and the optimizer state are copied before the
first step, and any failure (NaN/inf loss or gradient, a loss that grew past `max_loss_ratio`, or an
exception raised mid-update, which then propagates) puts both back exactly, so the served weights only
ever move by accepted updates. Accepted updates bump `weights_version`; the last `keep_versions` versions
are kept for `rollback`.

The learner changes `model` in place. A runtime that serves from another copy takes the changed
parameters with `state_dict_for_serving()` and swaps them in between interactions
(`apply_serving_state`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
import torch
from torch import Tensor

from reactor_rt.errors import CheckpointError
from reactor_rt.learning.example import LearningExample, LearningResult
from reactor_rt.learning.objectives import (
    AnswerBatch,
    RunningBaseline,
    answer_batch,
    answer_nll,
    read_stm,
    source_ids,
)
from reactor_rt.learning.params import ParamSet, select_parameters
from reactor_rt.learning.persistence import (
    STATE_FILE,
    VERSIONS_DIR,
    DamagedLearnerFile,
    read_tensors,
    version_files,
    write_tensors,
)
from reactor_rt.learning.rate_limit import TokenBucket
from reactor_rt.model import ReactiveTransformer

__all__ = ["LearnerSnapshot", "LiveLearner"]

log = structlog.get_logger()


def _non_finite(weights: dict[str, Tensor]) -> list[str]:
    """Names of tensors with NaN/inf values (safetensors has no checksum: damage that decodes as NaN/inf
    would otherwise be served)."""
    return [n for n, t in weights.items() if not torch.isfinite(t).all()]


def _lineage_and_baseline(meta: dict[str, str], file: Path) -> tuple[str, tuple[float, int]]:
    """A saved file's lineage and reward baseline (value, count); CheckpointError when missing or bad."""
    try:
        return meta["lineage"], (float(meta["baseline"]), int(meta["baseline_count"]))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{file} has bad metadata: {exc!r}") from exc


@dataclass(frozen=True)
class LearnerSnapshot:
    """A LiveLearner's state at one moment (see `LiveLearner.snapshot`)."""

    params: dict[str, Tensor]
    optimizer: dict
    version: int
    history: OrderedDict[int, dict[str, Tensor]]
    baseline: tuple[float, int]


def _lineage_of(file: Path) -> str | None:
    """The lineage a version file was written by; None when it cannot be read (it is rewritten then: a
    damaged rollback target must not make every later save fail)."""
    try:
        return read_tensors(file, metadata_only=True)[1].get("lineage")
    except CheckpointError:
        return None


class LiveLearner:
    """Live learning over one parameter set of `model`, with its own AdamW state.

    Args:
        params: "decoder" (default), "memory" or "all" (see `reactor_rt.learning.params`).
        lr: AdamW's learning rate. A reward step uses lr * min(1, |reward - baseline|): Adam
            normalises the gradient's scale away, so the advantage's size has to act on the step. The
            objective weighs the answer's NLL by the advantage clamped to [-1, 1] likewise.
        weight_decay: 0 by default: decay applied on every live update would slowly erode the trained
            weights rather than regularise a fit.
        clip: max gradient norm per step (None: no clipping).
        steps_per_feedback: gradient steps on each example.
        max_updates_per_minute, burst: the token bucket (None: unlimited; burst defaults to ten
            seconds' worth).
        max_loss_ratio, loss_floor: reject when loss_after > max_loss_ratio * max(loss_before,
            loss_floor). The floor keeps an already-small loss from turning every rise into a rejection
            (a negative reward raises the answer's loss on purpose).
        aux_weight: the MoE load-balancing term in the objective (keeps the router from collapsing onto
            a few experts under many small updates).
        baseline_momentum: the REINFORCE baseline's moving average (starts at 0).
        keep_versions: versions kept for `rollback`, the current one included.
        clock: seconds, for the rate limit (tests pass a fake).
    """

    def __init__(
        self,
        model: ReactiveTransformer,
        *,
        params: ParamSet = "decoder",
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        clip: float | None = 1.0,
        steps_per_feedback: int = 4,
        max_updates_per_minute: float | None = 60.0,
        burst: int | None = None,
        max_loss_ratio: float = 2.0,
        loss_floor: float = 1.0,
        aux_weight: float = 0.01,
        baseline_momentum: float = 0.9,
        keep_versions: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if steps_per_feedback < 1:
            raise ValueError(f"steps_per_feedback must be >= 1, got {steps_per_feedback}")
        # written as "not ... > 0": a NaN limit compares False with everything, and silently turned the
        # loss guard off (loss_after > NaN never holds)
        if not (max_loss_ratio > 0 and math.isfinite(max_loss_ratio)):
            raise ValueError(f"max_loss_ratio must be a finite number > 0, got {max_loss_ratio}")
        if not (loss_floor >= 0 and math.isfinite(loss_floor)):
            raise ValueError(f"loss_floor must be a finite number >= 0, got {loss_floor}")
        if clip is not None and not (clip > 0 and math.isfinite(clip)):
            raise ValueError(f"clip must be a finite number > 0 or None, got {clip}")
        if not (aux_weight >= 0 and math.isfinite(aux_weight)):
            raise ValueError(f"aux_weight must be a finite number >= 0, got {aux_weight}")
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
        self.model = model
        self.params = params
        self._params = select_parameters(model, params)  # name -> Parameter
        for p in self._params.values():
            # a model frozen for inference (requires_grad_(False)) made every update fail in autograd
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(
            list(self._params.values()), lr=lr, betas=betas, weight_decay=weight_decay
        )
        self.lr = lr
        self.clip = clip
        self.steps_per_feedback = steps_per_feedback
        self.max_loss_ratio, self.loss_floor = max_loss_ratio, loss_floor
        self.aux_weight = aux_weight
        self.baseline = RunningBaseline(baseline_momentum)
        self.bucket = TokenBucket(max_updates_per_minute, burst, clock)
        self.keep_versions = keep_versions
        # the STM is re-derived through the memory update only when memory parameters can learn from it
        self._through_memory = params in ("memory", "all")
        self._version = 0
        self._lineage = uuid.uuid4().hex  # tells this learner's version files from another's in one dir
        self._history: OrderedDict[int, dict[str, Tensor]] = OrderedDict()
        self._remember()
        self._undo: LearnerSnapshot | None = None  # set by an accepted update under apply_undoable
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- state
    @property
    def weights_version(self) -> int:
        """The current weights version: 0 at the start, +1 per accepted update or rollback."""
        return self._version

    @property
    def kept_versions(self) -> list[int]:
        """The versions `rollback` can return to, oldest first (the current one last)."""
        return list(self._history)

    def parameter_names(self) -> list[str]:
        """Names of the parameters this learner may change."""
        return list(self._params)

    def state_dict_for_serving(self) -> dict[str, Tensor]:
        """Copies of the trainable parameters (the only ones live learning changes), by name."""
        with self._lock:
            return {n: p.detach().clone() for n, p in self._params.items()}

    def weights(self) -> tuple[int, dict[str, Tensor]]:
        """(weights_version, state_dict_for_serving()) read together, so the two always match."""
        with self._lock:
            return self._version, self.state_dict_for_serving()

    @torch.no_grad()
    def loss(self, example: LearningExample) -> float:
        """The example's current answer NLL (what loss_before/loss_after report); no update."""
        with self._lock:  # never the weights of an update half-way through its steps
            batch = answer_batch(self.model, example)
            return float(answer_nll(self.model, batch, read_stm(self.model, example, self._through_memory))[0])

    # ---------------------------------------------------------------- updates
    def apply(self, example: LearningExample) -> LearningResult:
        """Take `steps_per_feedback` guarded steps on one example; see `LearningResult`."""
        with self._lock:
            return self._apply(example)

    def apply_undoable(self, example: LearningExample) -> tuple[LearningResult, LearnerSnapshot | None]:
        """Like `apply`, also returning, for an accepted update, the state just before it: what `restore`
        needs to undo it should what follows fail (saving it). Built from the copies every update takes
        anyway, so feedback that is rejected (rate_limited, ...) copies nothing, unlike `snapshot`."""
        with self._lock:
            self._undo = None
            try:
                result = self._apply(example, keep_undo=True)
                return result, self._undo if result.accepted else None
            finally:
                self._undo = None

    def _apply(self, example: LearningExample, keep_undo: bool = False) -> LearningResult:
        # validate first: feedback that is rejected anyway must not spend the rate limit's tokens
        self._check_stm(example)
        batch = answer_batch(self.model, example)
        if batch.length - 1 > self.model.config.max_seq_len:
            return self._reject(
                "too_long",
                f"{batch.length} tokens exceed max_seq_len {self.model.config.max_seq_len}",
                example,
            )
        source = source_ids(self.model, example) if self._through_memory else None  # (1, T) or None
        if source is not None and source.shape[1] > self.model.config.max_seq_len:
            # the encoder refused it only at the first step, after the rate limit's token was spent
            return self._reject(
                "too_long",
                f"the interaction that wrote the STM has {source.shape[1]} tokens, over max_seq_len "
                f"{self.model.config.max_seq_len}",
                example,
            )
        if not bool(batch.target.any()):
            return self._reject("no_signal", "an empty answer cut short: no token to learn from", example)
        if self.params == "memory" and example.source is None:
            return self._reject(
                "no_memory_path", "params='memory' needs the interaction that wrote the STM", example
            )
        advantage = None
        if example.correction is None:
            assert example.reward is not None
            if not math.isfinite(example.reward):
                return self._reject("non_finite_loss", f"reward is {example.reward}", example)
            advantage = self.baseline.advantage(example.reward)
            if advantage == 0.0:
                return self._reject("no_signal", "reward equals the running baseline", example)
        if not self.bucket.take():
            return self._reject("rate_limited", "too many updates per minute; feedback dropped", example)
        # Adam normalises the gradient's scale away, so |advantage| would barely matter; scale the step
        # size by it instead (capped at 1: a full-size step, as for a correction)
        scale = 1.0 if advantage is None else min(1.0, abs(advantage))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * scale
        # in the objective too, only the sign and that capped size: a huge reward (1e6) otherwise filled
        # Adam's second moment with its square, freezing later updates (with clip=None), or overflowed the
        # gradient norm (1e20) and was rejected as non_finite_grad
        weight = None if advantage is None else max(-1.0, min(1.0, advantage))
        try:
            return self._steps(example, batch, weight, keep_undo)
        finally:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr

    def _steps(
        self, example: LearningExample, batch: AnswerBatch, advantage: float | None, keep_undo: bool
    ) -> LearningResult:
        saved_params = {n: p.detach().clone() for n, p in self._params.items()}
        saved_optimizer = copy.deepcopy(self.optimizer.state_dict())
        saved_version, saved_history = self._version, OrderedDict(self._history)
        saved_baseline = (self.baseline.value, self.baseline.count)
        names, params = list(self._params), list(self._params.values())
        loss_before = math.nan

        def undo(reason: str, detail: str, loss_after: float = math.nan, steps: int = 0) -> LearningResult:
            self._restore(saved_params, saved_optimizer)
            return self._reject(reason, detail, example, loss_before, loss_after, steps)

        try:
            for step in range(self.steps_per_feedback):
                stm = read_stm(self.model, example, self._through_memory)
                nll, aux = answer_nll(self.model, batch, stm)
                objective = (nll if advantage is None else advantage * nll) + self.aux_weight * aux
                if step == 0:
                    loss_before = float(nll.detach())
                if not torch.isfinite(objective):
                    return undo("non_finite_loss", f"loss is {float(objective.detach())} at step {step + 1}", steps=step)
                grads = torch.autograd.grad(objective, params, allow_unused=True)
                used = [p for p, g in zip(params, grads, strict=True) if g is not None]
                if not used:
                    return undo("no_signal", f"no gradient reaches the {self.params} parameters", steps=step)
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                norm = torch.nn.utils.clip_grad_norm_(used, self.clip if self.clip is not None else math.inf)
                if not torch.isfinite(norm):
                    return undo("non_finite_grad", f"gradient norm is {float(norm)} at step {step + 1}", steps=step)
                self.optimizer.step()
                for p in params:
                    p.grad = None
            loss_after = self.loss(example)
        except BaseException:
            # an unexpected failure (out of memory mid-backward, a bad optimizer state) must not leave
            # the steps already taken in the weights: the next accepted update would serve them
            self._restore(saved_params, saved_optimizer)
            raise
        steps = self.steps_per_feedback
        if not math.isfinite(loss_after):
            return undo("non_finite_loss", f"loss after the update is {loss_after}", loss_after, steps)
        limit = self.max_loss_ratio * max(loss_before, self.loss_floor)
        if loss_after > limit:
            return undo(
                "loss_exploded",
                f"loss {loss_before:.4g} -> {loss_after:.4g} (limit {limit:.4g})",
                loss_after,
                steps,
            )
        if keep_undo:
            for group in saved_optimizer["param_groups"]:
                group["lr"] = self.lr  # copied while this update's step size was scaled
            self._undo = LearnerSnapshot(saved_params, saved_optimizer, saved_version, saved_history, saved_baseline)
        if advantage is not None:
            assert example.reward is not None
            self.baseline.update(example.reward)
        self._version += 1
        self._remember()
        log.info(
            "learning.applied",
            version=self._version,
            kind=example.kind,
            target=example.target,
            loss_before=round(loss_before, 4),
            loss_after=round(loss_after, 4),
            names=len(names),
        )
        return LearningResult(
            self._version, loss_before, loss_after, True, None, None, example.kind, steps, example.target
        )

    def _reject(
        self,
        reason: str,
        detail: str,
        example: LearningExample,
        loss_before: float = math.nan,
        loss_after: float = math.nan,
        steps: int = 0,
    ) -> LearningResult:
        log.warning("learning.rejected", reason=reason, detail=detail, target=example.target)
        return LearningResult.rejected(self._version, reason, detail, example, loss_before, loss_after, steps)

    def _check_stm(self, example: LearningExample) -> None:
        c = self.model.config
        want = (c.layers, c.stm_slots, c.dim)
        if tuple(example.stm.shape) != want:
            raise ValueError(f"example stm must be {want}, got {tuple(example.stm.shape)}")
        if example.source is not None and tuple(example.source.stm_before.shape) != want:
            raise ValueError(f"source stm_before must be {want}, got {tuple(example.source.stm_before.shape)}")

    @torch.no_grad()
    def _restore(self, saved: dict[str, Tensor], optimizer_state: dict) -> None:
        for name, p in self._params.items():
            p.copy_(saved[name])
            p.grad = None
        self.optimizer.load_state_dict(optimizer_state)

    def _remember(self) -> None:
        self._history[self._version] = {n: p.detach().clone() for n, p in self._params.items()}
        while len(self._history) > self.keep_versions:
            self._history.popitem(last=False)

    def locked(self) -> contextlib.AbstractContextManager[object]:
        """Hold the learner (re-entrant) across several calls, e.g. an update, its save and, should the
        save fail, its undo: nothing reads or changes the weights in between."""
        return self._lock

    def snapshot(self) -> LearnerSnapshot:
        """Everything `apply` and `rollback` change (weights, optimizer state, version, kept versions,
        baseline), for `restore` when what follows the update (saving it) fails."""
        with self._lock:
            return LearnerSnapshot(
                params={n: p.detach().clone() for n, p in self._params.items()},
                optimizer=copy.deepcopy(self.optimizer.state_dict()),
                version=self._version,
                history=OrderedDict(self._history),  # kept tensors are never changed in place
                baseline=(self.baseline.value, self.baseline.count),
            )

    def restore(self, snapshot: LearnerSnapshot) -> None:
        """Put back exactly the state `snapshot` took: the update(s) since then never happened."""
        with self._lock:
            self._restore(snapshot.params, snapshot.optimizer)
            self._version = snapshot.version
            self._history = OrderedDict(snapshot.history)
            self.baseline.value, self.baseline.count = snapshot.baseline
            log.warning("learning.restored", version=self._version)

    # ---------------------------------------------------------------- versions
    def rollback(self, version: int) -> int:
        """Restore the weights of a kept earlier version, as a *new* version (returned).

        Versions only grow, so "is this newer?" stays a plain comparison for whoever serves them. The
        optimizer's moments belong to the abandoned updates and are reset. ValueError for a version that
        is not kept (see `kept_versions`).
        """
        with self._lock:
            if version not in self._history:
                raise ValueError(f"weights version {version} is not kept; kept: {list(self._history)}")
            with torch.no_grad():
                for name, p in self._params.items():
                    p.copy_(self._history[version][name])
            self.optimizer.state.clear()
            self._version += 1
            self._remember()
            log.info("learning.rollback", to=version, version=self._version)
            return self._version

    def adopt(self, version: int, state: dict[str, Tensor]) -> None:
        """Take ``state`` (the parameters `weights` names) as the weights of ``version``: for a learner
        that came back behind the weights being served (it restarted with nothing saved), so that
        versions never go backwards and what was learned is kept. The optimizer starts afresh; only this
        version is kept. ValueError (nothing changed) for a version not ahead of this learner's, or a
        state that is not those parameters: the same names and shapes, finite values."""
        with self._lock:
            if version <= self._version:
                raise ValueError(f"version {version} is not ahead of this learner's ({self._version})")
            problem = self._weights_problem(state)
            if problem is not None:
                raise ValueError(f"the state to adopt {problem}")
            self._install(state, version, OrderedDict())
            log.warning("learning.adopted", version=version)

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Persist weights, version, optimizer state, baseline and the kept versions (safetensors).

        The state file is written last (atomically, by rename): a save that fails before it leaves the
        directory loading as the previously saved version. Old version files are pruned after it, best
        effort.
        """
        with self._lock:
            path = Path(directory)
            tensors: dict[str, Tensor] = {}
            for name, p in self._params.items():
                tensors[f"param/{name}"] = p
                state = self.optimizer.state.get(p)
                if state:
                    tensors[f"exp_avg/{name}"] = state["exp_avg"]
                    tensors[f"exp_avg_sq/{name}"] = state["exp_avg_sq"]
                    tensors[f"step/{name}"] = torch.as_tensor(state["step"], dtype=torch.float32).reshape(1)
            on_disk = version_files(path)
            for version, weights in self._history.items():
                existing = on_disk.get(version)
                # the current version's file is always rewritten: a failed earlier save may have left one
                # of the same number and lineage holding an update that was undone
                if version == self._version or existing is None or _lineage_of(existing) != self._lineage:
                    file = path / VERSIONS_DIR / f"v{version}.safetensors"
                    write_tensors(file, weights, self._metadata(version))
            write_tensors(path / STATE_FILE, tensors, self._metadata(self._version))
            for version, file in on_disk.items():
                if version not in self._history:
                    try:
                        file.unlink(missing_ok=True)
                    except OSError as exc:  # the new state is saved; a stale file only wastes space
                        log.warning("learning.prune_failed", file=str(file), error=str(exc))
            return path

    def load(self, directory: str | Path) -> int:
        """Restore what `save` wrote (into this learner's model); returns the weights version.

        CheckpointError when the directory holds no learner state, or one for another parameter set or
        model shape; nothing is changed then.
        """
        with self._lock:
            path = Path(directory)
            tensors, meta = read_tensors(path / STATE_FILE)
            weights = self._checked_weights(tensors, meta, path / STATE_FILE)
            try:
                version = int(meta["weights_version"])
            except (KeyError, ValueError) as exc:
                raise CheckpointError(f"{path / STATE_FILE} has bad metadata: {exc!r}") from exc
            lineage, baseline = _lineage_and_baseline(meta, path / STATE_FILE)
            moments = self._checked_moments(tensors, path / STATE_FILE)
            history: OrderedDict[int, dict[str, Tensor]] = OrderedDict()
            for older_version, file in sorted(version_files(path).items()):
                if older_version >= version:
                    continue
                # a bad history file costs only that rollback target, never the learned state
                try:
                    older, older_meta = read_tensors(file)
                    if older_meta.get("lineage") == lineage:
                        history[older_version] = self._checked_weights(older, older_meta, file, prefix="")
                except CheckpointError as exc:
                    log.warning("learning.history_skipped", file=str(file), error=str(exc))

            # everything is read and checked: only now change the learner
            self._install(weights, version, history, moments)
            self._lineage = lineage
            self.baseline.value, self.baseline.count = baseline
            log.info("learning.loaded", version=self._version, kept=list(self._history))
            return self._version

    def load_kept_version(self, directory: str | Path) -> int | None:
        """Restore the newest kept version file (``versions/v<N>.safetensors``) that reads and fits:
        its weights, version number, lineage and reward baseline. For a state file damaged on disk (see
        `LearnerCore`): the optimizer moments and the older versions start over. Returns the version, or
        None (nothing changed) when no kept version is usable."""
        with self._lock:
            for version, file in sorted(version_files(Path(directory)).items(), reverse=True):
                try:
                    tensors, meta = read_tensors(file)
                    weights = self._checked_weights(tensors, meta, file, prefix="")
                    lineage, baseline = _lineage_and_baseline(meta, file)
                except CheckpointError as exc:
                    log.warning("learning.kept_version_unusable", file=str(file), error=str(exc))
                    continue
                self._install(weights, version, OrderedDict())
                self._lineage = lineage
                self.baseline.value, self.baseline.count = baseline
                return version
            return None

    def _install(self, weights: dict[str, Tensor], version: int, history: OrderedDict[int, dict[str, Tensor]],
                 moments: dict[str, dict[str, Tensor]] | None = None) -> None:
        """Make checked ``weights`` the current ``version``; the optimizer takes ``moments`` (None: it
        starts afresh), ``history`` holds the older kept versions."""
        with torch.no_grad():
            for name, p in self._params.items():
                p.copy_(weights[name])
        self.optimizer.state.clear()
        for name, p in self._params.items():
            if moments and name in moments:
                self.optimizer.state[p] = moments[name]
        self._version = version
        self._history = history
        self._remember()

    def _metadata(self, version: int) -> dict[str, str]:
        return {
            "weights_version": str(version),
            "params": self.params,
            "lineage": self._lineage,
            "baseline": repr(self.baseline.value),
            "baseline_count": str(self.baseline.count),
        }

    def _checked_weights(
        self, tensors: dict[str, Tensor], meta: dict[str, str], file: Path, prefix: str = "param/"
    ) -> dict[str, Tensor]:
        if meta.get("params") != self.params:
            raise CheckpointError(f"{file} holds params={meta.get('params')!r}, this learner trains {self.params!r}")
        # parameter names have no "/", so the prefix alone tells weights from optimizer moments
        weights = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        problem = self._weights_problem(weights, finite=False)
        if problem is not None:
            raise CheckpointError(f"{file} {problem}")
        broken = _non_finite(weights)
        if broken:  # decoded, but as NaN/inf: damage on disk, not a mismatch
            raise DamagedLearnerFile(f"{file} holds non-finite weights: {broken[:5]}")
        return weights

    def _weights_problem(self, weights: dict[str, Tensor], finite: bool = True) -> str | None:
        """Why ``weights`` cannot be this learner's parameters (names, shapes, and with ``finite`` finite
        values), or None."""
        if set(weights) != set(self._params):
            missing = sorted(set(self._params) - set(weights))[:5]
            extra = sorted(set(weights) - set(self._params))[:5]
            return f"does not match the model: missing {missing}, unexpected {extra}"
        wrong = [n for n, p in self._params.items() if weights[n].shape != p.shape]
        if wrong:
            return f"does not match the model's shapes: {wrong[:5]}"
        broken = _non_finite(weights) if finite else []
        return f"holds non-finite weights: {broken[:5]}" if broken else None

    def _checked_moments(self, tensors: dict[str, Tensor], file: Path) -> dict[str, dict[str, Tensor]]:
        """AdamW's state per parameter name, checked like the weights (a wrong shape would only fail, or
        half-apply, at the next update)."""
        moments = {}
        for name, p in self._params.items():
            if f"exp_avg/{name}" not in tensors:
                continue
            try:
                state = {
                    "step": tensors[f"step/{name}"].reshape(()).clone(),
                    "exp_avg": tensors[f"exp_avg/{name}"],
                    "exp_avg_sq": tensors[f"exp_avg_sq/{name}"],
                }
            except (KeyError, RuntimeError) as exc:
                raise CheckpointError(f"{file} has an incomplete optimizer state for {name}: {exc!r}") from exc
            if state["exp_avg"].shape != p.shape or state["exp_avg_sq"].shape != p.shape:
                raise CheckpointError(f"{file} has optimizer moments of the wrong shape for {name}")
            if not all(torch.isfinite(t).all() for t in state.values()):
                raise CheckpointError(f"{file} has a non-finite optimizer state for {name}")
            state["exp_avg"], state["exp_avg_sq"] = state["exp_avg"].to(p.device), state["exp_avg_sq"].to(p.device)
            moments[name] = state
        return moments

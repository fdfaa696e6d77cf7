"""Training recipes: the whole pipeline (tokenizer, five stages, final evaluation) for one named setup.

``tiny`` — the recipe of the bundled model, sized for <= 45 minutes on a 2-core CPU.

Where its budget goes, and why (see also shared/TRAINING_NOTES.md, whose feasibility run on this
machine is the starting point):

* tokenizer (seconds): BPE, 768 ids, trained on the train split only. A few hundred ids more than the
  bare minimum buy whole-word tokens for the common words, so a value is 2-4 tokens and the memory
  has fewer pieces to carry. Names and cities are cut at their syllable / place-ending boundary
  (`VALUE_PIECES_PATTERN`): with free BPE merges, training names became tokens that held-out names
  could not reuse ("Gosu" = G|os|u, "Gozu" = G|o|zu), and most k=0-1 recall errors were held-out names
  copied as the nearest training name.
* stages 1-3 (under 1 % together: 20 + 20 + 10 steps at a low learning rate): joint LM pre-training,
  interaction SFT and self-supervised memory-attention pre-training run as brief warm starts, so the
  bundled model really passes through the whole pipeline. They are kept this short on purpose: in
  probes on this machine, 100-150 steps of stages 1-2 at 1e-3-2e-3 *delayed* stage 4's discovery of
  memory reading (k=0 recall 0-6 % after 350 two-turn steps, against ~88 % from scratch after 300
  and ~69 % after 450 with these brief stages), and the feasibility run found them unnecessary for
  this task. On a larger budget they would be longer.
* stage 4, supervised memory-aware training (~80 % of the time): where recall is learned. Full
  backprop through the memory chain over whole dialogues; a two-turn warm-up (fact, then its
  question) for 700 cheap steps, long enough for the decoder to learn to read memory at all, then
  dialogue length 3 -> 12 until half-way (30 % of steps mix in shorter lengths); question turns weigh
  3x; AdamW (wd 0.01, betas 0.9/0.98), clip 1.0, batch 32, peak lr 1.5e-3 with cosine decay (at 2e-3
  the decoder never learned to read memory with the syllable-split tokenizer: the loss sat at ~0.65
  through the warm-up and k=0 recall ended at 1.5 %; at 1.5e-3 and 1e-3 it learned within ~350 steps). Gradual
  unfreezing is brief (the memory path alone for the first 2 % of the steps, then the encoder, then
  all), because stages 1-3 were short.
* stage 5, MRL (~10 %): PPO-style rollouts through the real inference path, reward = recall of earlier
  facts; a small learning rate, as the supervised model already recalls most facts and MRL must not
  undo it. Its reward before/after is reported in the summary.
* final evaluation (~5 %): the recall table (200 held-out dialogues a cell) stored beside the model.

The model (`TINY_MODEL`) is not the ``tiny`` preset of `RxTConfig`: 2 layers instead of 4, a dense
FFN instead of MoE, 32 STM slots instead of 64, 4 full heads — the shape that trains in the budget on
two cores. It is an ordinary RxTConfig; ``load_model("tiny")`` loads whatever this recipe produced.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any

import structlog
import torch

from reactor_rt.errors import CheckpointError, ConfigError
from reactor_rt.model import ReactiveTransformer, RxTConfig
from reactor_rt.tokenizer import HFTokenizer, load_tokenizer
from reactor_rt.training.bpe import save_tokenizer, train_bpe_tokenizer
from reactor_rt.training.corpus import tokenizer_corpus
from reactor_rt.training.eval_recall import RecallReport, evaluate_recall, fixed_eval, format_table
from reactor_rt.training.loop import StageResult
from reactor_rt.training.memory_aware import COMPONENTS
from reactor_rt.training.stages import (
    JointSpec,
    MemoryAwareSpec,
    MemoryPretrainSpec,
    MRLSpec,
    run_joint_lm,
    run_memory_aware,
    run_memory_pretrain,
    run_mrl,
    run_sft,
)
from reactor_rt.training.values import VALUE_PIECES_PATTERN

__all__ = ["RECIPES", "RUN_FILE", "TINY_MODEL", "Recipe", "TrainSummary", "get_recipe", "train", "with_steps"]

log = structlog.get_logger()

TINY_MODEL: dict[str, Any] = dict(
    dim=128, layers=2, heads=4, query_heads=4, kv_heads=4, ff_dim=512, moe_experts=0,
    stm_slots=32, max_seq_len=64, max_query_tokens=40, memory_attention="interlayer",
    residual_gate="elementwise", gate_per_slot=True,
)  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a training run, apart from the seed."""

    name: str
    model: dict[str, Any]  # RxTConfig fields; vocab_size comes from the trained tokenizer
    vocab_size: int
    max_len: int  # longest training interaction in tokens
    joint_lm: JointSpec
    sft: JointSpec
    memory_pretrain: MemoryPretrainSpec
    memory_aware: MemoryAwareSpec
    mrl: MRLSpec
    eval_n: int = 200  # held-out dialogues per cell of the final recall table (0 = no evaluation)
    tokenizer_sentences: int = 4000
    tokenizer_dialogues: int = 1500
    tokenizer_isolate: str | None = VALUE_PIECES_PATTERN  # see bpe.train_bpe_tokenizer

    def config(self, vocab_size: int) -> RxTConfig:
        return RxTConfig(vocab_size=vocab_size, **self.model)


RECIPES: dict[str, Recipe] = {
    "tiny": Recipe(
        name="tiny",
        model=TINY_MODEL,
        vocab_size=768,
        max_len=48,
        joint_lm=JointSpec(steps=20, batch=32, lr=5e-4, warmup=5),
        sft=JointSpec(steps=20, batch=64, lr=5e-4, warmup=5),
        memory_pretrain=MemoryPretrainSpec(steps=10, batch=32, turns=6, lr=2e-4, warmup=2),
        memory_aware=MemoryAwareSpec(
            steps=2200,
            batch=32,
            lr=1.5e-3,
            warmup=50,
            max_turns=12,
            warmup_two_turn=700,
            grow_fraction=0.5,
            mix_short=0.3,
            question_weight=3.0,
            unfreeze=((0.0, ("memory",)), (0.02, ("memory", "encoder")), (0.04, COMPONENTS)),
        ),
        mrl=MRLSpec(iterations=30, batch=32, turns=8, lr=5e-5, eval_dialogues=128),
    ),
    # a seconds-long smoke run of the whole pipeline (tests)
    "micro": Recipe(
        name="micro",
        model=dict(
            dim=32,
            layers=1,
            heads=2,
            query_heads=2,
            kv_heads=2,
            ff_dim=64,
            moe_experts=0,
            stm_slots=8,
            max_seq_len=64,
            max_query_tokens=40,
        ),
        vocab_size=320,
        max_len=48,
        joint_lm=JointSpec(steps=6, batch=8, warmup=2),
        sft=JointSpec(steps=6, batch=8, warmup=2),
        memory_pretrain=MemoryPretrainSpec(steps=4, batch=4, turns=3, warmup=1),
        memory_aware=MemoryAwareSpec(
            steps=10, batch=4, warmup=2, max_turns=4, warmup_two_turn=3, save_every=4
        ),
        mrl=MRLSpec(iterations=2, batch=4, turns=3, eval_dialogues=4),
        eval_n=4,
        tokenizer_sentences=600,
        tokenizer_dialogues=200,
    ),
}


def get_recipe(name: str) -> Recipe:
    """A named recipe; `ConfigError` (a ValueError) listing the known names otherwise."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


@dataclass
class TrainSummary:
    """What a run produced: per-stage results, the recall table, where the model is, how long it took."""

    recipe: str
    seed: int
    model_dir: str
    parameters: int
    seconds: float
    stages: list[StageResult] = field(default_factory=list)
    recall: RecallReport | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["recall"] = self.recall.as_dict() if self.recall is not None else None
        return d

    def text(self) -> str:
        lines = [
            f"recipe {self.recipe} (seed {self.seed}): {self.parameters:,} parameters, {self.seconds / 60:.1f} min"
        ]
        lines += ["  " + s.line() for s in self.stages]
        if self.recall is not None:
            lines += ["", format_table(self.recall)]
        lines.append(f"model: {self.model_dir}")
        return "\n".join(lines)


RUN_FILE = "run.json"


# recipe fields beside the model that a run directory's tokenizer and stage checkpoints depend on
# (``eval_n`` is left out: the final evaluation is redone on every run and may change freely)
_SPEC_FIELDS = (
    "max_len", "tokenizer_sentences", "tokenizer_dialogues", "tokenizer_isolate",
    "joint_lm", "sft", "memory_pretrain", "memory_aware", "mrl",
)  # fmt: skip


def _run_identity(recipe: Recipe, seed: int) -> dict[str, Any]:
    """What a run directory's checkpoints depend on; JSON round-tripped so it compares with the file."""
    ident = {"recipe": recipe.name, "seed": seed, "vocab_size": recipe.vocab_size, "model": recipe.model}
    for name in _SPEC_FIELDS:
        value = getattr(recipe, name)
        ident[name] = asdict(value) if is_dataclass(value) else value
    return json.loads(json.dumps(ident))


def _differences(theirs: Any, ours: Any, path: str) -> list[str]:
    """``path a vs b`` for each leaf that differs (dicts compared key by key, so a message stays short)."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        keys = list(ours) + [k for k in theirs if k not in ours]
        return [d for k in keys for d in _differences(theirs.get(k), ours.get(k), f"{path}.{k}")]
    return [] if theirs == ours else [f"{path} {theirs!r} vs {ours!r}"]


def _check_run_dir(recipe: Recipe, out: Path, seed: int) -> None:
    """Refuse to resume into ``out`` when it holds a run of another recipe, seed, model or stage settings.

    Without this the tokenizer and every finished stage of the earlier run would be reused silently.
    """
    path = out / RUN_FILE
    ours = _run_identity(recipe, seed)
    if path.exists():
        try:
            theirs = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is unreadable ({exc}); use another --out or --no-resume") from exc
        if not isinstance(theirs, dict):
            raise CheckpointError(f"{path} is not a run record; use another --out or --no-resume")
        unrecorded = [k for k in ours if k not in theirs]
        if unrecorded:  # written before these fields were recorded: they cannot be checked
            log.warning("run.json predates some recorded settings; not checked", out=str(out), fields=unrecorded)
        diffs = [d for k in ours if k in theirs for d in _differences(theirs[k], ours[k], k)]
        diffs += [f"{k} {theirs[k]!r} vs None" for k in theirs if k not in ours]
        if diffs:
            diff = ", ".join(diffs[:6]) + (f" (+{len(diffs) - 6} more)" if len(diffs) > 6 else "")
            raise CheckpointError(
                f"{out} holds a run of recipe {theirs.get('recipe')!r} seed {theirs.get('seed')!r}, "
                f"not recipe {recipe.name!r} seed {seed} ({diff}); resuming would reuse its tokenizer "
                "and checkpoints. Use another --out, or --restart (--no-resume) to clear it"
            )
        return
    if (out / "tokenizer").exists() or (out / "stages").exists():
        log.warning("run dir has no run.json (older run); cannot check seed/recipe", out=str(out))
    path.write_text(json.dumps(ours, indent=1))


def _prepare_out(out: Path) -> None:
    """Create the run directory; a path that cannot be one is a `ConfigError`, not an OSError traceback."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"the run directory {out} exists and is not a directory; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory {out}: {exc.strerror or exc}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"the run directory {out} is not writable; choose another --out")


def _refuse_to_clear_foreign(out: Path) -> None:
    """A restart deletes ``out``'s tokenizer/, stages/, model/ and summary.json: only in a run directory.

    Without a ``run.json`` those names may be anyone's (``--out .`` in a project with a model/ folder),
    and a restart would have deleted them.
    """
    found = [n for n in ("tokenizer", "stages", "model", "summary.json") if (out / n).exists()]
    if found and not (out / RUN_FILE).exists():
        raise ConfigError(
            f"{out} holds {', '.join(found)} but no {RUN_FILE}, so it may not be a training run; a restart "
            "will not delete them. Remove them yourself or choose another --out"
        )


def _tokenizer(recipe: Recipe, out: Path, seed: int) -> HFTokenizer:
    tok_dir = out / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        tok = load_tokenizer(tok_dir)
        assert isinstance(tok, HFTokenizer)
        return tok
    lines = tokenizer_corpus(recipe.tokenizer_sentences, recipe.tokenizer_dialogues, seed=seed)
    save_tokenizer(train_bpe_tokenizer(lines, recipe.vocab_size, isolate=recipe.tokenizer_isolate), tok_dir)
    return HFTokenizer.from_file(tok_dir / "tokenizer.json")


def train(
    recipe: Recipe | str,
    out: str | Path,
    seed: int = 0,
    resume: bool = True,
    progress: bool = True,
    evaluate: bool = True,
) -> TrainSummary:
    """Run a recipe end to end into ``out`` and return its summary.

    ``out`` receives ``tokenizer/``, ``stages/<n_stage>/`` (``last.pt`` while a stage runs, ``done.pt``
    when it is finished), ``model/`` (the final checkpoint, loadable with
    `ReactiveTransformer.from_pretrained`, with ``recall.json`` — the recall table — and
    ``fixed_eval.json`` — the small eval the tests re-check — beside it), ``summary.json`` and
    ``run.json`` (recipe, seed, model config). With ``resume`` a rerun skips the finished stages and
    continues the interrupted one — `CheckpointError` if ``run.json`` names another recipe, seed,
    model or stage settings (steps, batch, learning rate, ...); without it the previous run's files in
    ``out`` are removed first. Deterministic for a seed (same machine, same thread count).
    """
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    out = Path(out)
    _prepare_out(out)
    if not resume:  # start over: remove only what a run writes, never the rest of ``out``
        _refuse_to_clear_foreign(out)
        for sub in ("tokenizer", "stages", "model"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("summary.json", RUN_FILE):
            (out / name).unlink(missing_ok=True)
    _check_run_dir(recipe, out, seed)
    t0 = time.perf_counter()
    tok = _tokenizer(recipe, out, seed)
    torch.manual_seed(seed)
    model = ReactiveTransformer(recipe.config(tok.vocab_size), tok)
    stages_dir = out / "stages"
    common = dict(seed=seed, max_len=recipe.max_len, checkpoint_dir=stages_dir, progress=progress)
    results = [
        run_joint_lm(model, recipe.joint_lm, **common),
        run_sft(model, recipe.sft, **common),
        run_memory_pretrain(model, recipe.memory_pretrain, **common),
        run_memory_aware(model, recipe.memory_aware, **common),
        run_mrl(model, recipe.mrl, **common),
    ]
    model.eval()
    model_dir = out / "model"
    model.save_pretrained(model_dir)
    report = None
    if evaluate and recipe.eval_n:
        report = evaluate_recall(model, n=recipe.eval_n, batch_size=recipe.eval_n, n_examples=3)
        (model_dir / "recall.json").write_text(json.dumps(report.as_dict(), indent=1))
        (model_dir / "fixed_eval.json").write_text(json.dumps(fixed_eval(model), indent=1))
    summary = TrainSummary(
        recipe=recipe.name,
        seed=seed,
        model_dir=str(model_dir),
        parameters=model.num_parameters(),
        seconds=time.perf_counter() - t0,
        stages=results,
        recall=report,
    )
    (out / "summary.json").write_text(json.dumps(summary.as_dict(), indent=1, default=str))
    log.info("training done", recipe=recipe.name, minutes=round(summary.seconds / 60, 1))
    return summary


def with_steps(recipe: Recipe, **stage_steps: int) -> Recipe:
    """A copy of ``recipe`` with some stages' step counts changed (e.g. memory_aware=100)."""
    changes: dict[str, Any] = {}
    for stage, steps in stage_steps.items():
        spec = getattr(recipe, stage)
        key = "iterations" if stage == "mrl" else "steps"
        changes[stage] = replace(spec, **{key: steps})
    return replace(recipe, **changes)

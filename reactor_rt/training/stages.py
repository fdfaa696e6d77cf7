"""The five training stages as functions: data per step, loss, and the shared loop.

Each ``run_*`` takes the model, a stage spec, the run seed and an optional checkpoint directory, and
returns a `StageResult`. Batches are drawn from (seed, stage, step) only, so a run is deterministic
for its seed and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from reactor_rt.model import ReactiveTransformer
from reactor_rt.training.batches import collate_dialogues, collate_interactions, collate_texts
from reactor_rt.training.corpus import natural_sentences
from reactor_rt.training.dialogues import DialogueGenerator
from reactor_rt.training.joint import JointConfig, joint_loss
from reactor_rt.training.loop import OptimConfig, StageResult, run_loop, step_rng, torch_generator
from reactor_rt.training.memory_aware import (
    COMPONENTS,
    Curriculum,
    dialogue_loss,
    set_trainable,
    unfreeze_plan,
)
from reactor_rt.training.memory_pretrain import MemoryPretrainConfig, memory_pretrain_loss
from reactor_rt.training.mrl import Critic, MRLConfig, Rollout, collect_rollout, ppo_loss

__all__ = [
    "JointSpec",
    "MRLSpec",
    "MemoryAwareSpec",
    "MemoryPretrainSpec",
    "mrl_reward",
    "run_joint_lm",
    "run_memory_aware",
    "run_memory_pretrain",
    "run_mrl",
    "run_sft",
]


@dataclass(frozen=True)
class JointSpec:
    """Stages 1 and 2: steps, batch size, peak lr and the joint-objective knobs."""

    steps: int
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 20
    joint: JointConfig = field(default_factory=JointConfig)


@dataclass(frozen=True)
class MemoryPretrainSpec:
    """Stage 3: dialogues of ``turns`` interactions, cosine to the weighted-mean pseudo-target."""

    steps: int
    batch: int = 32
    turns: int = 6
    lr: float = 1e-3
    warmup: int = 10
    target: MemoryPretrainConfig = field(default_factory=MemoryPretrainConfig)


@dataclass(frozen=True)
class MemoryAwareSpec:
    """Stage 4: curriculum, question weight and the gradual-unfreezing schedule."""

    steps: int
    batch: int = 32
    lr: float = 1.5e-3
    warmup: int = 50
    max_turns: int = 12
    warmup_two_turn: int = 60
    grow_fraction: float = 0.45
    mix_short: float = 0.3
    question_weight: float = 3.0
    unfreeze: tuple[tuple[float, tuple[str, ...]], ...] = (
        (0.0, ("memory",)),
        (0.05, ("memory", "encoder")),
        (0.1, COMPONENTS),
    )
    save_every: int = 100


@dataclass(frozen=True)
class MRLSpec:
    """Stage 5: rollouts of ``batch`` dialogues of ``turns`` turns, ``iterations`` PPO rounds."""

    iterations: int
    batch: int = 32
    turns: int = 8
    lr: float = 1e-4
    mrl: MRLConfig = field(default_factory=MRLConfig)
    eval_dialogues: int = 64


def _dir(checkpoint_dir: Path | None, name: str) -> Path | None:
    return None if checkpoint_dir is None else checkpoint_dir / name


def run_joint_lm(
    model: ReactiveTransformer, spec: JointSpec, seed: int, max_len: int,
    checkpoint_dir: Path | None = None, progress: bool = True,
) -> StageResult:  # fmt: skip
    """Stage 1: encoder MLM + decoder AR on generated natural text."""
    tok = model.tokenizer

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        texts = natural_sentences(spec.batch, seed=step_rng(seed, "joint_lm", step).randrange(2**31))
        batch = collate_texts(tok, texts, max_len)
        return joint_loss(model, batch, spec.joint, torch_generator(seed, "joint_lm/noise", step))

    cfg = OptimConfig(steps=spec.steps, lr=spec.lr, warmup=spec.warmup)
    return run_loop(
        "1 joint LM",
        model,
        step_fn,
        cfg,
        checkpoint_dir=_dir(checkpoint_dir, "1_joint_lm"),
        progress=progress,
    )


def run_sft(
    model: ReactiveTransformer, spec: JointSpec, seed: int, max_len: int,
    checkpoint_dir: Path | None = None, progress: bool = True,
) -> StageResult:  # fmt: skip
    """Stage 2: the joint objective on single ``[BOS][Q] q [A] a [EOS]`` interactions of the dialogues."""
    tok = model.tokenizer

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        gen = DialogueGenerator("train", seed=step_rng(seed, "sft", step).randrange(2**31))
        turns = [t for _ in range(spec.batch) for t in gen.dialogue(6).turns]
        pick = step_rng(seed, "sft/pick", step).sample(turns, spec.batch)
        batch = collate_interactions(tok, [(t.query, t.answer) for t in pick], max_len)
        return joint_loss(model, batch, spec.joint, torch_generator(seed, "sft/noise", step))

    cfg = OptimConfig(steps=spec.steps, lr=spec.lr, warmup=spec.warmup)
    return run_loop(
        "2 interaction SFT",
        model,
        step_fn,
        cfg,
        checkpoint_dir=_dir(checkpoint_dir, "2_sft"),
        progress=progress,
    )


def run_memory_pretrain(
    model: ReactiveTransformer, spec: MemoryPretrainSpec, seed: int, max_len: int,
    checkpoint_dir: Path | None = None, progress: bool = True,
) -> StageResult:  # fmt: skip
    """Stage 3: self-supervised memory attention (only the memory-attention network and STM init learn)."""
    tok = model.tokenizer
    params = [p for n, p in model.named_parameters() if n.startswith(("memory_attention.", "stm_init"))]

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        gen = DialogueGenerator("train", seed=step_rng(seed, "memory_pretrain", step).randrange(2**31))
        batch = collate_dialogues(tok, [gen.dialogue(spec.turns) for _ in range(spec.batch)], max_len)
        return memory_pretrain_loss(
            model, batch, spec.target, torch_generator(seed, "memory_pretrain/noise", step)
        )

    cfg = OptimConfig(steps=spec.steps, lr=spec.lr, warmup=spec.warmup)
    return run_loop(
        "3 memory-attention pre-training", model, step_fn, cfg, params=params,
        checkpoint_dir=_dir(checkpoint_dir, "3_memory_pretrain"), progress=progress,
    )  # fmt: skip


def run_memory_aware(
    model: ReactiveTransformer, spec: MemoryAwareSpec, seed: int, max_len: int,
    checkpoint_dir: Path | None = None, progress: bool = True,
) -> StageResult:  # fmt: skip
    """Stage 4: supervised memory-aware training over whole dialogues, with gradual unfreezing."""
    tok = model.tokenizer
    curriculum = Curriculum(
        steps=spec.steps, max_turns=spec.max_turns, warmup_steps=spec.warmup_two_turn,
        grow_fraction=spec.grow_fraction, mix_short=spec.mix_short,
    )  # fmt: skip

    def before_step(step: int) -> None:
        set_trainable(model, unfreeze_plan(step, spec.steps, spec.unfreeze))

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        rng = step_rng(seed, "memory_aware", step)
        turns = curriculum.turns(step, rng)
        gen = DialogueGenerator("train", seed=rng.randrange(2**31))
        batch = collate_dialogues(
            tok, [gen.dialogue(turns) for _ in range(spec.batch)], max_len, spec.question_weight
        )
        return dialogue_loss(model, batch)

    cfg = OptimConfig(steps=spec.steps, lr=spec.lr, warmup=spec.warmup)
    try:
        return run_loop(
            "4 memory-aware training", model, step_fn, cfg, before_step=before_step,
            checkpoint_dir=_dir(checkpoint_dir, "4_memory_aware"), save_every=spec.save_every, progress=progress,
        )  # fmt: skip
    finally:
        set_trainable(model, COMPONENTS)


def mrl_reward(model: ReactiveTransformer, spec: MRLSpec, seed: int, tag: str) -> float:
    """Mean reward of greedy answers to the question turns of fixed held-out dialogues (before/after MRL)."""
    gen = DialogueGenerator("heldout", seed=step_rng(seed, "mrl/eval", 0).randrange(2**31))
    dialogues = [gen.dialogue(spec.turns) for _ in range(spec.eval_dialogues)]
    cfg = MRLConfig(temperature=0.0, max_new_tokens=spec.mrl.max_new_tokens)
    rollout = collect_rollout(model, dialogues, cfg, torch_generator(seed, f"mrl/eval/{tag}", 0))
    return rollout.mean_reward


def run_mrl(
    model: ReactiveTransformer, spec: MRLSpec, seed: int, max_len: int,
    checkpoint_dir: Path | None = None, progress: bool = True,
) -> StageResult:  # fmt: skip
    """Stage 5: PPO-style MRL; the result's extra holds the greedy reward before and after."""
    critic = Critic(model.config.dim)
    before = mrl_reward(model, spec, seed, "before")
    cache: dict[int, Rollout] = {}
    epochs = spec.mrl.epochs

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        it = step // epochs
        if it not in cache:
            cache.clear()
            gen = DialogueGenerator("train", seed=step_rng(seed, "mrl", it).randrange(2**31))
            dialogues = [gen.dialogue(spec.turns) for _ in range(spec.batch)]
            cache[it] = collect_rollout(model, dialogues, spec.mrl, torch_generator(seed, "mrl/sample", it))
        return ppo_loss(model, critic, cache[it], spec.mrl)

    def finalize(result: StageResult) -> None:
        result.extra["reward_greedy_before"] = before
        result.extra["reward_greedy_after"] = mrl_reward(model, spec, seed, "after")
        result.extra["reward_sampled_first"] = result.first_extra.get("reward", float("nan"))

    cfg = OptimConfig(steps=spec.iterations * epochs, lr=spec.lr, warmup=max(1, epochs), min_lr_ratio=0.5)
    return run_loop(
        "5 MRL (PPO)", model, step_fn, cfg, extra_modules={"critic": critic}, finalize=finalize,
        checkpoint_dir=_dir(checkpoint_dir, "5_mrl"), save_every=epochs * 10, progress=progress,
    )  # fmt: skip

"""Stage 4: supervised memory-aware training over multi-turn dialogues (full backprop through memory).

For a batch of B dialogues of N turns, all N interactions are encoded in parallel (the encoder does
not read the STM), the memory updates run in sequence (STM(t) = update(STM(t-1), encoded turn t)),
and all N turns are decoded in parallel, turn t reading STM(t-1). The loss is next-token
cross-entropy on answer tokens + [EOS] only, question turns weighted up. Gradients flow through the
whole memory chain, so the memory-attention network learns to write what later turns will ask for.

Also here: the dialogue-length curriculum and the gradual-unfreezing schedule.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from reactor_rt.model import ReactiveTransformer
from reactor_rt.training.batches import DialogueBatch
from reactor_rt.training.losses import masked_token_loss

__all__ = [
    "COMPONENTS",
    "Curriculum",
    "component_of",
    "dialogue_loss",
    "set_trainable",
    "stm_per_turn",
    "unfreeze_plan",
]

COMPONENTS = ("memory", "encoder", "decoder")
_MEMORY_PARTS = (".cross_attn.", ".memory_norm.", ".cross_norm.")


def component_of(param_name: str) -> str:
    """Which part of the model a parameter belongs to, for gradual unfreezing.

    memory: the memory-attention network, the initial STM and the decoder's memory cross-attention
    (the read and write paths of the STM); encoder: encoder layers and MLM head; decoder: the rest
    (shared embedding, decoder self-attention and FFN, output norm).
    """
    if param_name.startswith(("memory_attention.", "stm_init")):
        return "memory"
    if param_name.startswith("decoder_layers.") and any(p in param_name for p in _MEMORY_PARTS):
        return "memory"
    if param_name.startswith(("encoder_layers.", "mlm_head.")):
        return "encoder"
    return "decoder"


def set_trainable(model: nn.Module, components: Sequence[str]) -> None:
    """requires_grad on exactly the parameters of ``components`` (others frozen: AdamW skips them)."""
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unknown components {sorted(unknown)}; known: {COMPONENTS}")
    for name, p in model.named_parameters():
        p.requires_grad_(component_of(name) in components)


def unfreeze_plan(step: int, total: int, schedule: Sequence[tuple[float, Sequence[str]]]) -> tuple[str, ...]:
    """The components trainable at ``step``: the last schedule entry whose start fraction has passed.

    schedule: [(0.0, ["memory"]), (0.1, ["memory", "encoder"]), (0.2, COMPONENTS)] style, sorted.
    """
    current: Sequence[str] = schedule[0][1]
    for start, comps in schedule:
        if step >= start * total:
            current = comps
    return tuple(current)


@dataclass(frozen=True)
class Curriculum:
    """Dialogue length per step: two-turn warm-up, then growth from ``start`` to ``max_turns``.

    After ``warmup_steps`` steps of two-turn dialogues (a fact, then its question), the length grows
    linearly from ``start`` to ``max_turns`` over the first ``grow_fraction`` of the steps; with
    probability ``mix_short`` a step uses a random shorter length instead (2 .. current), so short
    gaps are not forgotten.
    """

    steps: int
    max_turns: int = 12
    start: int = 3
    warmup_steps: int = 60
    grow_fraction: float = 0.45
    mix_short: float = 0.3

    def turns(self, step: int, rng: random.Random) -> int:
        if step < self.warmup_steps:
            return 2
        grow_steps = max(1, int(self.grow_fraction * self.steps) - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / grow_steps)
        current = round(self.start + progress * (self.max_turns - self.start))
        if rng.random() < self.mix_short:
            return rng.randint(2, current)
        return current


def stm_per_turn(
    model: ReactiveTransformer, encoded: Tensor, mask: Tensor, stm0: Tensor | None = None
) -> Tensor:
    """The STM each turn reads: STM(t-1) for turn t, starting from the initial STM.

    encoded (L, B, N, T, D), mask (B, N, T) -> (B, N, L, S, D). The last turn's update is not needed
    by any decoder, so N-1 updates run.
    """
    b, n = mask.shape[:2]
    stm = model.init_stm(b) if stm0 is None else stm0
    states = [stm]
    for t in range(n - 1):
        stm = model.update_memory(stm, encoded[:, :, t], attention_mask=mask[:, t])
        states.append(stm)
    return torch.stack(states, dim=1)


def dialogue_loss(
    model: ReactiveTransformer, batch: DialogueBatch, moe_aux_weight: float = 0.01, reset_stm: bool = False
) -> tuple[Tensor, dict[str, float]]:
    """Answer-only loss over whole dialogues with backprop through the memory chain; (loss, stats).

    ``reset_stm`` decodes every turn from the initial STM (the no-memory ablation, for diagnostics).
    """
    b, n, t = batch.shape
    flat_ids = batch.ids.view(b * n, t)
    flat_mask = batch.mask.view(b * n, t)
    if reset_stm:
        read = model.init_stm(b * n)
    else:
        encoded = model.encode(flat_ids, attention_mask=flat_mask)  # (L, B*N, T, D)
        encoded = encoded.view(encoded.shape[0], b, n, t, -1)  # (L, B, N, T, D)
        read = stm_per_turn(model, encoded, batch.mask).flatten(0, 1)  # (B*N, L, S, D)
    logits, aux = model.decode_with_aux(flat_ids[:, :-1], read, attention_mask=flat_mask[:, :-1])
    weight = batch.turn_weight.reshape(b * n)
    loss = masked_token_loss(logits, flat_ids, batch.target.view(b * n, t), weight)
    with torch.no_grad():
        is_q = torch.tensor([turn.kind == "question" for d in batch.dialogues for turn in d.turns])
        q_loss = (
            masked_token_loss(logits[is_q], flat_ids[is_q], batch.target.view(b * n, t)[is_q])
            if is_q.any()
            else torch.tensor(float("nan"))
        )
    return loss + moe_aux_weight * aux, {"q_loss": float(q_loss), "turns": float(n)}

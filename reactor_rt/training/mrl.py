"""Stage 5: Memory Reinforcement Learning (PPO-style, no GAE).

A rollout plays B training dialogues through the real inference path: every turn the policy samples
an answer from STM(t-1), then query + sampled answer are encoded and written into memory. Question
turns are the scored actions: reward = 1 when the answer recalls the earlier fact (`recall_correct`),
else 0. A critic predicts the reward from the state (the STM read and the encoded query);
advantage = reward - value (no GAE: one action per question). The policy loss is PPO's clipped
surrogate on the answer tokens' log-probabilities, recomputed with full backprop through the memory
chain, so the memory-attention network is trained by the reward. A regulariser penalises the size of
each STM change (1 - cosine per slot), keeping updates small where that costs no reward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reactor_rt.model import ReactiveTransformer, Sampler
from reactor_rt.training.batches import DialogueBatch
from reactor_rt.training.dialogues import Dialogue, Turn
from reactor_rt.training.eval_recall import PlayedTurns, play_turns
from reactor_rt.training.losses import token_logprobs
from reactor_rt.training.memory_aware import stm_per_turn
from reactor_rt.training.recall import recall_correct

__all__ = ["Critic", "MRLConfig", "Rollout", "collect_rollout", "ppo_loss"]


@dataclass(frozen=True)
class MRLConfig:
    """PPO knobs: sampling temperature, clip range, critic and STM-change weights, epochs per rollout."""

    temperature: float = 1.0
    clip: float = 0.2
    value_weight: float = 0.5
    stm_change_weight: float = 0.01
    epochs: int = 2
    max_new_tokens: int = 16


class Critic(nn.Module):
    """Value head: expected reward of answering a query from an STM (both as detached summaries)."""

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, stm: Tensor, query_state: Tensor) -> Tensor:
        """stm (R, L, S, D), query_state (R, D) -> value (R,)."""
        summary = F.normalize(stm.mean(dim=(1, 2)), dim=-1)  # (R, D)
        return self.net(torch.cat([summary, F.normalize(query_state, dim=-1)], dim=-1)).squeeze(-1)


@dataclass
class Rollout:
    """Sampled interactions as a DialogueBatch, plus per-turn rewards and old log-probs."""

    batch: DialogueBatch  # ids hold query + the *sampled* answers; target: the sampled tokens only
    reward: Tensor  # (B, N), 0 on non-question turns
    is_question: Tensor  # (B, N) bool
    old_logp: Tensor  # (B*N, T-1) log-probs of the sampled tokens under the rollout policy
    prompt: Tensor | None = None  # (B, N, T) bool: [BOS][Q] query [A], the state an answer is chosen in

    @property
    def mean_reward(self) -> float:
        return float(self.reward[self.is_question].mean()) if self.is_question.any() else float("nan")


def _as_batch(
    model: ReactiveTransformer, dialogues: list[Dialogue], played: PlayedTurns
) -> tuple[DialogueBatch, Tensor]:
    """Stack the played interactions (the sampled token ids, not a re-tokenisation) into a batch, and
    the prompt positions (B, N, T).

    The target is what the policy sampled: the answer from the end of the prompt (an [A] the model
    sampled does not move its start) and the [EOS] only when the model generated it — an answer cut at
    the budget gets an [EOS] to close the interaction, but scoring it would credit a token never chosen.
    """
    tok = model.tokenizer
    b, n = len(dialogues), len(dialogues[0])
    flat = [r for per_dialogue in played.interactions for r in per_dialogue]
    starts = [s for per_dialogue in played.prompt_lengths for s in per_dialogue]
    ended = [e for per_dialogue in played.ended for e in per_dialogue]
    width = max(len(r) for r in flat)
    ids = torch.full((b * n, width), tok.pad_id, dtype=torch.long)
    mask = torch.zeros((b * n, width), dtype=torch.bool)
    target = torch.zeros((b * n, width), dtype=torch.bool)
    prompt = torch.zeros((b * n, width), dtype=torch.bool)
    for i, (r, start, done) in enumerate(zip(flat, starts, ended, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
        target[i, start : len(r) - (0 if done else 1)] = True
        prompt[i, :start] = True
    weight = torch.ones(b, n)
    batch = DialogueBatch(
        ids.view(b, n, width), mask.view(b, n, width), target.view(b, n, width), weight, dialogues
    )
    return batch, prompt.view(b, n, width)


def _reward(turn: Turn, answer: str) -> float:
    if turn.kind != "question":
        return 0.0
    assert turn.attribute is not None and turn.value is not None
    return 1.0 if recall_correct(answer, turn.attribute, turn.value) else 0.0


def _forward(model: ReactiveTransformer, batch: DialogueBatch) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher-forced pass over the sampled dialogues -> (token log-probs (B*N, T-1), STM read per
    turn (B, N, L, S, D), last-layer encoder states (B*N, T, D))."""
    b, n, t = batch.shape
    flat_ids, flat_mask = batch.ids.view(b * n, t), batch.mask.view(b * n, t)
    encoded = model.encode(flat_ids, attention_mask=flat_mask)  # (L, B*N, T, D)
    read = stm_per_turn(model, encoded.view(encoded.shape[0], b, n, t, -1), batch.mask)  # (B, N, L, S, D)
    logits = model.decode(flat_ids[:, :-1], read.flatten(0, 1))
    return token_logprobs(logits, flat_ids), read, encoded[-1]


@torch.no_grad()
def collect_rollout(
    model: ReactiveTransformer, dialogues: list[Dialogue], cfg: MRLConfig, gen: torch.Generator
) -> Rollout:
    """Sample answers turn by turn through the memory path and score the question turns."""
    was_training = model.training
    model.eval()
    sampler = Sampler(temperature=cfg.temperature)
    played = play_turns(model, dialogues, sampler=sampler, generator=gen, max_new_tokens=cfg.max_new_tokens)
    batch, prompt = _as_batch(model, dialogues, played)
    reward = torch.tensor(
        [
            [_reward(t, a) for t, a in zip(d.turns, ans, strict=True)]
            for d, ans in zip(dialogues, played.answers, strict=True)
        ]
    )
    is_q = torch.tensor([[t.kind == "question" for t in d.turns] for d in dialogues])
    old_logp, _, _ = _forward(model, batch)
    model.train(was_training)
    return Rollout(batch, reward, is_q, old_logp, prompt)


@torch.no_grad()
def _query_state(model: ReactiveTransformer, ids: Tensor, prompt: Tensor) -> Tensor:
    """Mean last-layer encoder state of the prompt alone: ids (R, T), prompt (R, T) -> (R, D).

    The encoder is bidirectional, so pooling the prompt positions of the whole interaction would still
    see the sampled answer; the answer is masked out of the attention instead.
    """
    enc = model.encode(ids, attention_mask=prompt)[-1]  # (R, T, D)
    m = prompt.to(enc.dtype)[..., None]
    return (enc * m).sum(1) / m.sum(1).clamp_min(1.0)


def ppo_loss(
    model: ReactiveTransformer, critic: Critic, rollout: Rollout, cfg: MRLConfig
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate on question-turn answer tokens + critic MSE + STM-change regulariser."""
    batch = rollout.batch
    b, n, t = batch.shape
    logp, read, _ = _forward(model, batch)
    q_rows = rollout.is_question.reshape(b * n)
    tokens = batch.target.view(b * n, t)[:, 1:] & q_rows[:, None]  # (B*N, T-1) scored tokens
    # the critic is a baseline: it must see the state only, never the sampled answer it is judging (a
    # baseline that depends on the action biases the policy gradient and can cancel its signal)
    prompt = rollout.prompt if rollout.prompt is not None else batch.mask & ~batch.target
    query_state = _query_state(model, batch.ids.view(b * n, t), prompt.reshape(b * n, t))  # (B*N, D)
    value = critic(read.flatten(0, 1).detach(), query_state)  # (B*N,)
    reward = rollout.reward.reshape(b * n)
    advantage = (reward - value.detach())[:, None].expand_as(logp)  # (B*N, T-1)
    ratio = torch.exp(logp - rollout.old_logp)
    surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * advantage)
    n_tok = tokens.sum().clamp_min(1)
    policy = -(surrogate * tokens).sum() / n_tok
    value_loss = F.mse_loss(value[q_rows], reward[q_rows]) if q_rows.any() else value.sum() * 0.0
    # size of each STM change as the decoder sees it (memory is read RMS-normalised, so its scale does
    # not matter): 1 - cosine between a slot before and after the update, in [0, 2]
    if read.shape[1] > 1:
        stm_reg = (1 - F.cosine_similarity(read[:, 1:], read[:, :-1], dim=-1)).mean()
    else:
        stm_reg = value.sum() * 0.0
    loss = policy + cfg.value_weight * value_loss + cfg.stm_change_weight * stm_reg
    return loss, {
        "reward": rollout.mean_reward,
        "value_loss": float(value_loss.detach()),
        "stm_change": float(stm_reg.detach()),
        "clipped": float(((ratio - 1).abs() > cfg.clip)[tokens].float().mean()) if tokens.any() else 0.0,
    }

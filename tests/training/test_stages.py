"""Each stage runs a few steps on a micro config and its loss goes down; loop resume is exact."""

from __future__ import annotations

import pytest
import torch

from reactor_rt.training.batches import collate_dialogues
from reactor_rt.training.dialogues import DialogueGenerator
from reactor_rt.training.joint import JointConfig
from reactor_rt.training.loop import OptimConfig, lr_at, run_loop
from reactor_rt.training.memory_aware import (
    COMPONENTS,
    Curriculum,
    component_of,
    dialogue_loss,
    set_trainable,
    stm_per_turn,
    unfreeze_plan,
)
from reactor_rt.training.memory_pretrain import MemoryPretrainConfig, pseudo_target
from reactor_rt.training.mrl import Critic, MRLConfig, _forward, collect_rollout, ppo_loss
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

MAX_LEN = 48


def test_stage1_joint_lm_loss_goes_down(micro_model, tmp_path):
    m = micro_model()
    r = run_joint_lm(m, JointSpec(steps=25, batch=16, lr=3e-3, warmup=3), seed=0, max_len=MAX_LEN,
                     checkpoint_dir=tmp_path, progress=False)  # fmt: skip
    assert r.last_loss < r.first_loss - 0.5, r
    assert {"ar", "mlm"} <= set(r.extra)
    assert (tmp_path / "1_joint_lm" / "done.pt").exists()


def test_stage2_sft_loss_goes_down(micro_model):
    m = micro_model()
    spec = JointSpec(steps=25, batch=16, lr=3e-3, warmup=3, joint=JointConfig(noise_std=0.3))
    r = run_sft(m, spec, seed=0, max_len=MAX_LEN, progress=False)
    assert r.last_loss < r.first_loss - 0.5, r


def test_stage3_memory_pretrain_cosine_goes_up_and_trains_memory_only(micro_model):
    m = micro_model()
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if component_of(n) != "memory"}
    spec = MemoryPretrainSpec(steps=20, batch=8, turns=3, lr=3e-3, warmup=2)
    r = run_memory_pretrain(m, spec, seed=0, max_len=MAX_LEN, progress=False)
    assert r.last_loss < r.first_loss - 0.02, r
    for n, p in m.named_parameters():
        if n in frozen and not n.startswith("decoder_layers"):
            assert torch.equal(p, frozen[n]), f"{n} changed in stage 3"


def test_pseudo_target_is_a_weighted_mean():
    stm = torch.randn(2, 3, 4, 8)
    enc = torch.randn(3, 2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    target = pseudo_target(stm, enc, mask, 0.25)
    pooled0 = enc[:, 0].mean(1)  # (L, D)
    pooled1 = enc[:, 1, :3].mean(1)
    assert torch.allclose(target[0], 0.75 * stm[0] + 0.25 * pooled0[:, None, :], atol=1e-6)
    assert torch.allclose(target[1], 0.75 * stm[1] + 0.25 * pooled1[:, None, :], atol=1e-6)
    assert MemoryPretrainConfig().first > MemoryPretrainConfig().start


def test_stage4_memory_aware_loss_goes_down_with_unfreezing(micro_model, tmp_path):
    m = micro_model()
    spec = MemoryAwareSpec(steps=30, batch=8, lr=3e-3, warmup=3, max_turns=4, warmup_two_turn=5, save_every=10,
                           unfreeze=((0.0, ("memory",)), (0.2, ("memory", "encoder")), (0.4, COMPONENTS)))  # fmt: skip
    emb = m.embedding.weight.detach().clone()
    r = run_memory_aware(m, spec, seed=0, max_len=MAX_LEN, checkpoint_dir=tmp_path, progress=False)
    assert r.last_loss < r.first_loss - 0.5, r
    assert not torch.equal(emb, m.embedding.weight)  # unfrozen in the end
    assert all(p.requires_grad for p in m.parameters())  # left fully trainable


def test_unfreeze_plan_and_components(micro_model):
    m = micro_model()
    kinds = {component_of(n) for n, _ in m.named_parameters()}
    assert kinds == set(COMPONENTS)
    sched = ((0.0, ("memory",)), (0.5, COMPONENTS))
    assert unfreeze_plan(0, 10, sched) == ("memory",)
    assert unfreeze_plan(5, 10, sched) == COMPONENTS
    set_trainable(m, ("memory",))
    assert m.memory_attention.layers[0].attn.project_q is not None
    assert not m.embedding.weight.requires_grad and m.stm_init.requires_grad
    assert (
        m.decoder_layers[0].cross_attn.q.weight.requires_grad
        if hasattr(m.decoder_layers[0].cross_attn, "q")
        else True
    )
    with pytest.raises(ValueError):
        set_trainable(m, ("nope",))


def test_curriculum_warms_up_then_grows():
    import random

    c = Curriculum(steps=100, max_turns=12, start=3, warmup_steps=10, grow_fraction=0.5, mix_short=0.0)
    rng = random.Random(0)
    assert [c.turns(s, rng) for s in range(10)] == [2] * 10
    assert c.turns(10, rng) == 3
    assert c.turns(50, rng) == 12 and c.turns(99, rng) == 12
    mixed = Curriculum(steps=100, warmup_steps=0, mix_short=1.0)
    assert all(2 <= mixed.turns(99, rng) <= 12 for _ in range(50))


def test_memory_chain_turn_t_reads_the_stm_after_turn_t_minus_1(micro_model, micro_tokenizer):
    m = micro_model().eval()
    gen = DialogueGenerator("train", seed=1)
    batch = collate_dialogues(micro_tokenizer, [gen.dialogue(3) for _ in range(2)], MAX_LEN)
    b, n, t = batch.shape
    with torch.no_grad():
        enc = m.encode(batch.ids.view(b * n, t), attention_mask=batch.mask.view(b * n, t))
        states = stm_per_turn(m, enc.view(enc.shape[0], b, n, t, -1), batch.mask)
        stm = m.init_stm(b)
        assert torch.equal(states[:, 0], stm)
        for turn in range(1, n):
            ids, mask = batch.ids[:, turn - 1], batch.mask[:, turn - 1]
            stm = m.update_memory(stm, m.encode(ids, attention_mask=mask), attention_mask=mask)
            assert torch.allclose(states[:, turn], stm, atol=1e-5)
        loss, stats = dialogue_loss(m, batch)
        assert torch.isfinite(loss) and stats["turns"] == 3


def test_stage5_mrl_runs_and_ppo_moves_policy_towards_reward(micro_model, micro_tokenizer):
    m = micro_model()
    r = run_mrl(
        m, MRLSpec(iterations=2, batch=4, turns=3, eval_dialogues=4), seed=0, max_len=MAX_LEN, progress=False
    )
    for key in ("reward_greedy_before", "reward_greedy_after", "reward", "value_loss", "stm_change"):
        assert key in r.extra
    # PPO direction: reward half of the sampled answers; a few updates must raise their log-prob
    gen = DialogueGenerator("train", seed=3)
    dialogues = [gen.dialogue(3) for _ in range(8)]
    cfg = MRLConfig(stm_change_weight=0.0)
    rollout = collect_rollout(m, dialogues, cfg, torch.Generator().manual_seed(0))
    rewarded = torch.zeros_like(rollout.reward)
    rewarded[::2] = 1.0
    rollout.reward = rewarded * rollout.is_question
    critic = Critic(m.config.dim)
    opt = torch.optim.Adam([*m.parameters(), *critic.parameters()], lr=3e-3)
    scored = rollout.batch.target[:, :, 1:] & rollout.is_question[..., None]  # (B, N, T-1)

    def mean_logp(rows):
        with torch.no_grad():
            logp = _forward(m, rollout.batch)[0].view(scored.shape)
        return float((logp * (scored & rows[..., None])).sum() / (scored & rows[..., None]).sum())

    good, bad = rollout.reward > 0, (rollout.reward == 0) & rollout.is_question
    before = mean_logp(good) - mean_logp(bad)
    losses = []
    for _ in range(6):
        loss, _ = ppo_loss(m, critic, rollout, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert mean_logp(good) - mean_logp(bad) > before + 0.1


def test_run_loop_resume_is_exact(tmp_path):
    def fresh():
        torch.manual_seed(0)
        return torch.nn.Linear(4, 1)

    data = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))

    def make_step(model, fail_at=None):
        def step(i):
            if i == fail_at:
                raise KeyboardInterrupt
            x = data[(i * 8) % 64 : (i * 8) % 64 + 8]
            return (model(x) - x.sum(1, keepdim=True)).pow(2).mean(), {}

        return step

    cfg = OptimConfig(steps=12, lr=1e-2, warmup=2)
    a = fresh()
    run_loop("a", a, make_step(a), cfg, progress=False)
    b = fresh()
    with pytest.raises(KeyboardInterrupt):
        run_loop("b", b, make_step(b, fail_at=7), cfg, checkpoint_dir=tmp_path, save_every=5, progress=False)
    c = fresh()
    r = run_loop("b", c, make_step(c), cfg, checkpoint_dir=tmp_path, save_every=5, progress=False)
    assert torch.equal(a.weight, c.weight) and torch.equal(a.bias, c.bias)
    d = fresh()  # a finished stage is loaded, not re-run
    r2 = run_loop("b", d, make_step(d, fail_at=0), cfg, checkpoint_dir=tmp_path, progress=False)
    assert torch.equal(d.weight, c.weight) and r2.last_loss == r.last_loss
    assert lr_at(0, cfg) < lr_at(1, cfg) == cfg.lr and lr_at(11, cfg) < cfg.lr

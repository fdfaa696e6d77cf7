"""MRL rollouts score only what the policy sampled, and the critic baseline never sees the answer."""

from __future__ import annotations

import dataclasses

import torch

from reactor_rt.template import build_prompt
from reactor_rt.training.batches import DialogueBatch
from reactor_rt.training.dialogues import Dialogue, DialogueGenerator, fact_turn
from reactor_rt.training.eval_recall import play_turns
from reactor_rt.training.mrl import Critic, MRLConfig, collect_rollout, ppo_loss


def _recall_rollout(model, cfg, n=4, seed=0):
    gen = DialogueGenerator("train", seed=seed)
    dialogues = [gen.recall_dialogue(1) for _ in range(n)]  # fact, filler, question about the fact
    return collect_rollout(model, dialogues, cfg, torch.Generator().manual_seed(seed))


def test_cut_short_answers_do_not_score_the_added_eos_and_answers_start_after_the_prompt(micro_model):
    m = micro_model()
    tok = m.tokenizer
    cfg = MRLConfig(max_new_tokens=3)
    rollout = _recall_rollout(m, cfg)
    b, n, _ = rollout.batch.shape
    cut = 0
    for i in range(b):
        for j in range(n):
            length = int(rollout.batch.mask[i, j].sum())
            start = len(build_prompt(tok, rollout.batch.dialogues[i].turns[j].query))
            target = rollout.batch.target[i, j]
            assert int(rollout.batch.ids[i, j, length - 1]) == tok.eos_id  # the interaction is closed
            assert not target[:start].any()
            if length - start - 1 == cfg.max_new_tokens:  # cut at the budget: [EOS] added, not sampled
                cut += 1
                assert target[start : length - 1].all() and not target[length - 1:].any(), (i, j)
            else:  # the model generated its [EOS]
                assert target[start:length].all() and not target[length:].any(), (i, j)
    assert cut > 0  # an untrained model with 3 tokens of budget is cut short


def test_the_critic_does_not_see_the_sampled_answer(micro_model):
    m = micro_model()
    cfg = MRLConfig(max_new_tokens=4)
    rollout = _recall_rollout(m, cfg, seed=1)
    # another answer to the last turn (a question): it changes no STM any turn reads, so the state of
    # every turn, and with it the critic's value, must stay the same
    ids = rollout.batch.ids.clone()
    last = rollout.batch.target[:, -1] & (ids[:, -1] != m.tokenizer.eos_id)
    assert last.any()
    ids[:, -1][last] = (ids[:, -1][last] + 1 - 8) % (m.tokenizer.vocab_size - 8) + 8  # other regular ids
    other = dataclasses.replace(rollout, batch=dataclasses.replace(rollout.batch, ids=ids))
    assert isinstance(other.batch, DialogueBatch)
    torch.manual_seed(0)
    critic = Critic(m.config.dim)
    with torch.no_grad():
        _, stats = ppo_loss(m, critic, rollout, cfg)
        _, stats_other = ppo_loss(m, critic, other, cfg)
    assert stats["value_loss"] == stats_other["value_loss"]


def test_played_answers_keep_a_pad_the_model_generated(micro_model):
    m = micro_model().eval()
    tok = m.tokenizer
    a, c = 40, 41  # two regular ids
    pad, eos = tok.pad_id, tok.eos_id
    # row 0 ends with [EOS]; row 1 is cut at the budget; row 2 was cut sooner (max_seq_len), so
    # generate padded it to the batch's width
    out = torch.tensor([[a, pad, c, eos], [a, pad, c, a], [a, c, pad, pad]])

    def fake_generate(ids, stm, **kwargs):
        return out

    m.generate = fake_generate  # type: ignore[method-assign]
    dialogues = [Dialogue((fact_turn("name", "Kalo", "Got it."),))] * 3
    rows = play_turns(m, dialogues).interactions
    prompt = build_prompt(tok, dialogues[0].turns[0].query)
    # a [PAD] the model generated stays, as in the runtime's memory update; the padding after a row does not
    assert rows[0][0] == [*prompt, a, pad, c, eos]
    assert rows[1][0] == [*prompt, a, pad, c, a, eos]
    assert rows[2][0] == [*prompt, a, c, eos]

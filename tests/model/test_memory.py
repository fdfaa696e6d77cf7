"""Memory write path: residual gate, memory-attention variants, MemoryKV."""

import pytest
import torch

from reactor_rt.model import MemoryKV, ReactiveTransformer, RxTConfig
from reactor_rt.model.memory import ResidualGate


def small(**changes):
    base = dict(vocab_size=300, dim=32, layers=2, heads=4, query_heads=2, kv_heads=2, ff_dim=48,
                moe_experts=0, stm_slots=8, max_seq_len=64, max_query_tokens=32)
    return RxTConfig(**{**base, **changes})


@pytest.mark.parametrize("kind", ["static", "elementwise", "linear"])
@pytest.mark.parametrize("per_slot", [True, False])
def test_gate_stays_in_open_unit_interval(kind, per_slot):
    torch.manual_seed(0)
    gate = ResidualGate(kind, slots=8, dim=32, per_slot=per_slot, bias_init=-1.0)
    with torch.no_grad():
        for p in gate.parameters():
            p.add_(0.1 * torch.randn_like(p))
    old, upd = 3 * torch.randn(3, 8, 32), 3 * torch.randn(3, 8, 32)
    g = gate.gate(old, upd)
    assert ((g > 0) & (g < 1)).all()
    assert g.shape[-1] == (32 if kind == "elementwise" else 1)
    assert g.shape[-2] == (8 if per_slot or kind == "elementwise" else 1)
    if kind == "elementwise":
        assert g.std() > 0  # one gate per element
    new = gate(old, upd)
    assert torch.allclose(new, (1 - g) * old + g * upd, atol=1e-5)


def test_fresh_gate_keeps_most_of_the_old_memory():
    gate = ResidualGate("elementwise", slots=8, dim=32, per_slot=True, bias_init=-1.0)
    g = gate.gate(torch.randn(1, 8, 32), torch.randn(1, 8, 32))
    assert torch.allclose(g, torch.sigmoid(torch.tensor(-1.0)).expand_as(g))
    assert (g < 0.5).all()


@pytest.mark.parametrize("variant", ["simple", "self", "interlayer", "gated-self-interlayer"])
@torch.no_grad()
def test_update_is_slot_permutation_equivariant(variant, perturbed):
    """Memory attention treats the STM as a set: permuting slots permutes the new STM the same way."""
    m = perturbed(small(memory_attention=variant, gate_per_slot=False))
    stm = torch.randn(1, 2, 8, 32)
    enc = m.encode(torch.randint(8, 260, (1, 10)))
    perm = torch.randperm(8)
    a = m.update_memory(stm, enc)[:, :, perm]
    b = m.update_memory(stm[:, :, perm], enc)
    assert torch.allclose(a, b, atol=1e-5)


@torch.no_grad()
def test_padding_is_ignored_by_the_update(perturbed):
    m = perturbed(small())
    stm = torch.randn(1, 2, 8, 32)
    ids = torch.randint(8, 260, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.tensor([[True] * 7 + [False] * 4])
    alone = m.update_memory(stm, m.encode(ids))
    batched = m.update_memory(stm, m.encode(padded, attention_mask=mask), attention_mask=mask)
    assert torch.allclose(alone, batched, atol=1e-5)


@torch.no_grad()
def test_memory_stays_bounded_for_every_gate(perturbed):
    for gate in ("static", "elementwise", "linear"):
        m = perturbed(small(residual_gate=gate, memory_attention="gated-self-interlayer"))
        stm = m.init_stm(1) + torch.randn(1, 2, 8, 32)
        start = stm.norm()
        for i in range(150):
            g = torch.Generator().manual_seed(i)
            stm = m.update_memory(stm, m.encode(torch.randint(8, 260, (1, 12), generator=g)))
        assert torch.isfinite(stm).all() and stm.norm() <= 4 * start, gate


def test_backprop_through_a_chain_of_updates(perturbed):
    m = perturbed(small(moe_experts=4, moe_top_k=2)).train()
    stm = m.init_stm(2)
    for _ in range(3):
        stm = m.update_memory(stm, m.encode(torch.randint(8, 260, (2, 6))))
    logits, aux = m.decode_with_aux(torch.randint(8, 260, (2, 5)), stm)
    (logits.logsumexp(-1).mean() + 0.01 * aux).backward()
    for name in ("stm_init", "embedding.weight", "encoder_layers.0.attn.qkv.weight",
                 "memory_attention.layers.0.attn.kv.weight", "memory_attention.layers.1.gate.bias",
                 "decoder_layers.1.ffn.router.weight"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@torch.no_grad()
def test_memory_kv_rows_and_cat(perturbed):
    m = perturbed(small())
    stm = torch.randn(3, 2, 8, 32)
    kv = m.memory_kv(stm)
    assert kv.k.shape == (2, 3, 2, 8, 8) and kv.batch_size == 3 == len(kv)
    assert torch.equal(kv[1].k, m.memory_kv(stm[1:2]).k)
    joined = MemoryKV.cat([kv[2], kv[0]])
    assert torch.equal(joined.v, kv[[2, 0]].v)
    perm = torch.randperm(8)
    assert torch.allclose(m.memory_kv(stm[:, :, perm]).k, kv.k[:, :, :, perm], atol=1e-6)


@torch.no_grad()
def test_an_all_padding_row_stays_finite_and_leaves_other_rows_alone(perturbed):
    m = perturbed(small())
    stm = torch.randn(2, 2, 8, 32)
    ids = torch.randint(8, 260, (2, 6))
    mask = torch.tensor([[True] * 6, [False] * 6])
    new = m.update_memory(stm, m.encode(ids, attention_mask=mask), attention_mask=mask)
    assert torch.isfinite(new).all()
    alone = m.update_memory(stm[:1], m.encode(ids[:1]))
    assert torch.allclose(new[:1], alone, atol=1e-5)


@pytest.mark.parametrize("variant", ["self", "gated-self-interlayer"])
@torch.no_grad()
def test_fused_memory_attention_takes_its_own_head_counts(variant, perturbed):
    """memory_query_heads / memory_kv_heads (and the memory_pre_* pair of the first stage) set the memory
    attention's heads in the fused layout too (they were silently ignored there: any SQA/GQA/MQA choice
    for memory attention gave the self-attention head counts)."""
    cfg = small(memory_attention=variant, heads=4, query_heads=4, kv_heads=4, memory_query_heads=2,
                memory_kv_heads=1, memory_pre_query_heads=2, memory_pre_kv_heads=2)
    m = perturbed(cfg)
    layer = m.memory_attention.layers[0]
    assert (layer.attn.query_heads, layer.attn.kv_heads) == (2, 1)
    assert (layer.pre.query_heads, layer.pre.kv_heads) == (2, 2)
    assert layer.null_k.shape == (1, 1, 1, cfg.head_dim)
    stm = torch.randn(2, 2, 8, 32)
    new = m.update_memory(stm, m.encode(torch.randint(8, 260, (2, 10))))
    assert new.shape == stm.shape and torch.isfinite(new).all()
    # the default (None) keeps the self-attention counts, so existing checkpoints load unchanged
    plain = ReactiveTransformer(small(memory_attention=variant)).memory_attention.layers[0]
    assert (plain.attn.query_heads, plain.attn.kv_heads, plain.pre.query_heads) == (2, 2, 2)


@pytest.mark.parametrize("update", ["fused", "staged"])
@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.float32])
@torch.no_grad()
def test_a_0_1_attention_mask_of_any_dtype_masks_like_a_bool_one(update, dtype, perturbed):
    """encode() takes a 0/1 mask of any dtype; update_memory must read the same mask the same way (a
    float mask went to attention as an additive bias, +1 on real keys and +0 on padding, so padding
    was attended; a long mask raised)."""
    m = perturbed(small(memory_update=update))
    ids = torch.randint(8, 260, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[0, 7:] = False
    enc = m.encode(ids, attention_mask=mask)
    stm = torch.randn(2, 2, 8, 32)
    expected = m.update_memory(stm, enc, attention_mask=mask)
    assert torch.equal(m.update_memory(stm, enc, attention_mask=mask.to(dtype)), expected)
    with pytest.raises(ValueError, match="attention_mask"):
        m.update_memory(stm, enc, attention_mask=mask[:, :5])


@pytest.mark.parametrize(("update", "variant"), [("fused", "simple"), ("fused", "self"), ("fused", "interlayer"),
                                                 ("fused", "gated-self-interlayer"), ("staged", "interlayer")])
@torch.no_grad()
def test_a_prepared_update_is_the_same_update(update, variant, perturbed):
    """prepare_memory does the STM side ahead (the runtime's updater runs it while the encoder encodes);
    update_prepared then gives update_memory's result bit for bit, padded batches included."""
    m = perturbed(small(memory_update=update, memory_attention=variant))
    ids = torch.randint(8, 260, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 6:] = False
    enc = m.encode(ids, attention_mask=mask)
    stm = torch.randn(2, 2, 8, 32)
    plan = m.prepare_memory(stm)
    assert (plan.layers is None) == (update == "staged")  # the staged layout computes it all at write time
    assert torch.equal(m.update_prepared(plan, enc, attention_mask=mask), m.update_memory(stm, enc, attention_mask=mask))
    assert torch.equal(m.update_prepared(m.prepare_memory(stm), enc), m.update_memory(stm, enc))
    with pytest.raises(ValueError, match="does not match"):
        m.update_prepared(m.prepare_memory(stm[:1]), enc)  # a plan of one memory, two encoded rows
    with pytest.raises(ValueError, match="stm must be"):
        m.prepare_memory(stm[0])

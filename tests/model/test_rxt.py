"""ReactiveTransformer: shared embedding, causal decoder, bidirectional encoder, memory as a set."""

import copy

import pytest
import torch

from reactor_rt.errors import ConfigError
from reactor_rt.model import ReactiveTransformer, RxTConfig
from reactor_rt.tokenizer import ByteTokenizer


def small(**changes):
    base = dict(vocab_size=300, dim=32, layers=2, heads=4, query_heads=2, kv_heads=2, ff_dim=48,
                moe_experts=4, moe_top_k=2, stm_slots=8, max_seq_len=64, max_query_tokens=32)
    return RxTConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ReactiveTransformer(small()).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def rand_ids(b, t, seed=0):
    return torch.randint(8, 260, (b, t), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_decoder_cannot_see_the_future(model):
    x = rand_ids(2, 10)
    y = x.clone()
    y[:, 6:] = rand_ids(2, 4, seed=1)
    stm = torch.randn(2, 2, 8, 32)
    a, b = model.decode(x, stm), model.decode(y, stm)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-5)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-4)


@torch.no_grad()
def test_encoder_sees_both_ways(model):
    x = rand_ids(1, 10)
    y = x.clone()
    y[0, -1] = 8 + (int(x[0, -1]) - 7) % 250
    first = model.encode(x)[:, :, 0]
    assert not torch.allclose(first, model.encode(y)[:, :, 0], atol=1e-5)  # position 0 sees the last token


@torch.no_grad()
def test_right_padding_changes_nothing_for_real_tokens(model):
    x = rand_ids(1, 7)
    padded = torch.cat([x, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[True] * 7 + [False] * 3])
    stm = torch.randn(1, 2, 8, 32)
    assert torch.allclose(model.decode(x, stm), model.decode(padded, stm, attention_mask=mask)[:, :7], atol=1e-5)
    assert torch.allclose(model.encode(x), model.encode(padded, attention_mask=mask)[:, :, :7], atol=1e-5)


@torch.no_grad()
def test_memory_is_a_set(model):
    x = rand_ids(1, 9)
    stm = torch.randn(1, 2, 8, 32)
    perm = torch.randperm(8)
    assert torch.allclose(model.decode(x, stm), model.decode(x, stm[:, :, perm]), atol=1e-5)
    other = torch.randn(1, 2, 8, 32)
    assert not torch.allclose(model.decode(x, stm), model.decode(x, other), atol=1e-4)


@torch.no_grad()
def test_decode_from_precomputed_memory_kv_equals_from_stm(model):
    x, stm = rand_ids(2, 6), torch.randn(2, 2, 8, 32)
    assert torch.equal(model.decode(x, stm), model.decode(x, memory_kv=model.memory_kv(stm)))
    with pytest.raises(ValueError, match="exactly one"):
        model.decode(x)


def test_one_embedding_for_encoder_decoder_and_heads(model):
    shapes = [(n, tuple(p.shape)) for n, p in model.named_parameters() if tuple(p.shape) == (300, 32)]
    assert shapes == [("embedding.weight", (300, 32))]
    x = rand_ids(1, 5)
    model.zero_grad()
    model.decode(x, model.init_stm(1)).sum().backward()
    dec_grad = model.embedding.weight.grad.clone()
    model.zero_grad()
    model.mlm_logits(model.encode(x)[-1]).sum().backward()
    assert dec_grad.abs().sum() > 0 and model.embedding.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_init_stm_is_learned_small_and_a_copy(model):
    stm = model.init_stm(3)
    assert stm.shape == (3, 2, 8, 32)
    assert torch.equal(stm[0], stm[2]) and torch.equal(stm[0], model.stm_init.detach())
    fresh = ReactiveTransformer(small())
    assert fresh.init_stm(1).std().item() == pytest.approx(0.02, rel=0.2)
    with torch.no_grad():
        s = model.init_stm(1)
        s.add_(1.0)
    assert not torch.equal(s[0], model.stm_init.detach())


@torch.no_grad()
def test_aux_loss_for_moe_and_dense(model):
    x = rand_ids(2, 6)
    logits, aux = model.decode_with_aux(x, model.init_stm(2))
    assert logits.shape == (2, 6, 300) and aux.item() >= 1.0 - 1e-5
    dense = ReactiveTransformer(small(moe_experts=0)).eval()
    assert dense.decode_with_aux(x, dense.init_stm(2))[1].item() == 0.0


@torch.no_grad()
def test_update_memory_is_pure_and_checks_shapes(model):
    stm = torch.randn(1, 2, 8, 32)
    before = stm.clone()
    new = model.update_memory(stm, model.encode(rand_ids(1, 5)))
    assert torch.equal(stm, before) and not torch.allclose(new, stm)
    with pytest.raises(ValueError, match="stm must be"):
        model.update_memory(torch.randn(1, 3, 8, 32), model.encode(rand_ids(1, 5)))


def test_tokenizer_must_fit_the_vocabulary():
    with pytest.raises(ConfigError, match="vocab_size"):
        ReactiveTransformer(small(vocab_size=100), ByteTokenizer())


@torch.no_grad()
def test_casting_the_model_keeps_the_rotary_table_complex(model):
    """Module.to(dtype) also casts complex buffers (dropping their imaginary part): the RoPE table must
    stay complex64 and follow the model only to its device."""
    ids = torch.randint(8, 200, (2, 12), generator=torch.Generator().manual_seed(3))
    stm = model.init_stm(2)
    expected = model.decode(ids, stm)
    cis = model.rope.cis.clone()
    same = copy.deepcopy(model).to("cpu", torch.float32)
    assert torch.equal(same.rope.cis, cis) and torch.equal(same.decode(ids, stm), expected)
    low = copy.deepcopy(model).to(torch.bfloat16)
    assert low.rope.cis.dtype == torch.complex64 and torch.equal(low.rope.cis, cis)
    assert next(low.parameters()).dtype == torch.bfloat16
    got = low.decode(ids, stm.to(torch.bfloat16)).float()
    assert (got - expected).abs().max() <= 0.1 * expected.abs().max()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9

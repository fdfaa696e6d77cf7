"""RoPE and the attention module (MHA / GQA / MQA / SQA by head counts)."""

import pytest
import torch

from reactor_rt.model.attention import Attention, RotaryEmbedding, apply_rope


def test_rope_keeps_norms_and_encodes_relative_positions():
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=16, max_len=64)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def at(x, pos):
        return apply_rope(x, rope.tables(1, start=pos))

    assert torch.allclose(at(q, 7).norm(), q.norm(), atol=1e-5)
    assert torch.allclose(at(q, 0), q)  # position 0 is the identity
    a = (at(q, 10) * at(k, 4)).sum()
    b = (at(q, 30) * at(k, 24)).sum()
    assert torch.allclose(a, b, atol=1e-4)  # only the distance (6) matters
    assert not torch.allclose(a, (at(q, 30) * at(k, 4)).sum(), atol=1e-4)


def test_rope_per_row_positions_match_the_table():
    rope = RotaryEmbedding(head_dim=8, max_len=32)
    pos = torch.tensor([3, 17])
    assert torch.equal(rope.at(pos)[:, 0, 0], rope.cis[pos])
    with pytest.raises(ValueError, match="max_seq_len"):
        rope.tables(40)


@pytest.mark.parametrize(
    ("heads", "query_heads", "kv_heads"), [(8, 8, 8), (8, 8, 2), (8, 8, 1), (8, 4, 4), (8, 2, 2), (8, 4, 1)]
)
def test_head_counts_shape_the_projections(heads, query_heads, kv_heads):
    dim, hd = 64, 8
    attn = Attention(dim, heads, query_heads, kv_heads, fused=True)
    assert attn.qkv.out_features == (query_heads + 2 * kv_heads) * hd
    assert attn.out.in_features == query_heads * hd  # SQA: output projection from the reduced width
    x = torch.randn(2, 5, dim)
    q, k, v = attn.project_qkv(x)
    assert q.shape == (2, query_heads, 5, hd) and k.shape == v.shape == (2, kv_heads, 5, hd)
    assert attn.attend(q, k, v, is_causal=True).shape == x.shape


def test_gqa_equals_mha_with_repeated_kv_heads():
    torch.manual_seed(0)
    attn = Attention(32, 4, 4, 2, fused=False)
    x, ctx = torch.randn(1, 3, 32), torch.randn(1, 6, 32)
    q = attn.project_q(x)
    k, v = attn.project_kv(ctx)
    out = attn.attend(q, k, v)
    mha = Attention(32, 4, 4, 4, fused=False)
    mha.out.weight.data.copy_(attn.out.weight)
    y = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    )
    assert torch.allclose(out, mha.out(y.transpose(1, 2).reshape(1, 3, 32)), atol=1e-6)


def test_causal_self_attention_cannot_see_the_future():
    torch.manual_seed(0)
    attn = Attention(32, 4, 2, 2, fused=True)
    rope = RotaryEmbedding(8, 16)
    x = torch.randn(1, 6, 32)
    y = x.clone()
    y[0, 4:] = torch.randn(2, 32)

    def run(inp):
        q, k, v = attn.project_qkv(inp, rope.tables(6))
        return attn.attend(q, k, v, is_causal=True)

    assert torch.allclose(run(x)[:, :4], run(y)[:, :4], atol=1e-6)
    assert not torch.allclose(run(x)[:, 4:], run(y)[:, 4:], atol=1e-4)

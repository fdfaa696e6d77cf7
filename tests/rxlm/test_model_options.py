"""The model options added for imported checkpoints, on native models (no converter involved)."""

from __future__ import annotations

import pytest
import torch

from reactor_rt.errors import ConfigError
from reactor_rt.model import ReactiveTransformer, RxTConfig

IMPORT_LIKE = dict(
    vocab_size=300, dim=32, layers=2, heads=4, query_heads=4, kv_heads=2, ff_dim=24, moe_experts=3, moe_top_k=2,
    moe_shared_expert=True, stm_slots=5, max_seq_len=64, max_query_tokens=32, cross_query_heads=2,
    cross_kv_heads=1, encoder_query_heads=2, encoder_kv_heads=2, memory_query_heads=4, memory_kv_heads=1,
    memory_pre_query_heads=2, memory_pre_kv_heads=2, attn_out_bias=True, ffn_bias=True, ffn_activation="gelu",
    moe_expert_bias=True, moe_global_bias=True, moe_shared_bias=True, moe_weighted_shared=True, moe_shared_count=2,
    tied_head=False, final_norm=False, stateless_layers=("dense", "moe"), final_stateless_layers=("moe",),
    stateless_ff_dim=20, memory_update="staged", memory_attn_out_bias=True, residual_gate="linear",
    gate_activation="tanh", gate_slot_status="linear", attn_gate="sigmoid", cross_attn_gate="silu",
    encoder_attn_gate="sigmoid",
)


def _model(**changes: object) -> ReactiveTransformer:
    torch.manual_seed(0)
    model = ReactiveTransformer(RxTConfig(**{**IMPORT_LIKE, **changes})).eval()
    with torch.no_grad():  # move biases and gates off their zero/neutral initial values
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_defaults_add_no_parameters() -> None:
    names = set(ReactiveTransformer(RxTConfig.preset("tiny")).state_dict())
    assert not any(n.startswith("head.") for n in names)
    for part in ("stateless", "b_gate_up", "b_down", "global_bias", "attn.gate.", "status_proj",
                 "mean_norm", "pre_gate", ".out.bias", "gate_up.bias"):
        assert not any(part in n for n in names), part
    assert "decoder_norm.weight" in names


@pytest.mark.parametrize(("variant", "groups"),
                         [("simple", 1), ("self", 1), ("interlayer", 2), ("gated-self-interlayer", 1)])
def test_cached_generation_matches_the_no_cache_decoder(variant: str, groups: int) -> None:
    """KV-cache rows of stateless layers sit before/after the memory layers'; memory K/V use the
    cross-attention's own head counts."""
    model = _model(memory_attention=variant, memory_groups=groups)
    prompts = [torch.randint(8, 300, (7,)), torch.randint(8, 300, (4,))]
    stm = model.init_stm(1)
    with torch.no_grad():
        stm = model.update_memory(stm, model.encode(prompts[0][None]))
        out = model.generate(prompts, stm.expand(2, -1, -1, -1), max_new_tokens=5)
        for row, prompt in enumerate(prompts):
            ids = prompt[None]
            for step in range(out.shape[1]):
                nxt = int(model.decode(ids, stm)[0, -1].argmax())
                assert int(out[row, step]) == nxt, (row, step)
                if nxt == model.tokenizer.eos_id:
                    break
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)


def test_save_and_load_keep_the_options(tmp_path) -> None:
    model = _model()
    model.save_pretrained(tmp_path)
    loaded = ReactiveTransformer.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    ids = torch.randint(8, 300, (2, 6))
    stm = model.init_stm(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(ids, stm), model.decode(ids, stm))
        torch.testing.assert_close(loaded.update_memory(stm, loaded.encode(ids)), model.update_memory(stm, model.encode(ids)))


def test_aux_loss_averages_over_moe_layers_only() -> None:
    model = _model()
    ids = torch.randint(8, 300, (1, 6))
    _, aux = model.decode_with_aux(ids, model.init_stm(1))
    assert torch.isfinite(aux) and aux > 0


@pytest.mark.parametrize(
    "changes",
    [dict(residual_gate="none"), dict(gate_activation="tanh"), dict(memory_attn_out_bias=True),
     dict(cross_kv_heads=3), dict(memory_query_heads=16), dict(memory_groups=2)],
)
def test_invalid_combinations_are_config_errors(changes: dict) -> None:
    with pytest.raises(ConfigError):
        RxTConfig.preset("tiny", **changes)


def test_plain_residual_gate_adds() -> None:
    model = _model(residual_gate="none", memory_attention="simple")
    layer = model.memory_attention.layers[0]
    old, new = torch.randn(1, 5, 32), torch.randn(1, 5, 32)
    torch.testing.assert_close(layer.gate(old, new), old + new)

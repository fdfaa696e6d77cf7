"""RxTConfig: presets, validation messages, derived values."""

import pytest
from pydantic import ValidationError

from reactor_rt.errors import ConfigError, ReactorError
from reactor_rt.model import ReactiveTransformer, RxTConfig


def test_tiny_preset_is_a_few_million_parameters():
    cfg = RxTConfig.preset("tiny")
    assert (cfg.dim, cfg.layers, cfg.heads, cfg.query_heads, cfg.kv_heads) == (128, 4, 8, 4, 4)
    assert (cfg.moe_experts, cfg.moe_top_k, cfg.stm_slots) == (4, 2, 64)
    assert cfg.temperature == 0.0
    n = ReactiveTransformer(cfg).num_parameters()
    assert 2_000_000 <= n <= 4_000_000, n


def test_micro_preset_shape():
    cfg = RxTConfig.preset("micro")
    assert (cfg.dim, cfg.layers, cfg.heads, cfg.query_heads) == (128, 6, 8, 4)
    assert (cfg.moe_experts, cfg.moe_top_k, cfg.stm_slots, cfg.vocab_size) == (12, 2, 256, 7500)
    assert cfg.max_seq_len == 256


def test_preset_with_changes_and_derived_values():
    cfg = RxTConfig.preset("tiny", moe_experts=0)
    assert cfg.head_dim == 16 and not cfg.is_moe
    with pytest.raises(ConfigError, match="unknown preset"):
        RxTConfig.preset("huge")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dim": 100, "heads": 8}, "divisible by heads"),
        ({"query_heads": 9}, "query_heads"),
        ({"query_heads": 3, "kv_heads": 5}, "kv_heads"),
        ({"query_heads": 4, "kv_heads": 3}, "must divide query_heads"),
        ({"memory_attention": "no-such-variant"}, "memory_attention"),
        ({"residual_gate": "tanh"}, "residual_gate"),
        ({"dim": 0}, "dim"),
        ({"layers": -1}, "layers"),
        ({"moe_top_k": 5}, "moe_top_k"),
        ({"max_query_tokens": 256}, "max_query_tokens"),
        ({"max_query_tokens": 252}, "room for an answer"),  # max_seq_len 256: 252 + 3 template tokens + 2
        ({"top_p": 0.0}, "top_p"),
        ({"no_such_field": 1}, "no_such_field"),
        # a stateless MoE layer needs experts (it was accepted, then failed at the first forward)
        ({"moe_experts": 0, "stateless_layers": ("moe",)}, "stateless MoE layers need moe_experts"),
        ({"moe_experts": 0, "final_stateless_layers": ("dense", "moe")}, "stateless MoE layers"),
    ],
)
def test_invalid_config_says_what_is_wrong(changes, message):
    with pytest.raises(ConfigError, match=message) as info:
        RxTConfig.preset("tiny", **changes)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ReactorError)


def test_a_query_at_the_token_limit_leaves_room_for_an_answer():
    """The largest accepted limit still fits a prompt at the limit plus an answer token and [EOS]."""
    from reactor_rt.template import build_prompt
    from reactor_rt.tokenizer import ByteTokenizer

    cfg = RxTConfig.preset("tiny", max_query_tokens=251)
    prompt = build_prompt(ByteTokenizer(), "x" * cfg.max_query_tokens)  # one token per byte
    assert len(prompt) + 2 <= cfg.max_seq_len


def test_config_is_frozen_and_round_trips_through_json():
    cfg = RxTConfig.preset("tiny")
    with pytest.raises(ValidationError):
        cfg.dim = 64  # type: ignore[misc]
    assert RxTConfig(**cfg.model_dump()) == cfg
    assert RxTConfig.model_validate_json(cfg.model_dump_json()) == cfg

"""The RxLM converter on small fixture checkpoints written by the tests (no rxlm needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from rxlm_fixtures import (
    DIM,
    LAYERS,
    SLOTS,
    VOCAB,
    component,
    rxlm_config,
    rxlm_tensors,
    write_checkpoint,
)

from reactor_rt.cli import main
from reactor_rt.errors import CheckpointError, ReactorError
from reactor_rt.model import ReactiveTransformer
from reactor_rt.rxlm import UnsupportedCheckpointError, convert, load_rxlm, map_config


def test_round_trip_loads_and_runs(tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path / "src")
    out = convert(src, tmp_path / "out")
    assert out == tmp_path / "out"
    model = ReactiveTransformer.from_pretrained(out).eval()
    direct = load_rxlm(src)
    for name, tensor in direct.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    c = model.config
    assert (c.memory_update, c.memory_attention, c.tied_head, c.final_norm) == ("staged", "gated-self-interlayer", False, False)
    ids = torch.randint(7, VOCAB - 4, (2, 9))
    stm = model.init_stm(2)
    with torch.no_grad():
        logits = model.decode(ids, stm)
        new = model.update_memory(stm, model.encode(ids))
        out_ids = model.generate(ids, new, max_new_tokens=4)
    assert logits.shape == (2, 9, VOCAB)
    assert new.shape == (2, LAYERS, SLOTS, DIM) and not torch.equal(new, stm)
    assert out_ids.shape[0] == 2 and out_ids.shape[1] <= 4
    # the cached generation path agrees with the no-cache logits for the first token
    assert out_ids[:, 0].tolist() == model.decode(ids, new)[:, -1].argmax(-1).tolist()
    assert model.tokenizer.bos_id == 2 and model.tokenizer.query_id == 4


def test_tensor_values_land_in_place(tmp_path: Path) -> None:
    cfg = rxlm_config()
    tensors = rxlm_tensors(cfg)
    model = load_rxlm(write_checkpoint(tmp_path, cfg, tensors))
    sd = model.state_dict()
    assert torch.equal(sd["embedding.weight"], tensors["decoder.model.embedding.weight"])
    assert torch.equal(sd["stm_init"], tensors["decoder.model.stm.memory"][:, 0])
    assert torch.equal(sd["head.bias"], tensors["decoder.model.head.bias"])
    ref = "decoder.model.layers.1.attention"
    assert torch.equal(sd["decoder_layers.1.self_attn.qkv.weight"],
                       torch.cat([tensors[f"{ref}.{p}_proj.weight"] for p in "qkv"]))
    assert torch.equal(sd["memory_attention.layers.0.gate.weight"],
                       tensors["memory_attention.model.residual_gate_layers.0.gate"])


def test_gated_ffn_keeps_the_reference_semantics(tmp_path: Path) -> None:
    """RxLM's gated FFN is fc2(l * act(g)) with (l, g) = fc1(x).chunk(2): the linear half comes first."""
    cfg = rxlm_config(decoder={"use_moe": False})
    tensors = rxlm_tensors(cfg)
    model = load_rxlm(write_checkpoint(tmp_path, cfg, tensors))
    x = torch.randn(5, DIM)
    p = "decoder.model.layers.0.ff"
    lin, g = F.linear(x, tensors[f"{p}.fc1.linear.weight"], tensors[f"{p}.fc1.linear.bias"]).chunk(2, dim=-1)
    expected = F.linear(lin * F.silu(g), tensors[f"{p}.fc2.weight"], tensors[f"{p}.fc2.bias"])
    with torch.no_grad():
        got = model.decoder_layers[0].ffn(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_moe_keeps_the_reference_semantics(tmp_path: Path) -> None:
    """softmax router, top-k renormalised, experts w1 (E, D, 2F) linear-half first, a global bias, and a
    shared expert with its own biases."""
    cfg = rxlm_config()
    tensors = rxlm_tensors(cfg)
    model = load_rxlm(write_checkpoint(tmp_path, cfg, tensors))
    p = "decoder.model.layers.1.ff"
    x = torch.randn(7, DIM)
    probs = F.softmax(x @ tensors[f"{p}.router.gate.weight"].T, dim=-1)
    top, idx = probs.topk(2, dim=-1)
    top = top / top.sum(-1, keepdim=True)
    expected = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for j in range(2):
            e = int(idx[n, j])
            lin, g = (x[n] @ tensors[f"{p}.w1"][e]).chunk(2)
            expected[n] += top[n, j] * ((lin * F.silu(g)) @ tensors[f"{p}.w2"][e])
    expected += tensors[f"{p}.global_bias"]
    s = f"{p}.shared_expert"
    lin, g = F.linear(x, tensors[f"{s}.fc1.linear.weight"], tensors[f"{s}.fc1.linear.bias"]).chunk(2, dim=-1)
    expected += F.linear(lin * F.silu(g), tensors[f"{s}.fc2.weight"], tensors[f"{s}.fc2.bias"])
    with torch.no_grad():
        for rows in (x, x[:1]):  # the dense small-batch path and the single-token path
            got, _ = model.decoder_layers[1].ffn(rows, need_aux=False)
            torch.testing.assert_close(got, expected[: rows.shape[0]], rtol=1e-5, atol=1e-5)


def _reference_moe(x: torch.Tensor, experts: list[tuple[torch.Tensor, ...]], router: torch.Tensor,
                   top_k: int) -> torch.Tensor:
    """RxLM routing over gated experts given as (fc1 weight (2F, D), fc1 bias, fc2 weight (D, F), fc2 bias)."""
    probs = F.softmax(x @ router.T, dim=-1)
    top, idx = probs.topk(top_k, dim=-1)
    top = top / top.sum(-1, keepdim=True)
    y = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for j in range(top_k):
            w1, b1, w2, b2 = experts[int(idx[n, j])]
            lin, g = F.linear(x[n], w1, b1).chunk(2)
            y[n] += top[n, j] * F.linear(lin * F.silu(g), w2, b2)
    return y


@pytest.mark.parametrize("layout", ["local-bias", "legacy"])
def test_moe_with_per_expert_biases(tmp_path: Path, layout: str) -> None:
    decoder = {"moe_bias_mode": "local"} if layout == "local-bias" else {"use_vectorized_moe": False}
    cfg = rxlm_config(decoder=decoder)
    tensors = rxlm_tensors(cfg)
    model = load_rxlm(write_checkpoint(tmp_path, cfg, tensors))
    assert model.config.moe_expert_bias and not model.config.moe_global_bias
    p = "decoder.model.layers.0.ff"
    if layout == "legacy":
        experts = [tuple(tensors[f"{p}.experts.{e}.{n}"] for n in
                         ("fc1.linear.weight", "fc1.linear.bias", "fc2.weight", "fc2.bias")) for e in range(3)]
    else:
        experts = [(tensors[f"{p}.w1"][e].T, tensors[f"{p}.b1"][e], tensors[f"{p}.w2"][e].T, tensors[f"{p}.b2"][e])
                   for e in range(3)]
    x = torch.randn(100, DIM)  # 100 tokens x 3 experts > MoE.dense_limit: the sparse path
    expected = _reference_moe(x, experts, tensors[f"{p}.router.gate.weight"], 2)
    shared = f"{p}.shared_experts.0" if layout == "legacy" else f"{p}.shared_expert"
    lin, g = F.linear(x, tensors[f"{shared}.fc1.linear.weight"], tensors[f"{shared}.fc1.linear.bias"]).chunk(2, -1)
    expected += F.linear(lin * F.silu(g), tensors[f"{shared}.fc2.weight"], tensors[f"{shared}.fc2.bias"])
    ffn = model.decoder_layers[0].ffn
    with torch.no_grad():
        for rows in (x, x[:5], x[:1]):  # sparse, dense and single-token paths
            got, _ = ffn(rows, need_aux=False)
            torch.testing.assert_close(got, expected[: rows.shape[0]], rtol=1e-5, atol=1e-5)


def test_gated_attention_semantics(tmp_path: Path) -> None:
    """RxLM's gated attention: out_proj(attention(...) * sigmoid(gate_proj(query input)))."""
    cfg = rxlm_config(decoder={"use_gated_attention": True, "self_att_type": "mha", "cross_att_type": "mha"})
    tensors = rxlm_tensors(cfg)
    model = load_rxlm(write_checkpoint(tmp_path, cfg, tensors))
    p = "decoder.model.layers.0.memory_cross_attention"
    x, stm = torch.randn(1, 5, DIM), torch.randn(1, SLOTS, DIM)
    hd = DIM // 4
    q = F.linear(x, tensors[f"{p}.q_proj.weight"]).view(1, 5, 4, hd).transpose(1, 2)
    k = F.linear(stm, tensors[f"{p}.k_proj.weight"]).view(1, SLOTS, 4, hd).transpose(1, 2)
    v = F.linear(stm, tensors[f"{p}.v_proj.weight"]).view(1, SLOTS, 4, hd).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 5, DIM)
    y = y * torch.sigmoid(F.linear(x, tensors[f"{p}.gate_proj.weight"]))
    expected = F.linear(y, tensors[f"{p}.out_proj.weight"], tensors[f"{p}.out_proj.bias"])
    attn = model.decoder_layers[0].cross_attn
    with torch.no_grad():
        mk, mv = attn.project_kv(stm)
        got = attn.attend(attn.project_q(x), mk, mv, gate_input=x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tanh", [False, True])
def test_slot_gate_semantics(tmp_path: Path, tanh: bool) -> None:
    cfg = rxlm_config(mem={"use_tanh_residual_gate": tanh})
    tensors = rxlm_tensors(cfg)
    model = load_rxlm(write_checkpoint(tmp_path, cfg, tensors))
    w = tensors["memory_attention.model.residual_gate_layers.1.gate"]  # (S, 1)
    old, new = torch.randn(2, SLOTS, DIM), torch.randn(2, SLOTS, DIM)
    logit = w * (old + new).mean(-1, keepdim=True)
    if tanh:
        g = torch.tanh(logit)
        expected = (1 + g) * new + (1 - g) * old
    else:
        g = torch.sigmoid(logit)
        expected = g * new + (1 - g) * old
    with torch.no_grad():
        got = model.memory_attention.layers[1].gate(old, new)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("decoder", "mem", "expected"),
    [
        ({"self_att_type": "gqa", "att_groups": 2, "cross_att_type": "mqa"}, {},
         {"query_heads": 4, "kv_heads": 2, "cross_query_heads": 4, "cross_kv_heads": 1}),
        ({"self_att_type": "mha", "cross_att_type": "sqa", "cross_att_query_groups": 2, "cross_att_groups": 2}, {},
         {"query_heads": 4, "kv_heads": 4, "cross_query_heads": 2, "cross_kv_heads": 2}),
        ({"moe_bias_mode": "off", "moe_shared_experts_bias_mode": "global", "moe_use_weighted_shared_experts": True,
          "shared_expert_dim": 16},
         {"use_gated_residual": False},
         {"moe_global_bias": False, "moe_shared_global_bias": True, "moe_shared_bias": False,
          "moe_weighted_shared": True, "moe_shared_ff_dim": 16, "residual_gate": "none"}),
        ({"use_head_norm": True, "head_norm_type": "rms_norm", "use_attention_output_bias": False,
          "ff_activation": "gelu"},
         {"residual_gate_type": "linear", "residual_gate_slot_status_type": "linear", "residual_per_slot_gate": False},
         {"final_norm": True, "attn_out_bias": False, "ffn_activation": "gelu", "residual_gate": "linear",
          "gate_slot_status": "linear", "gate_per_slot": False}),
        ({"use_gated_attention": True, "use_gated_cross_attention": False}, {},
         {"attn_gate": "sigmoid", "cross_attn_gate": None, "encoder_attn_gate": None}),
        ({"use_gated_attention": True, "gated_attention_activation": "silu"}, {},
         {"attn_gate": "silu", "cross_attn_gate": "silu"}),
        ({"stateless_layers_config": ["dense", "moe"], "final_stateless_layers_config": ["dense"],
          "dense_layer_dim": 20}, {},
         {"stateless_layers": ("dense", "moe"), "final_stateless_layers": ("dense",), "stateless_ff_dim": 20}),
    ],
)
def test_option_mapping(tmp_path: Path, decoder: dict, mem: dict, expected: dict) -> None:
    encoder = {"use_attention_output_bias": False} if decoder.get("use_attention_output_bias") is False else {}
    if "ff_activation" in decoder:
        encoder["ff_activation"] = decoder["ff_activation"]
    cfg = rxlm_config(decoder=decoder, encoder=encoder, mem=mem)
    config, _ = map_config(cfg)
    for field, value in expected.items():
        assert getattr(config, field) == value, field
    # and the weights of that layout convert and run
    model = load_rxlm(write_checkpoint(tmp_path, cfg))
    with torch.no_grad():
        ids = torch.randint(7, VOCAB - 4, (1, 6))
        stm = model.init_stm(1)
        assert torch.isfinite(model.decode(ids, stm)).all()
        assert torch.isfinite(model.update_memory(stm, model.encode(ids))).all()
        assert model.generate(ids, stm, max_new_tokens=3).shape[0] == 1


@pytest.mark.parametrize(("layout", "bias"), [("stacked", "local"), ("stacked", "global"), ("legacy", "local")])
def test_several_shared_experts(tmp_path: Path, layout: str, bias: str) -> None:
    """Shared experts mixed by softmax(shared_expert_gate(x)), plus the routed experts."""
    decoder = {"num_shared_experts": 2, "moe_shared_experts_bias_mode": bias, "moe_bias_mode": "off",
               "router_amp": True, "router_dtype": "bfloat16"}
    if layout == "legacy":
        decoder["use_vectorized_moe"] = False
    cfg = rxlm_config(decoder=decoder)
    tensors = rxlm_tensors(cfg)
    model = load_rxlm(write_checkpoint(tmp_path, cfg, tensors))
    assert (model.config.moe_shared_count, model.config.moe_router_bf16) == (2, True)
    p = "decoder.model.layers.1.ff"
    if layout == "legacy":
        names = ("fc1.linear.weight", "fc1.linear.bias", "fc2.weight", "fc2.bias")
        experts = [tuple(tensors[f"{p}.experts.{e}.{n}"] for n in names) for e in range(3)]
        shared = [tuple(tensors[f"{p}.shared_experts.{k}.{n}"] for n in names) for k in range(2)]
    else:
        experts = [(tensors[f"{p}.w1"][e].T, None, tensors[f"{p}.w2"][e].T, None) for e in range(3)]
        local = bias == "local"
        shared = [(tensors[f"{p}.shared_w1"][k].T, tensors[f"{p}.shared_b1"][k] if local else None,
                   tensors[f"{p}.shared_w2"][k].T, tensors[f"{p}.shared_b2"][k] if local else None) for k in range(2)]
    x = torch.randn(6, DIM)
    with torch.no_grad():
        # routing in bf16 as the reference's autocast router does
        probs = F.softmax(F.linear(x.bfloat16(), tensors[f"{p}.router.gate.weight"].bfloat16()), dim=-1)
        top, idx = probs.topk(2, dim=-1)
        top = (top / (top.sum(-1, keepdim=True) + 1e-9)).float()
        expected = torch.zeros_like(x)
        for n in range(6):
            for j in range(2):
                w1, b1, w2, b2 = experts[int(idx[n, j])]
                lin, g = F.linear(x[n], w1, b1).chunk(2)
                expected[n] += top[n, j] * F.linear(lin * F.silu(g), w2, b2)
        mix = F.softmax(x @ tensors[f"{p}.shared_expert_gate.weight"].T, dim=-1)
        for k, (w1, b1, w2, b2) in enumerate(shared):
            lin, g = F.linear(x, w1, b1).chunk(2, dim=-1)
            expected += mix[:, k : k + 1] * F.linear(lin * F.silu(g), w2, b2)
        if bias == "global" and layout == "stacked":
            expected += tensors[f"{p}.shared_experts_bias"]
        got, _ = model.decoder_layers[1].ffn(x, need_aux=False)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_interlayer_variant_is_mapped_to_what_the_reference_builds() -> None:
    config, plan = map_config(rxlm_config(variant="interlayer"))
    assert config.memory_attention == "gated-self-interlayer"
    assert any("self-interlayer" in note for note in plan.notes)
    # the reference's default variant when config.json names none is "interlayer" too
    raw = rxlm_config()
    del raw["memory_attention_variant"]
    assert map_config(raw)[0].memory_attention == "gated-self-interlayer"


def test_grouped_variant_uses_a_mean_per_group(tmp_path: Path) -> None:
    cfg = rxlm_config(mem={"num_groups": 2}, variant="grouped-self-interlayer")
    model = load_rxlm(write_checkpoint(tmp_path, cfg))
    assert (model.config.memory_attention, model.config.memory_groups) == ("gated-self-interlayer", 2)
    # each layer's consolidation reads only its own group: with one layer per group, changing layer 1 of
    # the old STM leaves layer 0's update unchanged
    stm = torch.randn(1, LAYERS, SLOTS, DIM)
    encoded = torch.randn(LAYERS, 1, 5, DIM)
    other = stm.clone()
    other[:, 1] += 1.0
    with torch.no_grad():
        a, b = model.update_memory(stm, encoded), model.update_memory(other, encoded)
    torch.testing.assert_close(a[:, 0], b[:, 0])
    assert not torch.allclose(a[:, 1], b[:, 1])
    assert map_config(rxlm_config(variant="grouped-self-interlayer"))[0].memory_groups == 1


def test_tied_tensors_under_either_name(tmp_path: Path) -> None:
    cfg = rxlm_config()
    tensors = rxlm_tensors(cfg, embedding_name="encoder", stm_name="memory_attention")
    model = load_rxlm(write_checkpoint(tmp_path / "a", cfg, tensors))
    assert torch.equal(model.embedding.weight, tensors["encoder.model.embedding.weight"])
    assert torch.equal(model.stm_init, tensors["memory_attention.model.stm.memory"][:, 0])
    # saved before share_components(): both copies exist; the reference runs the encoder's embedding
    # and the memory attention's STM
    tensors["decoder.model.embedding.weight"] = torch.zeros(VOCAB, DIM)
    tensors["decoder.model.stm.memory"] = torch.zeros(LAYERS, 1, SLOTS, DIM)
    model = load_rxlm(write_checkpoint(tmp_path / "b", cfg, tensors))
    assert torch.equal(model.embedding.weight, tensors["encoder.model.embedding.weight"])
    assert torch.equal(model.stm_init, tensors["memory_attention.model.stm.memory"][:, 0])


def test_encoder_cross_attention_weights_are_ignored(tmp_path: Path) -> None:
    cfg = rxlm_config(encoder={"skip_memory_cross_attention": False})
    assert load_rxlm(write_checkpoint(tmp_path, cfg)) is not None


@pytest.mark.parametrize(
    ("decoder", "encoder", "mem", "variant", "named"),
    [
        ({"use_gated": False}, {}, {}, "self-interlayer", "use_gated=false"),
        ({"use_rms_norm": False}, {}, {}, "self-interlayer", "use_rms_norm=false"),
        ({"use_gated_attention": True, "gated_attention_activation": "softmax"}, {}, {}, "self-interlayer",
         "gated_attention_activation='softmax'"),
        ({"router_amp": True, "router_dtype": "float16"}, {}, {}, "self-interlayer", "router_dtype='float16'"),
        ({"use_vectorized_moe": True, "vectorized_moe_from_legacy": True}, {}, {}, "self-interlayer",
         "vectorized_moe_from_legacy"),
        ({"use_head_norm": True}, {}, {}, "self-interlayer", "head_norm_type='layer_norm'"),
        ({"att_query_groups": 1, "att_groups": 2}, {}, {}, "self-interlayer", "reversed SQA"),
        ({"self_att_type": "hybrid", "attn_layer_types": ["gla", "gla"]}, {}, {}, "self-interlayer", "hybrid"),
        ({"use_nope": True}, {}, {}, "self-interlayer", "use_nope"),
        ({}, {"use_moe": True}, {}, "self-interlayer", "MoE encoder"),
        ({}, {}, {"norm_type": "rms"}, "self-interlayer", "norm_type='rms'"),
        ({}, {}, {"att_type": "gma"}, "self-interlayer", "'gma'"),
        ({}, {}, {"num_groups": 3}, "grouped-self-interlayer", "num_groups=3 does not divide"),
        ({"use_moe": False, "stateless_layers_config": ["moe"]}, {}, {}, "self-interlayer", "dense decoder"),
        ({}, {"embed_dim": 64}, {}, "self-interlayer", "embed_dim differs"),
        # was read as "no shared-expert bias" without a word
        ({"moe_shared_experts_bias_mode": "both"}, {}, {}, "self-interlayer", "moe_shared_experts_bias_mode='both'"),
    ],
)
def test_unsupported_options_are_named(decoder: dict, encoder: dict, mem: dict, variant: str, named: str) -> None:
    with pytest.raises(UnsupportedCheckpointError, match="unsupported RxLM options") as info:
        map_config(rxlm_config(decoder=decoder, encoder=encoder, mem=mem, variant=variant))
    assert named in str(info.value)
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, ReactorError)


def test_every_unsupported_option_is_named_at_once() -> None:
    with pytest.raises(UnsupportedCheckpointError) as info:
        map_config(rxlm_config(decoder={"use_gated": False, "use_nope": True}, mem={"norm_type": "layer"}))
    message = str(info.value)
    assert "use_gated=false" in message and "use_nope" in message and "norm_type='layer'" in message


def test_unknown_tensors_are_an_error(tmp_path: Path) -> None:
    cfg = rxlm_config()
    tensors = rxlm_tensors(cfg)
    tensors["decoder.model.layers.0.attention.q_norm.weight"] = torch.ones(DIM // 4)
    with pytest.raises(UnsupportedCheckpointError, match="q_norm"):
        load_rxlm(write_checkpoint(tmp_path, cfg, tensors))


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a directory"):
        load_rxlm(tmp_path / "nope")
    src = write_checkpoint(tmp_path / "src")
    (src / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing model\.safetensors"):
        load_rxlm(src)
    src = write_checkpoint(tmp_path / "src2")
    (src / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_rxlm(src)
    src = write_checkpoint(tmp_path / "src3")
    (src / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_rxlm(src)
    (src / "config.json").write_text(json.dumps({"decoder_config": component()}))
    with pytest.raises(CheckpointError, match="encoder_config"):
        load_rxlm(src)
    (src / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing config\.json"):
        load_rxlm(src)


def test_missing_or_misshapen_tensor(tmp_path: Path) -> None:
    cfg = rxlm_config()
    tensors = rxlm_tensors(cfg)
    del tensors["decoder.model.layers.1.norm2.weight"]
    with pytest.raises(CheckpointError, match="norm2"):
        load_rxlm(write_checkpoint(tmp_path / "a", cfg, tensors))
    tensors = rxlm_tensors(cfg)
    tensors["decoder.model.head.bias"] = torch.zeros(VOCAB + 1)
    with pytest.raises(CheckpointError, match=r"head\.bias"):
        load_rxlm(write_checkpoint(tmp_path / "b", cfg, tensors))


def test_tokenizer_required_and_checked(tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path / "src", tokenizer=False)
    with pytest.raises(CheckpointError, match="no tokenizer"):
        load_rxlm(src)
    other = write_checkpoint(tmp_path / "other")
    assert load_rxlm(src, tokenizer=other / "tokenizer.json").tokenizer.eos_id == 3
    cfg = rxlm_config()
    cfg["tokenizer_config"]["eos_token_id"] = 9
    with pytest.raises(CheckpointError, match="eos_token_id=9 is 'w9'"):
        load_rxlm(write_checkpoint(tmp_path / "bad", cfg))


def test_tokenizer_gets_unused_special_tokens_when_there_is_room(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    src = write_checkpoint(tmp_path / "src")
    data = json.loads((src / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "[R]"]
    del data["model"]["vocab"]["[R]"]
    (src / "tokenizer.json").write_text(json.dumps(data))
    assert Tokenizer.from_file(str(src / "tokenizer.json")).token_to_id("[R]") is None
    model = load_rxlm(src)
    assert model.tokenizer.reasoning_id is not None and model.tokenizer.reasoning_id < VOCAB


def test_cli_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_checkpoint(tmp_path / "src")
    assert main(["import-rxlm", str(src), str(tmp_path / "out")]) == 0
    assert "converted" in capsys.readouterr().out
    assert ReactiveTransformer.from_pretrained(tmp_path / "out").config.memory_update == "staged"
    assert main(["import-rxlm", str(tmp_path / "missing"), str(tmp_path / "out2")]) == 1
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("decoder.model.layers.0.attention.q_proj.weight", torch.zeros(16, DIM - 1)),  # torch.cat fails
        ("decoder.model.layers.0.ff.w1", torch.zeros(3, DIM)),  # permute of a 2-D tensor fails
        ("memory_attention.model.residual_gate_layers.0.gate", torch.zeros(SLOTS - 1, 1)),  # reshape fails
        ("decoder.model.stm.memory", torch.zeros(LAYERS)),  # indexing fails
    ],
)
def test_tensor_that_breaks_the_layout_is_a_checkpoint_error(tmp_path: Path, name: str, bad: torch.Tensor) -> None:
    """A tensor whose shape cannot be rearranged was a bare RuntimeError/IndexError (a CLI traceback)."""
    cfg = rxlm_config()
    tensors = rxlm_tensors(cfg)
    tensors[name] = bad
    with pytest.raises(CheckpointError, match=r"do not match config\.json") as info:
        load_rxlm(write_checkpoint(tmp_path, cfg, tensors))
    assert name in str(info.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused(tmp_path: Path, value: float) -> None:
    cfg = rxlm_config()
    tensors = rxlm_tensors(cfg)
    tensors["decoder.model.head.weight"][3, 1] = value
    with pytest.raises(CheckpointError, match=r"decoder\.model\.head\.weight.*NaN or infinite"):
        load_rxlm(write_checkpoint(tmp_path, cfg, tensors))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_non_float_weights_are_refused(tmp_path: Path, dtype: torch.dtype) -> None:
    cfg = rxlm_config()
    tensors = rxlm_tensors(cfg)
    tensors["decoder.model.head.bias"] = torch.ones(VOCAB, dtype=dtype)
    with pytest.raises(CheckpointError, match=r"decoder\.model\.head\.bias.*not a floating-point"):
        load_rxlm(write_checkpoint(tmp_path, cfg, tensors))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints_convert_exactly(tmp_path: Path, dtype: torch.dtype) -> None:
    cfg = rxlm_config()
    tensors = {k: v.to(dtype) for k, v in rxlm_tensors(cfg).items()}
    model = load_rxlm(write_checkpoint(tmp_path, cfg, tensors))
    assert model.embedding.weight.dtype == torch.float32
    assert torch.equal(model.embedding.weight, tensors["decoder.model.embedding.weight"].float())
    # an unused tied duplicate is not the model's: its values are not checked (the reference overwrites it)
    tensors["encoder.model.embedding.weight"] = tensors.pop("decoder.model.embedding.weight")
    tensors["decoder.model.embedding.weight"] = torch.full((VOCAB, DIM), float("nan"), dtype=dtype)
    model = load_rxlm(write_checkpoint(tmp_path / "dup", cfg, tensors))
    assert torch.isfinite(model.embedding.weight).all()


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("decoder_config", "att_heads", None),  # was a TypeError from the head-count arithmetic
        ("decoder_config", "num_shared_experts", None),
        ("decoder_config", "num_layers", "2"),
        ("encoder_config", "use_gated", "false"),  # a true string: was read as a gated FFN
        ("decoder_config", "ff_activation", ["silu"]),  # unhashable: was a TypeError
        ("memory_attention_config", "residual_gate_init", "3.0"),
        ("memory_attention_config", "num_groups", "x"),  # was a ValueError from int()
    ],
)
def test_malformed_config_values_are_named(section: str, key: str, value: object) -> None:
    cfg = rxlm_config(variant="grouped-self-interlayer")
    cfg[section][key] = value
    with pytest.raises(CheckpointError, match=r"malformed RxLM config\.json") as info:
        map_config(cfg)
    assert f"{section}.{key}={value!r} (wrong type)" in str(info.value)


def test_config_nulls_the_reference_reads_alike_are_accepted() -> None:
    cfg = rxlm_config()
    cfg["decoder_config"].update(head_norm_type=None, att_groups=None, use_gated_cross_attention=None,
                                 shared_expert_dim=None, stateless_layers_config=None)
    cfg["memory_attention_config"]["interlayer_att_groups"] = None
    assert map_config(cfg)[0].kv_heads == 1


@pytest.mark.parametrize(("ids", "named"), [
    (["x"], "tokenizer_config is not an object"),
    ({"pad_token_id": "0"}, "tokenizer_config.pad_token_id='0' is not a token id"),
    ({"eos_token_id": 3.0}, "tokenizer_config.eos_token_id=3.0 is not a token id"),
    ({"bos_token_id": -1}, "tokenizer_config.bos_token_id=-1 is not a token id"),
])
def test_malformed_tokenizer_config_is_named(tmp_path: Path, ids: object, named: str) -> None:
    """A list was silently ignored (no id checked), a non-int id a TypeError from the tokenizers library."""
    cfg = rxlm_config()
    cfg["tokenizer_config"] = ids
    with pytest.raises(CheckpointError, match="tokenizer_config") as info:
        load_rxlm(write_checkpoint(tmp_path, cfg))
    assert named in str(info.value)


def test_tokenizer_config_null_ids_are_not_checked(tmp_path: Path) -> None:
    cfg = rxlm_config()
    cfg["tokenizer_config"]["pad_token_id"] = None
    assert load_rxlm(write_checkpoint(tmp_path, cfg)).tokenizer.pad_id == 0


def test_converting_into_the_source_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """reactor-rt writes config.json and model.safetensors, the RxLM files' own names: OUT == SRC
    overwrote the published checkpoint with the converted one."""
    src = write_checkpoint(tmp_path / "src")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    with pytest.raises(CheckpointError, match="would overwrite"):
        convert(src, src / ".." / "src")
    assert main(["import-rxlm", str(src), str(src)]) == 1
    assert "would overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_output_that_cannot_be_written_is_a_checkpoint_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An output path that is a file was a FileExistsError traceback from the CLI."""
    src = write_checkpoint(tmp_path / "src")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        convert(src, tmp_path / "file")
    with pytest.raises(CheckpointError, match="cannot write"):
        convert(src, tmp_path / "file" / "out")  # a parent that is a file: mkdir fails
    assert main(["import-rxlm", str(src), str(tmp_path / "file" / "out")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_unreadable_config_is_a_checkpoint_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreadable config.json was a bare PermissionError (tests run as root: chmod cannot show it)."""
    src = write_checkpoint(tmp_path / "src")
    real = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self.name == "config.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(CheckpointError, match=r"cannot read .*config\.json.*Permission denied"):
        load_rxlm(src)


def test_sharded_weights_are_named(tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path / "src")
    (src / "model.safetensors").rename(src / "model-00001-of-00001.safetensors")
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    with pytest.raises(CheckpointError, match=r"missing model\.safetensors \(sharded weights"):
        load_rxlm(src)


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), w, eps=torch.finfo(torch.float32).eps)


def test_gated_interlayer_checkpoint_without_interlayer_gates_is_the_interlayer_network(tmp_path: Path) -> None:
    """rxlm versions whose dispatch builds what "interlayer" names save no interlayer_gate_layers; such a
    gated checkpoint was refused ('RxLM weights lack ...interlayer_gate_layers.0.gate'). Its consolidation
    is: slots (normed) attend to the normed mean of the old STM layers, then the mean residual gate."""
    cfg = rxlm_config(variant="interlayer")
    tensors = {k: v for k, v in rxlm_tensors(cfg).items() if ".interlayer_gate_layers." not in k}
    model = load_rxlm(write_checkpoint(tmp_path, cfg, tensors))
    assert model.config.memory_attention == "interlayer"
    # with the gates in the file, the self-interlayer network rxlm 0.3.80 builds for "interlayer"
    assert load_rxlm(write_checkpoint(tmp_path / "own", cfg)).config.memory_attention == "gated-self-interlayer"

    m = "memory_attention.model"
    stm = torch.randn(1, LAYERS, SLOTS, DIM)
    encoded = torch.randn(LAYERS, 1, 5, DIM)
    mean = _rms(stm.mean(1), tensors[f"{m}.mean_stm_norm.weight"])  # (1, S, D)
    hd = DIM // 4
    expected = []
    layer0 = model.memory_attention.layers[0]
    for i, layer in enumerate(model.memory_attention.layers):
        a = f"{m}.mean_attention_layers.{i}"
        pre = _rms(stm[:, i], tensors[f"{m}.mean_memory_norm_layers.{i}.weight"])
        q = F.linear(pre, tensors[f"{a}.q_proj.weight"]).view(1, SLOTS, 2, hd).transpose(1, 2)  # SQA: 2 q heads
        k = F.linear(mean, tensors[f"{a}.k_proj.weight"]).view(1, SLOTS, 1, hd).transpose(1, 2)
        v = F.linear(mean, tensors[f"{a}.v_proj.weight"]).view(1, SLOTS, 1, hd).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k.expand(-1, 2, -1, -1), v.expand(-1, 2, -1, -1))
        y = F.linear(y.transpose(1, 2).reshape(1, SLOTS, 2 * hd), tensors[f"{a}.out_proj.weight"],
                     tensors[f"{a}.out_proj.bias"])
        w = tensors[f"{m}.mean_residual_gate_layers.{i}.gate"]  # elementwise sigmoid gate (S, 1)
        g = torch.sigmoid(w * (stm[:, i] + y).mean(-1, keepdim=True))
        updated = g * y + (1 - g) * stm[:, i]
        # the write stage is the one every variant shares (checked by the other tests)
        with torch.no_grad():
            q2 = layer.attn.project_q(layer.stm_norm(updated))
            k2, v2 = layer.attn.project_kv(layer.enc_norm(encoded[i]), model.memory_attention.rope.tables(5))
            expected.append(layer.gate(updated, layer.attn.attend(q2, k2, v2, None)))
    assert layer0.variant == "interlayer"
    with torch.no_grad():
        got = model.update_memory(stm, encoded)
    torch.testing.assert_close(got, torch.stack(expected, 1), rtol=1e-5, atol=1e-5)


def test_tokens_the_model_was_trained_with_are_never_added_fresh(tmp_path: Path) -> None:
    """With eos_token_id absent from tokenizer_config and the end token named [END], an untrained [EOS]
    was appended (id 92): the served model never recognised its own end token."""
    cfg = rxlm_config()
    del cfg["tokenizer_config"]["eos_token_id"]
    src = write_checkpoint(tmp_path / "src", cfg)
    assert load_rxlm(src).tokenizer.eos_id == 3  # found by name when the tokenizer has it
    data = json.loads((src / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "[EOS]"]
    data["model"]["vocab"]["[END]"] = data["model"]["vocab"].pop("[EOS]")
    (src / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"has no \['\[EOS\]'\]"):
        load_rxlm(src)

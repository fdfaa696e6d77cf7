"""Map an RxLM ``config.json`` onto an RxTConfig, or name every option reactor-rt cannot reproduce.

RxLM writes only the arguments a model was built with, so every key that is absent takes the reference's
default (``COMPONENT_DEFAULTS`` / ``MEMORY_DEFAULTS`` below, read from rxlm 0.3.80 as facts).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from reactor_rt.errors import CheckpointError
from reactor_rt.model.config import RxTConfig

__all__ = [
    "COMPONENT_DEFAULTS",
    "MEMORY_DEFAULTS",
    "TORCH_RMS_EPS",
    "ImportPlan",
    "UnsupportedCheckpointError",
    "map_config",
]

# torch.nn.RMSNorm(eps=None) uses the dtype's machine epsilon; RxLM builds every norm that way
TORCH_RMS_EPS = 1.1920928955078125e-07


class UnsupportedCheckpointError(CheckpointError):
    """Raised when an RxLM checkpoint uses options reactor-rt cannot reproduce (each one is named)."""


# RxTComponentBase defaults (decoder and encoder)
COMPONENT_DEFAULTS: dict[str, Any] = {
    "num_layers": 12, "vocab_size": 20000, "embed_dim": 512, "ff_dim": 1536, "att_heads": 16,
    "seq_len": 1024, "stm_size": 1024, "use_gated": True, "ff_activation": "swish", "use_rms_norm": True,
    "att_groups": 1, "use_moe": False, "num_experts": 1, "num_shared_experts": 1, "shared_expert_dim": None,
    "moe_top_k": 1, "self_att_type": "sqa", "cross_att_type": "sqa", "att_query_groups": None,
    "cross_att_groups": None, "cross_att_query_groups": None, "use_head_norm": False,
    "head_norm_type": "layer_norm", "skip_memory_cross_attention": False, "stateless_layers_config": None,
    "final_stateless_layers_config": None, "dense_layer_dim": 1536, "use_nope": False,
    "use_vectorized_moe": True, "vectorized_moe_from_legacy": False, "moe_bias_mode": "global",
    "moe_shared_experts_bias_mode": "local", "moe_use_weighted_shared_experts": False,
    "use_gated_attention": False, "use_gated_cross_attention": None, "use_attention_output_bias": True,
    "legacy_stm_in_encoder": False, "rope_base": 10000, "router_amp": False,
}

# memory-attention component defaults
MEMORY_DEFAULTS: dict[str, Any] = {
    "num_layers": 12, "embed_dim": 512, "att_heads": 16, "seq_len": 1024, "stm_size": 1024,
    "att_groups": 1, "att_type": "sqa", "att_query_groups": None, "interlayer_att_groups": 1,
    "interlayer_att_type": "sqa", "interlayer_att_query_groups": None, "norm_type": "classic-rms",
    "use_gated_residual": False, "residual_per_slot_gate": True, "residual_gate_init": 3.0,
    "residual_gate_type": "static", "residual_gate_slot_status_type": "mean", "use_tanh_residual_gate": True,
    "rope_base": 10000,
}

_ACTIVATIONS = {"swish": "silu", "silu": "silu", "gelu": "gelu", "relu": "relu", "sigmoid": "sigmoid",
                "linear": "linear", "tanh": "tanh"}


@dataclass(frozen=True)
class ImportPlan:
    """What the weight mapping needs to know beyond the RxTConfig."""

    variant_in_file: str  # memory_attention_variant as written in config.json
    decoder_head_norm: bool  # the decoder has a head_norm (mapped to decoder_norm)
    legacy_moe: bool  # experts stored one module each (``ff.experts.N.*``) instead of stacked ``w1``/``w2``
    notes: tuple[str, ...]  # reference defects or quirks met while mapping (documented in the README)


def _heads(kind: str, heads: int, groups: int | None, query_groups: int | None, where: str,
           problems: list[str]) -> tuple[int, int]:
    """(query heads, key/value heads) of an RxLM attention of `kind` with att_groups / query groups."""
    if kind == "mha":
        return heads, heads
    if kind == "mqa":
        return heads, 1
    if kind == "gqa":
        return heads, groups or 1
    if kind == "sqa":
        if query_groups is None:
            problems.append(f"{where}: sqa without att_query_groups (the reference cannot build it either)")
            return heads, heads
        kv = groups or 1
        if query_groups < kv:
            problems.append(f"{where}: reversed SQA (query groups {query_groups} < kv groups {kv})")
        return query_groups, kv
    problems.append(f"{where}: attention type {kind!r} (only mha, gqa, mqa, sqa are supported)")
    return heads, heads


# keys whose reference default is None but take a value of this type when set
_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "shared_expert_dim": (int,), "att_query_groups": (int,), "cross_att_groups": (int,),
    "cross_att_query_groups": (int,), "interlayer_att_query_groups": (int,), "use_gated_cross_attention": (bool,),
    "stateless_layers_config": (list,), "final_stateless_layers_config": (list,), "num_groups": (int,),
}
# integer keys where null means the same as 1 here (``groups or 1``) as in the reference
_NULLABLE_INTS = ("att_groups", "cross_att_groups", "interlayer_att_groups")


def _type_problems(c: dict[str, Any], defaults: dict[str, Any], where: str, problems: list[str]) -> None:
    """Name every value of the wrong JSON type: a damaged or hand-edited config.json must not be read
    loosely (12.5 layers, null heads or a list where a name belongs crash further on or read wrong).
    null stays allowed where Python reads it as the reference does (a false flag, a name checked below)."""
    for key in [*defaults, "num_groups"]:
        value, default = c.get(key), defaults.get(key)
        if value is None and (key not in defaults or key in _NULLABLE_INTS or isinstance(default, (bool, str))):
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float) or key == "rope_base":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:  # default None
            types = _OPTIONAL_TYPES.get(key, (int,))
            ok = value is None or (isinstance(value, types) and (bool in types or not isinstance(value, bool)))
        if not ok:
            problems.append(f"{where}.{key}={value!r} (wrong type)")


def _component_problems(c: dict[str, Any], where: str, problems: list[str]) -> None:
    if not c["use_gated"]:
        problems.append(f"{where}.use_gated=false (non-gated FFN)")
    if not c["use_rms_norm"]:
        problems.append(f"{where}.use_rms_norm=false (LayerNorm blocks)")
    if c["use_nope"]:
        problems.append(f"{where}.use_nope=true (no RoPE)")
    if (c["use_gated_attention"] or c.get("use_gated_cross_attention")) and c.get(
        "gated_attention_activation", "sigmoid"
    ) not in _ACTIVATIONS:
        problems.append(f"{where}.gated_attention_activation={c['gated_attention_activation']!r}")
    if c.get("use_qk_norm"):
        problems.append(f"{where}.use_qk_norm")
    if c["self_att_type"] == "hybrid" or c.get("attn_layer_types"):
        problems.append(f"{where}.self_att_type='hybrid' (linear-attention layers)")
    if c["ff_activation"] not in _ACTIVATIONS:
        problems.append(f"{where}.ff_activation={c['ff_activation']!r}")
    if c["use_moe"]:
        if c["use_vectorized_moe"] and c["vectorized_moe_from_legacy"]:
            problems.append(f"{where}.vectorized_moe_from_legacy=true (two expert layouts at once)")
        for key in ("moe_bias_mode", "moe_shared_experts_bias_mode"):
            if c[key] not in ("global", "local", "off"):
                problems.append(f"{where}.{key}={c[key]!r}")
        if c["router_amp"] and c.get("router_dtype", "float32") == "float16":
            problems.append(f"{where}: router_amp with router_dtype='float16'")


def map_config(raw: dict[str, Any], tensor_names: Iterable[str] = ()) -> tuple[RxTConfig, ImportPlan]:
    """RxLM config.json (already parsed) -> (RxTConfig, ImportPlan); UnsupportedCheckpointError names
    every option that cannot be reproduced, CheckpointError when a section is missing.

    tensor_names (of model.safetensors) reveal the legacy MoE layout in checkpoints whose config.json
    predates the ``use_vectorized_moe`` switch, and which network a gated "interlayer" variant holds
    (with interlayer gates the self-interlayer one rxlm 0.3.80 builds, without them the interlayer one).
    """
    for key in ("decoder_config", "encoder_config", "memory_attention_config"):
        if not isinstance(raw.get(key), dict):
            raise CheckpointError(f"RxLM config.json has no {key!r} object")
    dec = {**COMPONENT_DEFAULTS, **raw["decoder_config"]}
    enc = {**COMPONENT_DEFAULTS, **raw["encoder_config"]}
    mem = {**MEMORY_DEFAULTS, **raw["memory_attention_config"]}
    problems: list[str] = []
    _type_problems(dec, COMPONENT_DEFAULTS, "decoder_config", problems)
    _type_problems(enc, COMPONENT_DEFAULTS, "encoder_config", problems)
    _type_problems(mem, MEMORY_DEFAULTS, "memory_attention_config", problems)
    if problems:
        raise CheckpointError("malformed RxLM config.json: " + "; ".join(problems))
    notes: list[str] = []
    _component_problems(dec, "decoder_config", problems)
    _component_problems(enc, "encoder_config", problems)
    if dec["skip_memory_cross_attention"]:
        problems.append("decoder_config.skip_memory_cross_attention=true (a decoder without memory)")
    if enc["use_moe"]:
        problems.append("encoder_config.use_moe=true (MoE encoder)")
    if dec["use_head_norm"] and dec["head_norm_type"] != "rms_norm":
        problems.append(f"decoder_config.head_norm_type={dec['head_norm_type']!r} (only rms_norm)")
    if dec["ff_activation"] != enc["ff_activation"]:
        problems.append("decoder and encoder use different ff_activation")
    if mem["norm_type"] != "classic-rms":
        problems.append(f"memory_attention_config.norm_type={mem['norm_type']!r} (only classic-rms)")
    for key in ("embed_dim", "att_heads", "stm_size", "num_layers", "rope_base"):
        values = {dec[key], enc[key], mem[key]}
        if len(values) > 1:
            problems.append(f"{key} differs between decoder, encoder and memory attention: {sorted(values)}")
    if dec["vocab_size"] != enc["vocab_size"]:
        problems.append("decoder and encoder vocab_size differ (they share one embedding)")
    if dec["use_attention_output_bias"] != enc["use_attention_output_bias"]:
        problems.append("decoder and encoder differ in use_attention_output_bias")

    names = list(tensor_names)
    variant = raw.get("memory_attention_variant", "interlayer")
    groups, memory_kind = 1, "gated-self-interlayer"
    if variant == "grouped-self-interlayer":
        groups = int(mem.get("num_groups") or 1)
        if mem["num_layers"] % groups:
            problems.append(f"memory_attention_config.num_groups={groups} does not divide num_layers")
    elif variant == "interlayer":
        if mem["use_gated_residual"] and names and not any(
            n.startswith("memory_attention.model.interlayer_gate_layers.") for n in names
        ):
            # gated, yet no interlayer gates: saved by an rxlm whose dispatch builds the interlayer network
            # it names (kv = the normalised layer mean), which the staged "interlayer" variant computes
            memory_kind = "interlayer"
            notes.append("memory_attention_variant 'interlayer' without interlayer gates: the interlayer network")
        else:
            # reference defect: its dispatch builds the self-interlayer network for "interlayer" too (rxlm
            # 0.3.80). Without residual gates the file cannot tell: that version is assumed
            notes.append("memory_attention_variant 'interlayer' is built by the reference as self-interlayer")
    elif variant != "self-interlayer":
        problems.append(f"memory_attention_variant={variant!r}")

    h = dec["att_heads"]
    sq, skv = _heads(dec["self_att_type"], h, dec["att_groups"], dec["att_query_groups"], "decoder self-attention", problems)
    eq, ekv = _heads(enc["self_att_type"], h, enc["att_groups"], enc["att_query_groups"], "encoder self-attention", problems)
    cq, ckv = _heads(dec["cross_att_type"], h, dec["cross_att_groups"] or dec["att_groups"],
                     dec["cross_att_query_groups"] or dec["att_query_groups"], "memory cross-attention", problems)
    mq, mkv = _heads(mem["att_type"], h, mem["att_groups"], mem["att_query_groups"], "memory attention", problems)
    pq, pkv = _heads(mem["interlayer_att_type"], h, mem["interlayer_att_groups"],
                     mem["interlayer_att_query_groups"], "interlayer attention", problems)
    for kind in list(dec["stateless_layers_config"] or []) + list(dec["final_stateless_layers_config"] or []):
        if kind not in ("dense", "moe"):
            problems.append(f"stateless layer kind {kind!r}")
        elif kind == "moe" and not dec["use_moe"]:
            problems.append("a 'moe' stateless layer in a dense decoder (use_moe=false)")
    if problems:
        raise UnsupportedCheckpointError("unsupported RxLM options: " + "; ".join(problems))

    legacy = bool(dec["use_moe"]) and (
        not dec["use_vectorized_moe"] or any(".ff.experts.0." in name for name in names)
    )
    if legacy:
        # the legacy experts (and shared experts) are gated FFNs with their own biases; no global bias
        notes.append("legacy MoE layout: per-expert modules stacked on import")
    def attn_gate(c: dict[str, Any], on: bool) -> str | None:
        return _ACTIVATIONS[c.get("gated_attention_activation", "sigmoid")] if on else None

    cross_gated = dec["use_gated_attention"] if dec["use_gated_cross_attention"] is None else dec["use_gated_cross_attention"]
    gate = mem["residual_gate_type"] if mem["use_gated_residual"] else "none"
    seq_len = int(dec["seq_len"])
    fields: dict[str, Any] = dict(
        vocab_size=dec["vocab_size"], dim=dec["embed_dim"], layers=dec["num_layers"], heads=h,
        query_heads=sq, kv_heads=skv, ff_dim=dec["ff_dim"],
        moe_experts=dec["num_experts"] if dec["use_moe"] else 0,
        moe_top_k=dec["moe_top_k"] if dec["use_moe"] else 1,
        moe_shared_expert=bool(dec["use_moe"] and dec["num_shared_experts"] >= 1),
        moe_shared_count=max(1, int(dec["num_shared_experts"])),
        moe_router_bf16=bool(dec["use_moe"] and dec["router_amp"] and dec.get("router_dtype") == "bfloat16"),
        stm_slots=dec["stm_size"], memory_attention=memory_kind, residual_gate=gate,
        gate_per_slot=bool(mem["residual_per_slot_gate"]), max_seq_len=seq_len,
        max_query_tokens=max(1, seq_len // 2), rope_theta=float(dec["rope_base"]), norm_eps=TORCH_RMS_EPS,
        encoder_query_heads=eq, encoder_kv_heads=ekv, cross_query_heads=cq, cross_kv_heads=ckv,
        memory_query_heads=mq, memory_kv_heads=mkv, memory_pre_query_heads=pq, memory_pre_kv_heads=pkv,
        attn_out_bias=bool(dec["use_attention_output_bias"]),
        attn_gate=attn_gate(dec, dec["use_gated_attention"]), cross_attn_gate=attn_gate(dec, cross_gated),
        encoder_attn_gate=attn_gate(enc, enc["use_gated_attention"]), ffn_activation=_ACTIVATIONS[dec["ff_activation"]],
        ffn_bias=True, encoder_ff_dim=enc["ff_dim"],
        moe_shared_ff_dim=None if legacy else dec["shared_expert_dim"],
        moe_shared_bias=legacy or dec["moe_shared_experts_bias_mode"] == "local",
        moe_global_bias=bool(dec["use_moe"]) and not legacy and dec["moe_bias_mode"] == "global",
        moe_shared_global_bias=not legacy and dec["moe_shared_experts_bias_mode"] == "global",
        moe_weighted_shared=not legacy and bool(dec["moe_use_weighted_shared_experts"]),
        moe_expert_bias=bool(dec["use_moe"]) and (legacy or dec["moe_bias_mode"] == "local"),
        tied_head=False, final_norm=bool(dec["use_head_norm"]),
        stateless_layers=tuple(dec["stateless_layers_config"] or ()),
        final_stateless_layers=tuple(dec["final_stateless_layers_config"] or ()),
        stateless_ff_dim=dec["dense_layer_dim"], memory_update="staged", memory_attn_out_bias=True,
        gate_activation="tanh" if mem["use_tanh_residual_gate"] else "sigmoid",
        gate_slot_status=mem["residual_gate_slot_status_type"], gate_init=float(mem["residual_gate_init"]),
        memory_groups=groups,
    )
    try:
        config = RxTConfig(**fields)
    except ValueError as exc:
        raise UnsupportedCheckpointError(f"RxLM config maps to an invalid RxTConfig: {exc}") from exc
    return config, ImportPlan(variant, bool(dec["use_head_norm"]), legacy, tuple(notes))

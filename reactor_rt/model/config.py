"""RxTConfig: every hyper-parameter of a Reactive Transformer, validated, plus the named presets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from reactor_rt.errors import ConfigError

__all__ = ["MEMORY_ATTENTION_VARIANTS", "PRESETS", "RESIDUAL_GATES", "RxTConfig"]

MEMORY_ATTENTION_VARIANTS = ("simple", "self", "interlayer", "gated-self-interlayer")
RESIDUAL_GATES = ("static", "elementwise", "linear")
_PROMPT_TOKENS = 3  # [BOS][Q] query [A]: the template's tokens around a query (reactor_rt.template)

MemoryAttentionKind = Literal["simple", "self", "interlayer", "gated-self-interlayer"]
ResidualGateKind = Literal["static", "elementwise", "linear", "none"]
Activation = Literal["silu", "gelu", "relu", "sigmoid", "tanh", "linear"]
StatelessLayerKind = Literal["dense", "moe"]


class RxTConfig(BaseModel):
    """Shape and behaviour of one Reactive Transformer (decoder, encoder, memory attention, sampler).

    Attention kind follows from the head counts: ``query_heads < heads`` is Sparse Query Attention
    (the output projection then takes the reduced width ``query_heads * head_dim``), ``kv_heads <
    query_heads`` is GQA (MQA at 1). Invalid values raise ``ConfigError`` (a ``ValueError``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: int = Field(512, gt=0)
    dim: int = Field(128, gt=0)
    layers: int = Field(4, gt=0)
    heads: int = Field(8, gt=0)
    query_heads: int = Field(4, gt=0)
    kv_heads: int = Field(4, gt=0)
    ff_dim: int = Field(256, gt=0)
    moe_experts: int = Field(4, ge=0)  # 0 = dense SwiGLU decoder FFN
    moe_top_k: int = Field(2, gt=0)
    moe_shared_expert: bool = False
    stm_slots: int = Field(64, gt=0)
    memory_attention: MemoryAttentionKind = "interlayer"
    # fused layout: memory.py's ResidualGate; staged layout: memory_staged.py's SlotGate (RxLM semantics,
    # plus "none" = a plain residual, staged only)
    residual_gate: ResidualGateKind = "elementwise"
    gate_per_slot: bool = True
    # sigmoid(-1) ~ 0.27: a fresh model keeps ~3/4 of the old memory per update (see memory.py)
    gate_bias_init: float = -1.0
    # a small learned initial STM lets the first write dominate the normalised slots (TRAINING_NOTES)
    stm_init_std: float = Field(0.02, gt=0)
    max_seq_len: int = Field(256, gt=1)
    max_query_tokens: int = Field(128, gt=0)
    rope_theta: float = Field(10000.0, gt=0)
    norm_eps: float = Field(1e-6, gt=0)
    temperature: float = Field(0.0, ge=0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1.0)

    # ---- options for imported checkpoints (reactor_rt.rxlm); the defaults keep the native design.
    # Head counts per attention block; None = the self-attention counts above.
    encoder_query_heads: int | None = Field(None, gt=0)
    encoder_kv_heads: int | None = Field(None, gt=0)
    cross_query_heads: int | None = Field(None, gt=0)
    cross_kv_heads: int | None = Field(None, gt=0)
    memory_query_heads: int | None = Field(None, gt=0)
    memory_kv_heads: int | None = Field(None, gt=0)
    memory_pre_query_heads: int | None = Field(None, gt=0)  # the self/interlayer stage
    memory_pre_kv_heads: int | None = Field(None, gt=0)
    attn_out_bias: bool = False  # bias on the output projection of decoder/encoder attention
    # gated attention: heads' output * act(Linear(query input)); None = no gate
    attn_gate: Activation | None = None  # decoder self-attention
    cross_attn_gate: Activation | None = None  # memory cross-attention
    encoder_attn_gate: Activation | None = None
    ffn_activation: Activation = "silu"  # of every gated FFN: down(act(gate(x)) * up(x))
    ffn_bias: bool = False  # biases on dense gated FFNs (decoder, encoder, stateless dense layers)
    encoder_ff_dim: int | None = Field(None, gt=0)  # None = ff_dim
    moe_shared_ff_dim: int | None = Field(None, gt=0)  # None = ff_dim
    moe_shared_bias: bool = False  # biases inside the shared expert
    moe_global_bias: bool = False  # one learned bias added to the routed experts' sum
    moe_shared_global_bias: bool = False  # one learned bias added to the shared expert's output
    moe_weighted_shared: bool = False  # scale routed by k/(k+S) and shared by S/(k+S), S shared experts
    moe_expert_bias: bool = False  # biases inside every routed expert
    moe_shared_count: int = Field(1, ge=1)  # shared experts (with moe_shared_expert); >1: softmax-mixed
    moe_router_bf16: bool = False  # route in bfloat16 (a reference trained with a bf16 router)
    tied_head: bool = True  # False: an own output projection (with bias) instead of the embedding
    final_norm: bool = True  # RMS norm before the output head
    # decoder layers without memory cross-attention, before / after the memory layers
    stateless_layers: tuple[StatelessLayerKind, ...] = ()
    final_stateless_layers: tuple[StatelessLayerKind, ...] = ()
    stateless_ff_dim: int | None = Field(None, gt=0)  # dense stateless layers; None = ff_dim
    # "fused": one attention per layer (memory.py). "staged": a consolidation attention (self /
    # interlayer) with its own residual gate, then the write attention with another (memory_staged.py).
    memory_update: Literal["fused", "staged"] = "fused"
    memory_attn_out_bias: bool = False  # staged only
    gate_activation: Literal["sigmoid", "tanh"] = "sigmoid"  # staged only; tanh: (1+G)*new + (1-G)*old
    gate_slot_status: Literal["mean", "linear"] = "mean"  # staged only: how a slot is summarised
    gate_init: float = 0.0  # staged only: initial static/elementwise gate value
    # staged only: split the layers into this many consecutive groups, each with its own interlayer
    # mean; 1 = one mean over all layers
    memory_groups: int = Field(1, ge=1)

    def __init__(self, **data: Any) -> None:
        # pydantic's ValidationError is already a ValueError; re-raise as our ConfigError so callers can
        # catch every reactor-rt error by one root, with pydantic's readable message kept.
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(f"invalid RxTConfig: {exc}") from None

    @model_validator(mode="after")
    def _check_shapes(self) -> RxTConfig:
        problems = []
        if self.dim % self.heads:
            problems.append(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        elif (self.dim // self.heads) % 2:
            problems.append(f"head_dim (dim/heads = {self.dim // self.heads}) must be even for RoPE")
        if self.query_heads > self.heads:
            problems.append(f"query_heads ({self.query_heads}) must be <= heads ({self.heads})")
        if self.kv_heads > self.query_heads or self.query_heads % self.kv_heads:
            problems.append(
                f"kv_heads ({self.kv_heads}) must divide query_heads ({self.query_heads}) "
                "(GQA/MQA share each key/value head among a whole group of query heads)"
            )
        if self.moe_experts and self.moe_top_k > self.moe_experts:
            problems.append(f"moe_top_k ({self.moe_top_k}) must be <= moe_experts ({self.moe_experts})")
        if not self.moe_experts and "moe" in (*self.stateless_layers, *self.final_stateless_layers):
            problems.append("stateless MoE layers need moe_experts > 0 (their experts follow moe_experts)")
        # a query at the limit is a prompt of max_query_tokens + 3 ([BOS][Q] query [A]), and its answer
        # needs two more positions (a token and [EOS]): else the limit admits queries that cannot run
        if self.max_query_tokens + _PROMPT_TOKENS + 2 > self.max_seq_len:
            problems.append(
                f"max_query_tokens ({self.max_query_tokens}) must be <= max_seq_len - {_PROMPT_TOKENS + 2} "
                f"({self.max_seq_len - _PROMPT_TOKENS - 2}): a query at the limit needs {_PROMPT_TOKENS} "
                "template tokens and room for an answer"
            )
        for name in ("encoder", "cross", "memory", "memory_pre"):
            hq, hkv = self.heads_of(name)
            if hq > self.heads:
                problems.append(f"{name}_query_heads ({hq}) must be <= heads ({self.heads})")
            if hkv > hq or hq % hkv:
                problems.append(f"{name}_kv_heads ({hkv}) must divide {name}_query_heads ({hq})")
        if self.layers % self.memory_groups:
            problems.append(f"memory_groups ({self.memory_groups}) must divide layers ({self.layers})")
        if self.memory_groups > 1 and self.memory_update != "staged":
            problems.append("memory_groups > 1 needs memory_update \"staged\"")
        if self.memory_update == "fused" and (
            self.residual_gate == "none" or self.gate_activation != "sigmoid" or self.memory_attn_out_bias
        ):
            problems.append('residual_gate "none", a tanh gate and memory_attn_out_bias need memory_update "staged"')
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def heads_of(self, block: str) -> tuple[int, int]:
        """(query heads, key/value heads) of an attention block: "self", "encoder", "cross", "memory" or
        "memory_pre"."""
        if block == "self":
            return self.query_heads, self.kv_heads
        q, kv = getattr(self, f"{block}_query_heads"), getattr(self, f"{block}_kv_heads")
        return (self.query_heads if q is None else q), (self.kv_heads if kv is None else kv)

    @property
    def self_attention_layers(self) -> int:
        """Number of decoder layers with self-attention (memory layers plus stateless ones): KV-cache rows."""
        return self.layers + len(self.stateless_layers) + len(self.final_stateless_layers)

    @property
    def head_dim(self) -> int:
        """Width of one attention head (dim / heads)."""
        return self.dim // self.heads

    @property
    def is_moe(self) -> bool:
        """True when the decoder FFN is a Mixture-of-Experts."""
        return self.moe_experts > 0

    @classmethod
    def preset(cls, name: str, **changes: Any) -> RxTConfig:
        """A named preset ("tiny" or "micro"), optionally with some fields changed."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **changes})


PRESETS: dict[str, dict[str, Any]] = {
    # ~2.7M parameters. vocab 512 leaves room for the bundled BPE tokenizer (the byte tokenizer needs 264).
    "tiny": dict(
        vocab_size=512, dim=128, layers=4, heads=8, query_heads=4, kv_heads=4, ff_dim=256,
        moe_experts=4, moe_top_k=2, stm_slots=64, max_seq_len=256, max_query_tokens=128,
    ),
    # the shape of the published RxT-Alpha Micro: 256-token interactions, 256 STM slots per layer
    "micro": dict(
        vocab_size=7500, dim=128, layers=6, heads=8, query_heads=4, kv_heads=4, ff_dim=256,
        moe_experts=12, moe_top_k=2, stm_slots=256, max_seq_len=256, max_query_tokens=128,
    ),
}

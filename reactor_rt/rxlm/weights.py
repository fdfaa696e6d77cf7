"""Map RxLM parameter names and layouts onto a reactor-rt state dict.

Layout differences handled here:

* attention: separate q/k/v projections -> one fused qkv (self-attention) or q + kv (cross/memory);
* gated FFNs: RxLM's first half of ``fc1`` / ``w1`` is the linear ("up") half and the second the
  activated gate; reactor-rt keeps the gate first -> the halves are swapped;
* MoE experts: ``w1`` (E, D, 2F) -> ``w_gate_up`` (D, E, 2F); ``w2`` (E, F, D) is kept; the legacy
  layout (one ``experts.N`` gated FFN each, with biases) is stacked into the same tensors;
* STM: the (L, 1, S, D) ``stm.memory`` buffer becomes the learned initial STM (L, S, D);
* gates: static/elementwise (S, 1) or (1,) parameters -> (S, 1) or (1, 1).

Tied tensors (the shared embedding, the shared STM, the shared RoPE tables) are stored under one name
only, whichever the saver kept (reference defect: safetensors drops the duplicates on save), so every
lookup accepts each of the names the tensor may carry.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from reactor_rt.errors import CheckpointError
from reactor_rt.model.config import RxTConfig
from reactor_rt.rxlm.config_map import ImportPlan, UnsupportedCheckpointError

__all__ = ["IGNORED_SUFFIXES", "map_weights"]

# derived buffers (rebuilt from the config) and parts the reference never runs at inference
IGNORED_SUFFIXES = (".rope.cache", ".rope.inv_freq")


class _Source:
    """The RxLM tensors, remembering which ones were used."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        self.tensors = dict(tensors)
        self.used: set[str] = set()
        self.recent: list[str] = []  # the last names fetched: where a layout mismatch is reported

    def has(self, *names: str) -> bool:
        return any(n in self.tensors for n in names)

    def get(self, *names: str) -> Tensor:
        """The first of names present, as float32; CheckpointError for a non-float or non-finite tensor."""
        for n in names:
            if n in self.tensors:
                self.used.add(n)
                self.recent = [*self.recent[-2:], n]
                raw = self.tensors[n]
                # a damaged file must not load: an int/bool tensor would be cast silently, a NaN/inf spreads
                if not raw.is_floating_point():
                    raise CheckpointError(f"RxLM tensor {n!r} has dtype {raw.dtype}, not a floating-point type")
                t = raw.to(torch.float32)
                if not torch.isfinite(t).all():
                    raise CheckpointError(f"RxLM tensor {n!r} holds NaN or infinite values")
                return t
        raise CheckpointError(f"RxLM weights lack {names[0]!r}" + (f" (or {list(names[1:])})" if names[1:] else ""))

    def skip(self, name: str) -> None:
        """Mark a tensor the reference never runs (a tied duplicate) as consumed, if present."""
        if name in self.tensors:
            self.used.add(name)

    def unused(self) -> list[str]:
        return sorted(k for k in self.tensors if k not in self.used and not k.endswith(IGNORED_SUFFIXES))


def _swap_halves(w: Tensor, dim: int = 0) -> Tensor:
    up, gate = w.chunk(2, dim=dim)
    return torch.cat([gate, up], dim=dim)


def _attention(src: _Source, out: dict[str, Tensor], dst: str, ref: str, fused: bool, out_bias: bool,
               gated: bool = False) -> None:
    q, k, v = (src.get(f"{ref}.{p}_proj.weight") for p in "qkv")
    if gated:
        out[f"{dst}.gate.weight"] = src.get(f"{ref}.gate_proj.weight")
    if fused:
        out[f"{dst}.qkv.weight"] = torch.cat([q, k, v])
    else:
        out[f"{dst}.q.weight"] = q
        out[f"{dst}.kv.weight"] = torch.cat([k, v])
    out[f"{dst}.out.weight"] = src.get(f"{ref}.out_proj.weight")
    if out_bias:
        out[f"{dst}.out.bias"] = src.get(f"{ref}.out_proj.bias")


def _dense_ffn(src: _Source, out: dict[str, Tensor], dst: str, ref: str, bias: bool) -> None:
    out[f"{dst}.gate_up.weight"] = _swap_halves(src.get(f"{ref}.fc1.linear.weight"))
    out[f"{dst}.down.weight"] = src.get(f"{ref}.fc2.weight")
    if bias:
        out[f"{dst}.gate_up.bias"] = _swap_halves(src.get(f"{ref}.fc1.linear.bias"))
        out[f"{dst}.down.bias"] = src.get(f"{ref}.fc2.bias")


def _moe(src: _Source, out: dict[str, Tensor], dst: str, ref: str, c: RxTConfig, legacy: bool) -> None:
    out[f"{dst}.router.weight"] = src.get(f"{ref}.router.gate.weight")
    if legacy:  # one gated FFN module per expert, biases included
        experts = range(c.moe_experts)
        w1 = torch.stack([src.get(f"{ref}.experts.{e}.fc1.linear.weight").T for e in experts])  # (E, D, 2F)
        w2 = torch.stack([src.get(f"{ref}.experts.{e}.fc2.weight").T for e in experts])  # (E, F, D)
        out[f"{dst}.b_gate_up"] = _swap_halves(
            torch.stack([src.get(f"{ref}.experts.{e}.fc1.linear.bias") for e in experts]), dim=1)
        out[f"{dst}.b_down"] = torch.stack([src.get(f"{ref}.experts.{e}.fc2.bias") for e in experts])
    else:
        w1, w2 = src.get(f"{ref}.w1"), src.get(f"{ref}.w2")
        if c.moe_expert_bias:
            out[f"{dst}.b_gate_up"] = _swap_halves(src.get(f"{ref}.b1"), dim=1)
            out[f"{dst}.b_down"] = src.get(f"{ref}.b2")
    out[f"{dst}.w_gate_up"] = _swap_halves(w1, dim=2).permute(1, 0, 2).contiguous()
    out[f"{dst}.w_down"] = w2.contiguous()
    if c.moe_global_bias:
        out[f"{dst}.global_bias"] = src.get(f"{ref}.global_bias")
    if not c.moe_shared_expert:
        return
    n = c.moe_shared_count
    if n > 1:  # several shared experts, mixed by a softmax gate
        out[f"{dst}.shared_gate.weight"] = src.get(f"{ref}.shared_expert_gate.weight")
    if legacy:
        if n == 1:
            _dense_ffn(src, out, f"{dst}.shared", f"{ref}.shared_experts.0", True)
        for s in range(n if n > 1 else 0):
            _dense_ffn(src, out, f"{dst}.shared_experts.{s}", f"{ref}.shared_experts.{s}", True)
        return
    if n == 1:
        _dense_ffn(src, out, f"{dst}.shared", f"{ref}.shared_expert", c.moe_shared_bias)
    else:  # stacked (S, D, 2F) / (S, F, D) tensors
        w1, w2 = src.get(f"{ref}.shared_w1"), src.get(f"{ref}.shared_w2")
        for s in range(n):
            e = f"{dst}.shared_experts.{s}"
            out[f"{e}.gate_up.weight"] = _swap_halves(w1[s].T.contiguous())
            out[f"{e}.down.weight"] = w2[s].T.contiguous()
            if c.moe_shared_bias:
                out[f"{e}.gate_up.bias"] = _swap_halves(src.get(f"{ref}.shared_b1")[s])
                out[f"{e}.down.bias"] = src.get(f"{ref}.shared_b2")[s]
    if c.moe_shared_global_bias:
        out[f"{dst}.shared_global_bias"] = src.get(f"{ref}.shared_experts_bias")


def _decoder_layer(src: _Source, out: dict[str, Tensor], dst: str, ref: str, c: RxTConfig, moe: bool,
                   memory: bool, legacy: bool = False) -> None:
    out[f"{dst}.self_norm.weight"] = src.get(f"{ref}.norm1.weight")
    _attention(src, out, f"{dst}.self_attn", f"{ref}.attention", True, c.attn_out_bias, c.attn_gate is not None)
    if memory:
        out[f"{dst}.memory_norm.weight"] = src.get(f"{ref}.stm_norm.weight")
        out[f"{dst}.cross_norm.weight"] = src.get(f"{ref}.norm2.weight")
        _attention(src, out, f"{dst}.cross_attn", f"{ref}.memory_cross_attention", False, c.attn_out_bias,
                   c.cross_attn_gate is not None)
    out[f"{dst}.ffn_norm.weight"] = src.get(f"{ref}.norm3.weight")
    if moe:
        _moe(src, out, f"{dst}.ffn", f"{ref}.ff", c, legacy)
    else:
        _dense_ffn(src, out, f"{dst}.ffn", f"{ref}.ff", c.ffn_bias)


def _slot_gate(src: _Source, out: dict[str, Tensor], dst: str, ref: str, c: RxTConfig) -> None:
    if c.residual_gate == "none":
        return
    if c.residual_gate == "linear":
        out[f"{dst}.proj.weight"] = src.get(f"{ref}.gate.weight")
        out[f"{dst}.proj.bias"] = src.get(f"{ref}.gate.bias")
    else:
        out[f"{dst}.weight"] = src.get(f"{ref}.gate").reshape(c.stm_slots if c.gate_per_slot else 1, 1)
    if c.gate_slot_status == "linear":
        out[f"{dst}.status_proj.weight"] = src.get(f"{ref}.slot_status.weight")
        out[f"{dst}.status_proj.bias"] = src.get(f"{ref}.slot_status.bias")


def _map_all(src: _Source, c: RxTConfig, plan: ImportPlan) -> dict[str, Tensor]:
    """Every reactor-rt tensor that has an RxLM counterpart."""
    out: dict[str, Tensor] = {}
    # share_components() gives the decoder the encoder's embedding and the memory attention's STM: those
    # copies win when both names survived (a model saved before sharing)
    out["embedding.weight"] = src.get("encoder.model.embedding.weight", "decoder.model.embedding.weight")
    src.skip("decoder.model.embedding.weight")
    memory = src.get("memory_attention.model.stm.memory", "decoder.model.stm.memory")  # (L, B, S, D)
    out["stm_init"] = memory[:, 0].contiguous()
    src.skip("decoder.model.stm.memory")
    src.skip("encoder.model.stm.memory")  # the encoder never reads it

    d = "decoder.model"
    for j, kind in enumerate(c.stateless_layers):
        _decoder_layer(src, out, f"stateless_layers.{j}", f"{d}.stateless_layers.{j}", c, kind == "moe", False,
                       plan.legacy_moe)
    for i in range(c.layers):
        _decoder_layer(src, out, f"decoder_layers.{i}", f"{d}.layers.{i}", c, c.is_moe, True, plan.legacy_moe)
    for j, kind in enumerate(c.final_stateless_layers):
        _decoder_layer(src, out, f"final_stateless_layers.{j}", f"{d}.final_stateless_layers.{j}", c,
                       kind == "moe", False, plan.legacy_moe)
    out["head.weight"] = src.get(f"{d}.head.weight")
    out["head.bias"] = src.get(f"{d}.head.bias")
    if plan.decoder_head_norm:
        out["decoder_norm.weight"] = src.get(f"{d}.head_norm.weight")

    e = "encoder.model.layers"
    for i in range(c.layers):
        out[f"encoder_layers.{i}.attn_norm.weight"] = src.get(f"{e}.{i}.norm1.weight")
        _attention(src, out, f"encoder_layers.{i}.attn", f"{e}.{i}.attention", True, c.attn_out_bias,
                   c.encoder_attn_gate is not None)
        out[f"encoder_layers.{i}.ffn_norm.weight"] = src.get(f"{e}.{i}.norm3.weight")
        _dense_ffn(src, out, f"encoder_layers.{i}.ffn", f"{e}.{i}.ff", c.ffn_bias)
        # an encoder built without skip_memory_cross_attention carries cross-attention weights it never runs
        for name in list(src.tensors):
            if name.startswith((f"{e}.{i}.memory_cross_attention.", f"{e}.{i}.norm2.", f"{e}.{i}.stm_norm.")):
                src.used.add(name)

    m = "memory_attention.model"
    out["memory_attention.mean_norm.weight"] = src.get(f"{m}.mean_stm_norm.weight")
    for i in range(c.layers):
        dst = f"memory_attention.layers.{i}"
        out[f"{dst}.pre_norm.weight"] = src.get(f"{m}.mean_memory_norm_layers.{i}.weight")
        _attention(src, out, f"{dst}.pre_attn", f"{m}.mean_attention_layers.{i}", False, True)
        _slot_gate(src, out, f"{dst}.pre_gate", f"{m}.mean_residual_gate_layers.{i}", c)
        if c.memory_attention == "gated-self-interlayer":
            _slot_gate(src, out, f"{dst}.mix_gate", f"{m}.interlayer_gate_layers.{i}", c)
        out[f"{dst}.stm_norm.weight"] = src.get(f"{m}.memory_norm_layers.{i}.weight")
        out[f"{dst}.enc_norm.weight"] = src.get(f"{m}.memory_input_norm_layers.{i}.weight")
        _attention(src, out, f"{dst}.attn", f"{m}.attention_layers.{i}", False, True)
        _slot_gate(src, out, f"{dst}.gate", f"{m}.residual_gate_layers.{i}", c)
    return out


def map_weights(
    tensors: Mapping[str, Tensor], config: RxTConfig, plan: ImportPlan, fresh: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """RxLM tensors -> a complete reactor-rt state dict for `config`.

    fresh: a freshly initialised model's state dict; only tensors the reference has no counterpart for
    (the encoder's MLM head: RxLM keeps it in a separate model) are taken from it.
    UnsupportedCheckpointError when tensors are left over (an option the config mapping did not see).
    """
    src = _Source(tensors)
    try:
        out = _map_all(src, config, plan)
    except (RuntimeError, IndexError, ValueError) as exc:
        # a tensor whose shape does not fit the layout config.json describes fails inside cat/stack/reshape
        shapes = ", ".join(f"{n} {tuple(src.tensors[n].shape)}" for n in src.recent)
        raise CheckpointError(f"RxLM weights do not match config.json near {shapes}: {exc}") from exc
    # the MLM head: matrices drawn from a fixed seed (a conversion is reproducible), norms/biases as built
    g = torch.Generator().manual_seed(0)
    for name, tensor in sorted(fresh.items()):
        if name.startswith("mlm_head."):
            out[name] = torch.randn(tensor.shape, generator=g) * 0.02 if tensor.dim() == 2 else tensor.clone()
    leftover = src.unused()
    if leftover:
        shown = ", ".join(leftover[:8]) + (f" (+{len(leftover) - 8} more)" if len(leftover) > 8 else "")
        raise UnsupportedCheckpointError(f"RxLM tensors with no reactor-rt counterpart: {shown}")
    return out

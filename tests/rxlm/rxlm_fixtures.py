"""Small checkpoints in the RxLM format, written without rxlm: config.json, model.safetensors with the
reference's parameter names and shapes (as rxlm 0.3.80 saves them), and a word-level tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

VOCAB = 96
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[Q]", "[A]", "[R]"]
TOKEN_IDS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3, query_token_id=4, answer_token_id=5)

DIM, HEADS, LAYERS, SLOTS = 32, 4, 2, 6


def component(**changes: Any) -> dict[str, Any]:
    base = dict(num_layers=LAYERS, vocab_size=VOCAB, embed_dim=DIM, ff_dim=24, att_heads=HEADS, seq_len=48,
                stm_size=SLOTS, use_gated=True, ff_activation="silu", use_rms_norm=True,
                self_att_type="sqa", cross_att_type="sqa", att_groups=1, att_query_groups=2)
    return {**base, **changes}


def memory(**changes: Any) -> dict[str, Any]:
    base = dict(num_layers=LAYERS, embed_dim=DIM, att_heads=HEADS, seq_len=48, stm_size=SLOTS,
                att_type="sqa", att_groups=1, att_query_groups=2, interlayer_att_type="sqa",
                interlayer_att_groups=1, interlayer_att_query_groups=2, norm_type="classic-rms",
                use_gated_residual=True, residual_gate_type="elementwise", use_tanh_residual_gate=False)
    return {**base, **changes}


def rxlm_config(decoder: dict | None = None, encoder: dict | None = None, mem: dict | None = None,
                variant: str = "self-interlayer") -> dict[str, Any]:
    return {
        "decoder_config": component(**{"use_moe": True, "num_experts": 3, "moe_top_k": 2,
                                       "num_shared_experts": 1, **(decoder or {})}),
        "encoder_config": component(**{"ff_dim": 40, "skip_memory_cross_attention": True, **(encoder or {})}),
        "memory_attention_config": memory(**(mem or {})),
        "tokenizer_config": dict(TOKEN_IDS),
        "memory_attention_variant": variant,
    }


def _heads(kind: str, heads: int, groups: int, query_groups: int | None) -> tuple[int, int]:
    return {"mha": (heads, heads), "mqa": (heads, 1), "gqa": (heads, groups)}.get(kind, (query_groups, groups))


class _Writer:
    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.t: dict[str, torch.Tensor] = {}

    def add(self, name: str, *shape: int) -> None:
        self.t[name] = torch.randn(*shape, generator=self.g) * 0.2

    def attention(self, prefix: str, q: int, kv: int, out_bias: bool, gated: bool = False) -> None:
        hd = DIM // HEADS
        if gated:
            self.add(f"{prefix}.gate_proj.weight", q * hd, DIM)
        self.add(f"{prefix}.q_proj.weight", q * hd, DIM)
        self.add(f"{prefix}.k_proj.weight", kv * hd, DIM)
        self.add(f"{prefix}.v_proj.weight", kv * hd, DIM)
        self.add(f"{prefix}.out_proj.weight", DIM, q * hd)
        if out_bias:
            self.add(f"{prefix}.out_proj.bias", DIM)

    def gated_ffn(self, prefix: str, ff: int, bias: bool) -> None:
        self.add(f"{prefix}.fc1.linear.weight", 2 * ff, DIM)
        self.add(f"{prefix}.fc2.weight", DIM, ff)
        if bias:
            self.add(f"{prefix}.fc1.linear.bias", 2 * ff)
            self.add(f"{prefix}.fc2.bias", DIM)

    def gate(self, prefix: str, m: dict[str, Any]) -> None:
        if not m.get("use_gated_residual", False):
            return
        per_slot = m.get("residual_per_slot_gate", True)
        if m.get("residual_gate_type", "static") == "linear":
            self.add(f"{prefix}.gate.weight", SLOTS if per_slot else 1, SLOTS)
            self.add(f"{prefix}.gate.bias", SLOTS if per_slot else 1)
        else:
            self.add(f"{prefix}.gate", *((SLOTS, 1) if per_slot else (1,)))
        if m.get("residual_gate_slot_status_type", "mean") == "linear":
            self.add(f"{prefix}.slot_status.weight", 1, DIM)
            self.add(f"{prefix}.slot_status.bias", 1)


def rxlm_tensors(cfg: dict[str, Any], seed: int = 0, embedding_name: str = "decoder",
                 stm_name: str = "decoder") -> dict[str, torch.Tensor]:
    """Random tensors under the names rxlm's save_pretrained writes for cfg (tied tensors once)."""
    w = _Writer(seed)
    dec, enc, mem = cfg["decoder_config"], cfg["encoder_config"], cfg["memory_attention_config"]
    w.add(f"{embedding_name}.model.embedding.weight", VOCAB, DIM)
    w.add(f"{'memory_attention' if stm_name == 'memory_attention' else 'decoder'}.model.stm.memory", LAYERS, 1, SLOTS, DIM)

    def layer(prefix: str, c: dict[str, Any], memory_layer: bool, ffn: str) -> None:
        groups = c.get("att_groups", 1)
        w.add(f"{prefix}.norm1.weight", DIM)
        w.add(f"{prefix}.norm3.weight", DIM)
        w.attention(f"{prefix}.attention", *_heads(c["self_att_type"], HEADS, groups, c.get("att_query_groups")),
                    c.get("use_attention_output_bias", True), c.get("use_gated_attention", False))
        if memory_layer:
            w.add(f"{prefix}.norm2.weight", DIM)
            w.add(f"{prefix}.stm_norm.weight", DIM)
            w.attention(f"{prefix}.memory_cross_attention",
                        *_heads(c["cross_att_type"], HEADS, c.get("cross_att_groups") or groups,
                                c.get("cross_att_query_groups") or c.get("att_query_groups")),
                        c.get("use_attention_output_bias", True),
                        c.get("use_gated_attention", False) if c.get("use_gated_cross_attention") is None
                        else c["use_gated_cross_attention"])
        if ffn == "moe" and not c.get("use_vectorized_moe", True):  # legacy: one gated FFN per expert
            e, ff = c["num_experts"], c["ff_dim"]
            w.add(f"{prefix}.ff.router.gate.weight", e, DIM)
            for k in range(e):
                w.gated_ffn(f"{prefix}.ff.experts.{k}", ff, True)
            shared = c.get("num_shared_experts", 1)
            for k in range(shared):
                w.gated_ffn(f"{prefix}.ff.shared_experts.{k}", ff, True)
            if shared > 1:
                w.add(f"{prefix}.ff.shared_expert_gate.weight", shared, DIM)
        elif ffn == "moe":
            e, ff = c["num_experts"], c["ff_dim"]
            w.add(f"{prefix}.ff.router.gate.weight", e, DIM)
            w.add(f"{prefix}.ff.w1", e, DIM, 2 * ff)
            w.add(f"{prefix}.ff.w2", e, ff, DIM)
            if c.get("moe_bias_mode", "global") == "local":
                w.add(f"{prefix}.ff.b1", e, 2 * ff)
                w.add(f"{prefix}.ff.b2", e, DIM)
            if c.get("moe_bias_mode", "global") == "global":
                w.add(f"{prefix}.ff.global_bias", DIM)
            shared, sff = c.get("num_shared_experts", 1), c.get("shared_expert_dim") or ff
            shared_bias = c.get("moe_shared_experts_bias_mode", "local")
            if shared == 1:
                w.gated_ffn(f"{prefix}.ff.shared_expert", sff, shared_bias == "local")
            elif shared > 1:
                w.add(f"{prefix}.ff.shared_w1", shared, DIM, 2 * sff)
                w.add(f"{prefix}.ff.shared_w2", shared, sff, DIM)
                w.add(f"{prefix}.ff.shared_expert_gate.weight", shared, DIM)
                if shared_bias == "local":
                    w.add(f"{prefix}.ff.shared_b1", shared, 2 * sff)
                    w.add(f"{prefix}.ff.shared_b2", shared, DIM)
            if shared and shared_bias == "global":
                w.add(f"{prefix}.ff.shared_experts_bias", DIM)
        else:
            ff = c["ff_dim"] if ffn == "dense" else c.get("dense_layer_dim", 1536)
            w.gated_ffn(f"{prefix}.ff", ff, True)

    for j, kind in enumerate(dec.get("stateless_layers_config") or []):
        layer(f"decoder.model.stateless_layers.{j}", dec, False, "moe" if kind == "moe" else "stateless")
    for i in range(LAYERS):
        layer(f"decoder.model.layers.{i}", dec, True, "moe" if dec.get("use_moe") else "dense")
    for j, kind in enumerate(dec.get("final_stateless_layers_config") or []):
        layer(f"decoder.model.final_stateless_layers.{j}", dec, False, "moe" if kind == "moe" else "stateless")
    w.add("decoder.model.head.weight", VOCAB, DIM)
    w.add("decoder.model.head.bias", VOCAB)
    if dec.get("use_head_norm"):
        w.add("decoder.model.head_norm.weight", DIM)
    w.add("decoder.model.layers.0.attention.rope.inv_freq", DIM // HEADS // 2)  # derived buffers, skipped
    for i in range(LAYERS):
        layer(f"encoder.model.layers.{i}", enc, not enc.get("skip_memory_cross_attention", False), "dense")

    m = "memory_attention.model"
    w.add(f"{m}.mean_stm_norm.weight", DIM)
    for i in range(LAYERS):
        for name in ("mean_memory_norm_layers", "memory_norm_layers", "memory_input_norm_layers"):
            w.add(f"{m}.{name}.{i}.weight", DIM)
        w.attention(f"{m}.mean_attention_layers.{i}",
                    *_heads(mem["interlayer_att_type"], HEADS, mem.get("interlayer_att_groups", 1),
                            mem.get("interlayer_att_query_groups")), True)
        w.attention(f"{m}.attention_layers.{i}",
                    *_heads(mem["att_type"], HEADS, mem.get("att_groups", 1), mem.get("att_query_groups")), True)
        for name in ("mean_residual_gate_layers", "interlayer_gate_layers", "residual_gate_layers"):
            w.gate(f"{m}.{name}.{i}", mem)
    return w.t


def write_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {name: i for i, name in enumerate(SPECIALS)}
    for i in range(len(vocab), VOCAB - 4):
        vocab[f"w{i}"] = i
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(path))


def write_checkpoint(directory: Path, cfg: dict[str, Any] | None = None, tensors: dict | None = None,
                     tokenizer: bool = True, seed: int = 0) -> Path:
    """Write an RxLM-format checkpoint into directory and return it."""
    from safetensors.torch import save_file

    cfg = cfg or rxlm_config()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    tensors = tensors if tensors is not None else rxlm_tensors(cfg, seed)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    if tokenizer:
        write_tokenizer(directory / "tokenizer.json")
    return directory

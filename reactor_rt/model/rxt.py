"""ReactiveTransformer: decoder, encoder and memory-attention network around one shared embedding.

One interaction: the decoder answers the query while reading the STM through memory cross-attention;
then the encoder encodes query + answer and the memory-attention network writes it into the STM.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reactor_rt.model.attention import Attention, RotaryEmbedding
from reactor_rt.model.config import RxTConfig
from reactor_rt.model.layers import MoE, RMSNorm, SwiGLU
from reactor_rt.model.linear import Linear, TransposedWeight, linear
from reactor_rt.model.memory import MemoryAttention, MemoryKV, MemoryNorm, MemoryPlan
from reactor_rt.tokenizer import ByteTokenizer, Tokenizer

if TYPE_CHECKING:
    from reactor_rt.model.sampler import Sampler

__all__ = ["DecoderLayer", "EncoderLayer", "KVCacheHook", "ReactiveTransformer"]


class KVCacheHook(Protocol):
    """Where a decoder layer's new self-attention keys/values go (the generation cache)."""

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None, bool]:
        """Store k, v (B, Hkv, T, hd); return (keys, values, mask or None, is_causal) to attend over."""
        ...


class DecoderLayer(nn.Module):
    """Causal self-attention -> memory cross-attention -> FFN (SwiGLU or MoE), pre-norm residuals.

    stateless=None makes a memory layer (FFN per the config); "dense" / "moe" make a stateless layer of
    an imported checkpoint: no memory cross-attention, a dense (stateless_ff_dim) or MoE FFN.
    """

    def __init__(self, c: RxTConfig, stateless: str | None = None) -> None:
        super().__init__()
        self.self_norm = RMSNorm(c.dim, c.norm_eps)
        self.self_attn = Attention(c.dim, c.heads, c.query_heads, c.kv_heads, fused=True, out_bias=c.attn_out_bias,
                                   out_gate=c.attn_gate)
        self.cross_attn: Attention | None = None
        if stateless is None:
            self.memory_norm = MemoryNorm(c.dim, c.norm_eps)  # on the STM layer, before its K/V projection
            self.cross_norm = RMSNorm(c.dim, c.norm_eps)
            cq, ckv = c.heads_of("cross")
            self.cross_attn = Attention(c.dim, c.heads, cq, ckv, fused=False, out_bias=c.attn_out_bias,
                                        out_gate=c.cross_attn_gate)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)
        self.ffn: nn.Module
        self.is_moe = c.is_moe if stateless is None else stateless == "moe"
        if self.is_moe:
            self.ffn = MoE(
                c.dim, c.ff_dim, c.moe_experts, c.moe_top_k, c.moe_shared_expert,
                activation=c.ffn_activation, shared_ff_dim=c.moe_shared_ff_dim, shared_bias=c.moe_shared_bias,
                global_bias=c.moe_global_bias, shared_global_bias=c.moe_shared_global_bias,
                weighted_shared=c.moe_weighted_shared, expert_bias=c.moe_expert_bias,
                shared_count=c.moe_shared_count, router_bf16=c.moe_router_bf16,
            )
        else:
            ff_dim = c.ff_dim if stateless is None else (c.stateless_ff_dim or c.ff_dim)
            self.ffn = SwiGLU(c.dim, ff_dim, c.ffn_activation, c.ffn_bias)

    def memory_kv(self, stm_layer: Tensor) -> tuple[Tensor, Tensor]:
        """Memory cross-attention keys/values of one STM layer (B, S, D) -> (B, Hkv, S, hd) each."""
        assert self.cross_attn is not None, "a stateless layer has no memory cross-attention"
        return self.cross_attn.project_kv(self.memory_norm(stm_layer))

    def forward(
        self,
        x: Tensor,
        cis: Tensor,
        mem_k: Tensor | None,
        mem_v: Tensor | None,
        cache: KVCacheHook | None = None,
        index: int = 0,
        token_mask: Tensor | None = None,
        need_aux: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, T, D) -> (x, MoE balance loss or None). cis: RoPE rotations for x's positions.

        index: this layer's row in the self-attention KV cache; mem_k/mem_v None for a stateless layer.
        """
        h = self.self_norm(x)
        q, k, v = self.self_attn.project_qkv(h, cis)
        if cache is None:
            x = x + self.self_attn.attend(q, k, v, is_causal=True, gate_input=h)
        else:
            k, v, mask, causal = cache.update(index, k, v)
            x = x + self.self_attn.attend(q, k, v, mask, is_causal=causal, gate_input=h)
        if self.cross_attn is not None:
            # memory cross-attention: RoPE on the queries only, the STM slots have no positions
            assert mem_k is not None and mem_v is not None
            h = self.cross_norm(x)
            q = self.cross_attn.project_q(h, cis)
            x = x + self.cross_attn.attend(q, mem_k, mem_v, gate_input=h)
        h = self.ffn_norm(x)
        if self.is_moe:
            f, aux = self.ffn(h, token_mask, need_aux)
            return x + f, aux
        return x + self.ffn(h), None


class EncoderLayer(nn.Module):
    """Bidirectional self-attention -> dense SwiGLU FFN (no memory cross-attention)."""

    def __init__(self, c: RxTConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(c.dim, c.norm_eps)
        eq, ekv = c.heads_of("encoder")
        self.attn = Attention(c.dim, c.heads, eq, ekv, fused=True, out_bias=c.attn_out_bias,
                              out_gate=c.encoder_attn_gate)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)
        self.ffn = SwiGLU(c.dim, c.encoder_ff_dim or c.ff_dim, c.ffn_activation, c.ffn_bias)

    def forward(self, x: Tensor, cis: Tensor, mask: Tensor | None) -> Tensor:
        """x (B, T, D), mask (B, 1, 1, T) bool or None -> (B, T, D)."""
        h = self.attn_norm(x)
        q, k, v = self.attn.project_qkv(h, cis)
        x = x + self.attn.attend(q, k, v, mask, gate_input=h)
        return x + self.ffn(self.ffn_norm(x))


class ReactiveTransformer(nn.Module):
    """A Reactive Transformer (RxT): event-driven, one interaction at a time, with a fixed-size STM."""

    def __init__(self, config: RxTConfig, tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        if self.tokenizer.vocab_size > config.vocab_size:
            from reactor_rt.errors import ConfigError

            raise ConfigError(
                f"tokenizer has {self.tokenizer.vocab_size} ids but config.vocab_size is {config.vocab_size}"
            )
        c = config
        # one embedding for encoder, decoder, the tied output head and the MLM head
        self.embedding = nn.Embedding(c.vocab_size, c.dim)
        self.rope = RotaryEmbedding(c.head_dim, c.max_seq_len, c.rope_theta)
        self.decoder_layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.layers))
        # imported checkpoints only: stateless layers before/after the memory layers (empty by default,
        # so they add no state-dict keys), an own output head, no final norm
        self.stateless_layers = nn.ModuleList(DecoderLayer(c, kind) for kind in c.stateless_layers)
        self.final_stateless_layers = nn.ModuleList(DecoderLayer(c, kind) for kind in c.final_stateless_layers)
        if c.final_norm:
            self.decoder_norm = RMSNorm(c.dim, c.norm_eps)
        if not c.tied_head:
            self.head = Linear(c.dim, c.vocab_size)
        self._tied_head = TransposedWeight()  # the embedding as the output head, for inference
        self.encoder_layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.layers))
        self.mlm_head = nn.Sequential(nn.Linear(c.dim, c.dim), nn.GELU(), RMSNorm(c.dim, c.norm_eps))
        self.memory_attention: nn.Module
        if c.memory_update == "staged":
            from reactor_rt.model.memory_staged import StagedMemoryAttention

            self.memory_attention = StagedMemoryAttention(c, self.rope)
        else:
            self.memory_attention = MemoryAttention(c, self.rope)
        # learned initial STM with a small std: the first write then dominates the normalised slots,
        # which is what lets the decoder learn to read memory at all (TRAINING_NOTES.md)
        self.stm_init = nn.Parameter(torch.randn(c.layers, c.stm_slots, c.dim) * c.stm_init_std)
        self._init_weights()

    def _init_weights(self) -> None:
        residual_std = 0.02 / math.sqrt(2 * self.config.layers)  # GPT-2: keep the residual stream's scale
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and module.out_features > 1:
                std = residual_std if name.endswith((".out", ".down")) else 0.02
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.embedding.weight, std=0.02)
        for module in self.modules():
            if isinstance(module, MoE):
                nn.init.normal_(module.w_gate_up, std=0.02)
                nn.init.normal_(module.w_down, std=residual_std)

    # ---------------------------------------------------------------- memory
    def init_stm(self, batch_size: int = 1) -> Tensor:
        """The learned initial STM, one copy per row: (B, L, S, D)."""
        return self.stm_init.unsqueeze(0).expand(batch_size, -1, -1, -1).clone()

    def memory_kv(self, stm: Tensor) -> MemoryKV:
        """Memory cross-attention keys/values of every decoder layer, from stm (B, L, S, D)."""
        self._check_stm(stm)
        ks, vs = zip(*(layer.memory_kv(stm[:, i]) for i, layer in enumerate(self.decoder_layers)), strict=True)
        return MemoryKV(torch.stack(ks), torch.stack(vs))

    def update_memory(self, stm: Tensor, encoded: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Write an encoded interaction (L, B, T, D) into stm (B, L, S, D); returns a new tensor.

        attention_mask (B, T), True / 1 = real token (the mask given to encode).
        """
        self._check_stm(stm)
        self._check_mask(encoded, attention_mask)
        return self.memory_attention(stm, encoded, attention_mask)

    def prepare_memory(self, stm: Tensor) -> MemoryPlan:
        """The part of a memory update that reads only stm (B, L, S, D), done before the interaction is
        encoded: ``update_prepared(prepare_memory(stm), encoded)`` is ``update_memory(stm, encoded)``,
        the same ops on the same values."""
        self._check_stm(stm)
        return self.memory_attention.prepare(stm)

    def update_prepared(self, plan: MemoryPlan, encoded: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """`update_memory` of the STM a `prepare_memory` plan was made from (with these weights)."""
        self._check_mask(encoded, attention_mask)
        return self.memory_attention.write(plan, encoded, attention_mask)

    @staticmethod
    def _check_mask(encoded: Tensor, attention_mask: Tensor | None) -> None:
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(encoded.shape[1:3]):
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match the encoded "
                             f"(B, T) {tuple(encoded.shape[1:3])}")

    def _check_stm(self, stm: Tensor) -> None:
        c = self.config
        if stm.dim() != 4 or tuple(stm.shape[1:]) != (c.layers, c.stm_slots, c.dim):
            raise ValueError(f"stm must be (B, {c.layers}, {c.stm_slots}, {c.dim}), got {tuple(stm.shape)}")

    # ---------------------------------------------------------------- encoder
    def encode(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Bidirectional encoder over ids (B, T) -> every layer's hidden states (L, B, T, D).

        attention_mask (B, T) bool, True = real token (right padding); padded keys are ignored.
        """
        cis = self.rope.tables(ids.shape[1])
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool().clone()
            # a row of padding only (an empty turn in a padded batch) still needs one key, else NaN
            mask[:, 0] |= ~mask.any(dim=1)
            mask = mask[:, None, None, :]  # (B, 1, 1, T)
        x = self.embedding(ids)
        outs = []
        for layer in self.encoder_layers:
            x = layer(x, cis, mask)
            outs.append(x)
        return torch.stack(outs)

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """MLM head over encoder states (B, T, D) -> (B, T, V), tied to the shared embedding."""
        return F.linear(self.mlm_head(hidden), self.embedding.weight)

    # ---------------------------------------------------------------- decoder
    def decode(
        self,
        ids: Tensor,
        stm: Tensor | None = None,
        *,
        memory_kv: MemoryKV | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Causal decoder forward without cache: ids (B, T) right-padded -> logits (B, T, V)."""
        return self.decode_with_aux(ids, stm, memory_kv=memory_kv, attention_mask=attention_mask)[0]

    def decode_with_aux(
        self,
        ids: Tensor,
        stm: Tensor | None = None,
        *,
        memory_kv: MemoryKV | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Like `decode`, also returning the mean MoE load-balancing loss (0 for a dense decoder).

        attention_mask (B, T) bool marks real tokens: right padding needs no attention mask (causal
        attention never lets a real token see the padding after it), it only keeps padding out of the
        balance loss.
        """
        mem = self._memory(stm, memory_kv)
        token_mask = None if attention_mask is None else attention_mask.bool()
        return self.run_decoder(ids, mem, self.rope.tables(ids.shape[1]), token_mask=token_mask)

    def _memory(self, stm: Tensor | None, memory_kv: MemoryKV | None) -> MemoryKV:
        if (stm is None) == (memory_kv is None):
            raise ValueError("pass exactly one of stm / memory_kv")
        return memory_kv if memory_kv is not None else self.memory_kv(stm)

    def run_decoder(
        self,
        ids: Tensor,
        mem: MemoryKV,
        cis: Tensor,
        cache: KVCacheHook | None = None,
        token_mask: Tensor | None = None,
        last_only: bool = False,
        need_aux: bool = True,
        at: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The decoder stack on ids (B, T) -> (logits (B, T or 1, V), balance loss). Used by generation.

        cis: RoPE rotations of the ids' positions; cache: where self-attention K/V go (None = no cache).
        last_only: logits of the last position only; at (B,) long: of that position in each row (a
        right-padded batch of prompts), (B, 1, V).
        """
        x = self.embedding(ids)  # (B, T, D)
        aux_sum: Tensor | None = None
        n_aux = 0
        # cache rows: stateless layers first, then the memory layers, then the final stateless ones
        first = len(self.stateless_layers)
        plan = [(j, layer, None) for j, layer in enumerate(self.stateless_layers)]
        plan += [(first + i, layer, i) for i, layer in enumerate(self.decoder_layers)]
        last = first + len(self.decoder_layers)
        plan += [(last + j, layer, None) for j, layer in enumerate(self.final_stateless_layers)]
        for index, layer, i in plan:
            mk, mv = (None, None) if i is None else (mem.k[i], mem.v[i])
            x, aux = layer(x, cis, mk, mv, cache, index, token_mask, need_aux)
            if aux is not None:
                aux_sum = aux if aux_sum is None else aux_sum + aux
                n_aux += 1
        if at is not None:
            x = x[torch.arange(x.shape[0], device=x.device), at][:, None]  # (B, 1, D)
        elif last_only:
            x = x[:, -1:]
        h = self.decoder_norm(x) if self.config.final_norm else x
        logits = linear(h, self.embedding.weight, None, self._tied_head) if self.config.tied_head else self.head(h)
        aux_mean = logits.new_zeros(()) if aux_sum is None else aux_sum / n_aux
        return logits, aux_mean

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        ids: Tensor | list[Tensor],
        stm: Tensor | None = None,
        max_new_tokens: int = 64,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        *,
        memory_kv: MemoryKV | None = None,
    ) -> Tensor:
        """Generate up to max_new_tokens per row -> (B, n) new ids, padded with tokenizer.pad_id.

        ids: (B, T) or a list of 1-D tensors (ragged batch). Each row stops at [EOS] (included) or its
        budget. KV-cached, memory K/V computed once; runs on DecodeBatch. When sampling, each row draws
        from its own generator seeded from `generator` (or the global RNG): a row's tokens do not depend
        on its neighbours.
        """
        from reactor_rt.model.generation import generate

        return generate(self, ids, stm, max_new_tokens, sampler, generator, memory_kv=memory_kv)

    # ---------------------------------------------------------------- checkpoints
    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json, model.safetensors and the tokenizer files into directory."""
        from reactor_rt.model.checkpoint import save_checkpoint

        save_checkpoint(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs: Any) -> ReactiveTransformer:
        """Load a checkpoint written by save_pretrained; CheckpointError when missing/corrupt/mismatched."""
        from reactor_rt.model.checkpoint import load_checkpoint

        return load_checkpoint(cls, directory, **kwargs)

    def num_parameters(self) -> int:
        """Number of parameters (the shared embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

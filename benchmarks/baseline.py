"""A stateless decoder-only baseline with RxT's own decoder blocks, and the two ways it converses.

`StatelessDecoder.from_rxt(model)` builds a decoder-only LM of the same size as the RxT decoder: the
same embedding (vocabulary, tied head), the same layers, heads, SQA/GQA head counts and FFN / MoE,
made of the model's own `DecoderLayer` with memory cross-attention disabled (a "stateless" layer), and
with the RxT decoder's weights copied in. It has no STM, so it only knows the past by reading it:

* `StatelessChat(mode="reread")`: every turn prefills the whole history + the new query, then generates
  the answer (a stateless LLM API: the client resends the conversation);
* `StatelessChat(mode="kv")`: a persistent KV cache of the history; a turn prefills only the new tokens
  (what prefix caching gives an LLM server, the honest baseline).

Both decode the answer with a KV cache, greedily, token by token, as `DecodeBatch` does for RxT.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reactor_rt.model import ReactiveTransformer, RxTConfig
from reactor_rt.model.attention import RotaryEmbedding
from reactor_rt.model.layers import RMSNorm
from reactor_rt.model.rxt import DecoderLayer
from reactor_rt.tokenizer import ByteTokenizer

__all__ = ["KVCache", "NoEosTokenizer", "StatelessChat", "StatelessDecoder", "build_rxt", "random_ids"]


class NoEosTokenizer(ByteTokenizer):
    """Byte tokenizer whose [EOS] can never be sampled: untrained models then answer to their budget,
    so every compared system does exactly the requested work."""

    def __init__(self) -> None:
        super().__init__()
        self.eos_id = -1


def build_rxt(preset: str = "tiny", seed: int = 0) -> ReactiveTransformer:
    """An untrained RxT of a preset, [EOS] disabled, in eval mode."""
    torch.manual_seed(seed)
    return ReactiveTransformer(RxTConfig.preset(preset), NoEosTokenizer()).eval()


def random_ids(n: int, seed: int) -> Tensor:
    """n reproducible ordinary-byte token ids (1-D long)."""
    return torch.randint(8, 260, (n,), generator=torch.Generator().manual_seed(seed))


class KVCache:
    """Static self-attention KV cache of one sequence: (layers, 1, kv_heads, capacity, head_dim) each for
    keys and values, filled from position 0 up to `length`."""

    def __init__(self, layers: int, kv_heads: int, capacity: int, head_dim: int, dtype: torch.dtype) -> None:
        self.k = torch.zeros(layers, 1, kv_heads, capacity, head_dim, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    @property
    def capacity(self) -> int:
        """Positions the buffers hold."""
        return self.k.shape[3]

    @property
    def allocated_bytes(self) -> int:
        """Bytes of the key and value buffers as allocated."""
        return self.k.nbytes + self.v.nbytes

    @property
    def used_bytes(self) -> int:
        """Bytes of the filled part (what a paged / growing cache would hold)."""
        return self.k[:, :, :, : self.length].nbytes + self.v[:, :, :, : self.length].nbytes


class _AppendHook:
    """KVCacheHook that appends one forward's new keys/values at the cache's end and exposes the
    prefix; new tokens see every cached token and each other causally."""

    def __init__(self, cache: KVCache, new: int) -> None:
        self.cache, self.start, self.new = cache, cache.length, new
        end = self.start + new
        if end > cache.capacity:
            raise ValueError(f"{end} positions exceed the cache's {cache.capacity}")
        self.mask: Tensor | None = None
        if self.start > 0 and new > 1:  # causal with an offset: query i sees keys 0 .. start + i
            self.mask = torch.arange(end)[None] <= (self.start + torch.arange(new))[:, None]  # (T, S)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None, bool]:
        end = self.start + self.new
        self.cache.k[layer, :, :, self.start : end] = k
        self.cache.v[layer, :, :, self.start : end] = v
        keys, values = self.cache.k[layer, :, :, :end], self.cache.v[layer, :, :, :end]  # (1, Hkv, S, hd)
        if self.start == 0:
            return keys, values, None, True  # plain causal prefill
        return keys, values, self.mask, False  # a single new token needs no mask at all


class StatelessDecoder(nn.Module):
    """Decoder-only LM: embedding -> RxT decoder layers without memory cross-attention -> norm -> tied head."""

    def __init__(self, config: RxTConfig, max_seq_len: int) -> None:
        super().__init__()
        # a benchmark model: its own config copy with a RoPE table long enough for a whole conversation
        c = RxTConfig(**{**config.model_dump(), "max_seq_len": max_seq_len,
                         "max_query_tokens": min(config.max_query_tokens, max_seq_len - 5)})
        self.config = c
        self.embedding = nn.Embedding(c.vocab_size, c.dim)
        self.rope = RotaryEmbedding(c.head_dim, c.max_seq_len, c.rope_theta)
        kind = "moe" if c.is_moe else "dense"
        self.layers = nn.ModuleList(DecoderLayer(c, kind) for _ in range(c.layers))
        self.norm = RMSNorm(c.dim, c.norm_eps)

    @classmethod
    def from_rxt(cls, model: ReactiveTransformer, max_seq_len: int) -> StatelessDecoder:
        """The baseline twin of an RxT decoder, with its weights (memory cross-attention left out)."""
        base = cls(model.config, max_seq_len)
        base.embedding.load_state_dict(model.embedding.state_dict())
        base.norm.load_state_dict(model.decoder_norm.state_dict())
        for mine, theirs in zip(base.layers, model.decoder_layers, strict=True):
            state = {k: v for k, v in theirs.state_dict().items() if k.split(".")[0] in ("self_norm", "self_attn",
                                                                                          "ffn_norm", "ffn")}
            mine.load_state_dict(state)
        return base.eval()

    def new_cache(self, capacity: int | None = None) -> KVCache:
        """An empty KV cache of `capacity` positions (default: max_seq_len)."""
        c = self.config
        return KVCache(c.layers, c.kv_heads, capacity or c.max_seq_len, c.head_dim, self.embedding.weight.dtype)

    def forward(self, ids: Tensor, cache: KVCache) -> Tensor:
        """Feed ids (1, T) after the cache's tokens, append their keys/values -> last logits (1, V)."""
        t = ids.shape[1]
        hook = _AppendHook(cache, t)
        cis = self.rope.tables(t, cache.length)
        x = self.embedding(ids)  # (1, T, D)
        for index, layer in enumerate(self.layers):
            x, _ = layer(x, cis, None, None, hook, index, None, False)
        cache.length += t
        return F.linear(self.norm(x[:, -1]), self.embedding.weight)  # (1, V)


class StatelessChat:
    """One conversation with a StatelessDecoder: `turn(query, answer_len)` answers greedily.

    mode "reread" prefills history + query from an empty cache every turn; mode "kv" keeps the cache
    and prefills only what it has not seen (the previous answer's last token and the query).
    """

    def __init__(self, model: StatelessDecoder, mode: Literal["reread", "kv"], capacity: int | None = None) -> None:
        if mode not in ("reread", "kv"):
            raise ValueError(f"mode must be 'reread' or 'kv', not {mode!r}")
        self.model, self.mode = model, mode
        self.cache = model.new_cache(capacity)  # positions; default the model's max_seq_len
        self.history: list[int] = []  # every token of the conversation so far

    @torch.inference_mode()
    def load_history(self, ids: Tensor) -> None:
        """Start from a conversation whose tokens are ids (1-D), without timing it: the kv mode prefills
        all but the last token (which, like a generated answer's last token, the model has not fed)."""
        self.history = [int(i) for i in ids]
        self.cache.length = 0
        if self.mode == "kv" and len(self.history) > 1:
            self.model(ids[None, :-1], self.cache)

    def mark(self) -> tuple[int, int]:
        """The conversation's position (history length, cached tokens), for `rewind`."""
        return len(self.history), self.cache.length

    def rewind(self, mark: tuple[int, int]) -> None:
        """Go back to a `mark`: later tokens are forgotten (their cache entries get overwritten), so a
        turn can be timed several times from the same state."""
        del self.history[mark[0] :]
        self.cache.length = mark[1]

    @torch.inference_mode()
    def turn(self, query: Tensor, answer_len: int) -> list[int]:
        """Answer query (1-D ids) with answer_len greedy tokens; history grows by query + answer."""
        if self.mode == "reread":
            self.cache.length = 0
        fed = self.cache.length
        self.history += [int(i) for i in query]
        logits = self.model(torch.tensor(self.history[fed:])[None], self.cache)
        answer = [int(logits.argmax(-1))]
        for _ in range(answer_len - 1):
            logits = self.model(torch.tensor([[answer[-1]]]), self.cache)
            answer.append(int(logits.argmax(-1)))
        self.history += answer
        return answer

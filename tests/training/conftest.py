"""Fixtures for the training tests: a micro model with a small trained BPE tokenizer."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from reactor_rt.model import ReactiveTransformer, RxTConfig
from reactor_rt.tokenizer import HFTokenizer
from reactor_rt.training.bpe import train_bpe_tokenizer
from reactor_rt.training.corpus import tokenizer_corpus


@pytest.fixture(scope="session")
def micro_tokenizer() -> HFTokenizer:
    return HFTokenizer(
        train_bpe_tokenizer(tokenizer_corpus(n_sentences=800, n_dialogues=300), vocab_size=320)
    )


@pytest.fixture
def micro_model(micro_tokenizer: HFTokenizer) -> Callable[..., ReactiveTransformer]:
    def make(seed: int = 0, slots: int = 8) -> ReactiveTransformer:
        cfg = RxTConfig(
            vocab_size=micro_tokenizer.vocab_size, dim=32, layers=1, heads=2, query_heads=2, kv_heads=2,
            ff_dim=64, moe_experts=0, stm_slots=slots, max_seq_len=64, max_query_tokens=32,
        )  # fmt: skip
        torch.manual_seed(seed)
        return ReactiveTransformer(cfg, micro_tokenizer)

    return make

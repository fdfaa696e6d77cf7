"""Sampler: temperature, top-k and top-p (nucleus) sampling; greedy at temperature 0."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from reactor_rt.errors import ConfigError
from reactor_rt.model.config import RxTConfig

__all__ = ["Sampler"]


class Sampler(BaseModel):
    """How the next token is picked from logits. Part of the model's hyper-parameters (RxTConfig)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(0.0, ge=0)
    top_k: int = Field(0, ge=0)  # 0 = no top-k cut
    top_p: float = Field(1.0, gt=0, le=1.0)  # 1.0 = no nucleus cut

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(f"invalid Sampler: {exc}") from None

    @property
    def greedy(self) -> bool:
        """True when sampling is argmax (temperature 0)."""
        return self.temperature == 0.0

    @classmethod
    def from_config(cls, config: RxTConfig) -> Sampler:
        """The sampler a config names (its temperature, top_k, top_p)."""
        return cls(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)

    def sample(self, logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """logits (B, V) -> token ids (B,)."""
        if self.greedy:
            return logits.argmax(dim=-1)
        logits = logits.float() / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            # drop a token when the tokens before it already cover top_p (the first one always stays)
            drop = (cum - sorted_logits.softmax(dim=-1)) >= self.top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
        probs = logits.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

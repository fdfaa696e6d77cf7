"""Sampler: temperature, top-k and top-p (nucleus) sampling; greedy at temperature 0."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from reactor_rt.errors import ConfigError
from reactor_rt.model.config import RxTConfig

__all__ = ["Sampler"]

_MAX_FLOAT32 = float(torch.finfo(torch.float32).max)


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
        inverse = 1.0 / self.temperature if self.temperature else float("inf")
        if self.greedy or inverse > _MAX_FLOAT32:  # a temperature too small to divide by in float32
            return logits.argmax(dim=-1)
        # shifted so the best logit is 0: a small temperature sends the others to -inf, never to +inf.
        # The cuts rank tokens by these unscaled logits: a huge temperature may round every scaled
        # logit to the same value, and must not turn top-k 1 or a tiny top-p into a random pick.
        shifted = logits.float()
        shifted = shifted - shifted.amax(dim=-1, keepdim=True)
        scaled = shifted * inverse
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = shifted.topk(self.top_k, dim=-1).values[..., -1:]
            scaled = scaled.masked_fill(shifted < kth, float("-inf"))
        if self.top_p < 1.0:
            order = shifted.argsort(dim=-1, descending=True, stable=True)
            ranked = scaled.gather(-1, order)
            probs = ranked.softmax(dim=-1)
            # drop a token when the tokens before it already cover top_p (the first one always stays,
            # even when top_p is below float32's resolution)
            drop = (probs.cumsum(dim=-1) - probs) >= self.top_p
            drop[..., 0] = False
            scaled = torch.empty_like(scaled).scatter_(-1, order, ranked.masked_fill(drop, float("-inf")))
        probs = scaled.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

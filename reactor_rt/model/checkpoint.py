"""Checkpoints: config.json + model.safetensors + tokenizer files, with clear errors.

The output head and the MLM head reuse the embedding matrix (no tensor of their own), so the tied
weight is stored once and there is nothing to re-tie on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from reactor_rt.errors import CheckpointError, ReactorError
from reactor_rt.model.config import RxTConfig
from reactor_rt.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from reactor_rt.model.rxt import ReactiveTransformer

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "load_checkpoint", "save_checkpoint"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_checkpoint(model: ReactiveTransformer, directory: str | Path) -> None:
    """Write the model's config, weights and tokenizer into directory (created if needed)."""
    from safetensors.torch import save_file

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(model.config.model_dump_json(indent=2))
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt", "library": "reactor-rt"})
    model.tokenizer.save(path)


def load_checkpoint(
    cls: type[ReactiveTransformer], directory: str | Path, map_location: str | torch.device = "cpu", **_: Any
) -> ReactiveTransformer:
    """Build a model from a checkpoint directory; CheckpointError when anything is missing or wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is missing {name}")
    try:
        config = RxTConfig(**json.loads((path / CONFIG_FILE).read_text()))
    except (ValueError, TypeError) as exc:  # bad JSON or invalid fields (ConfigError is a ValueError)
        raise CheckpointError(f"corrupt {path / CONFIG_FILE}: {exc}") from exc
    try:
        tokenizer = load_tokenizer(path)
    except ReactorError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from exc
    try:
        tensors = load_file(str(path / WEIGHTS_FILE), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt {path / WEIGHTS_FILE}: {exc}") from exc
    try:
        model = cls(config, tokenizer)
    except ReactorError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tensors[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing tensors {missing[:5]}")
        if unexpected:
            details.append(f"unexpected tensors {unexpected[:5]}")
        if wrong:
            details.append(
                "shape mismatch " + ", ".join(f"{k}: {tuple(tensors[k].shape)} vs {tuple(expected[k].shape)}"
                                              for k in wrong[:5])
            )
        raise CheckpointError(f"weights in {path} do not match config.json: " + "; ".join(details))
    model.load_state_dict(tensors, strict=True)
    return model.to(map_location)

"""Checkpoints that ship inside the package (trained by the project's own recipes).

``tiny``: produced by ``reactor-rt train --recipe tiny`` (reactor_rt/training/recipe.py); its recall
table is ``tiny/recall.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from reactor_rt.errors import CheckpointError

if TYPE_CHECKING:
    from reactor_rt.model import ReactiveTransformer

__all__ = ["available", "bundled_path", "load_model"]

_ROOT = Path(__file__).resolve().parent


def available() -> tuple[str, ...]:
    """Names of the bundled checkpoints present in this installation."""
    return tuple(sorted(p.name for p in _ROOT.iterdir() if (p / "config.json").is_file()))


def bundled_path(name: str = "tiny") -> Path:
    """Directory of a bundled checkpoint; CheckpointError for an unknown name."""
    names = available()
    if name not in names:
        raise CheckpointError(f"unknown bundled model {name!r}; available: {', '.join(names) or 'none'}")
    return _ROOT / name


def load_model(name: str = "tiny") -> ReactiveTransformer:
    """Load a bundled checkpoint in eval mode, with its trained tokenizer (``model.tokenizer``)."""
    from reactor_rt.model import ReactiveTransformer

    return ReactiveTransformer.from_pretrained(bundled_path(name)).eval()

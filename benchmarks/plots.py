"""The benchmarks' matplotlib plumbing: a headless figure, and writing it out as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["figure", "save"]


def figure(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``plt.subplots(...)`` on the Agg backend (no display needed): ``(fig, axes)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save(fig: Any, path: str | Path) -> Path:
    """Lay out, write ``fig`` to ``path`` and free it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path

"""The training and evaluation commands of the `reactor-rt` CLI (wired in by reactor_rt.cli).

Runnable on their own too::

    python -m reactor_rt.cli_train train --recipe tiny [--out runs/tiny] [--seed 0] [--no-resume]
    python -m reactor_rt.cli_train eval recall [--model tiny|DIR] [--json] [--n 200]
"""

from __future__ import annotations

import argparse
import json as _json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "add_eval_parser",
    "add_train_parser",
    "compare_with_bundled",
    "eval_recall_command",
    "main",
    "train_command",
]

DEFAULT_THREADS = 2


def _set_threads(threads: int | None) -> None:
    # PASSIVE: idle OpenMP threads sleep instead of spinning, which on a shared 2-core machine made step
    # times swing 1-7 s (TRAINING_NOTES.md). Only effective before OpenMP starts, hence setdefault here
    # and in main(); the shell may set it too.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads is not None and threads < 0:
        from reactor_rt.errors import ConfigError

        raise ConfigError(f"--threads must be a positive number (0 or none: torch's default), not {threads}")
    import torch

    if threads:
        torch.set_num_threads(threads)


def train_command(
    recipe: str = "tiny",
    out: str | Path | None = None,
    seed: int = 0,
    resume: bool = True,
    progress: bool = True,
    threads: int | None = DEFAULT_THREADS,
    evaluate: bool = True,
) -> int:
    """Run a training recipe end to end; prints a summary per stage and the recall table. Returns 0.

    out defaults to ``runs/<recipe>``; the final model is ``<out>/model``. With ``resume`` (default) a
    rerun continues from the last checkpoint of the interrupted stage.
    """
    _set_threads(threads)
    from reactor_rt.training.recipe import train

    out_dir = Path(out) if out is not None else Path("runs") / recipe
    summary = train(recipe, out_dir, seed=seed, resume=resume, progress=progress, evaluate=evaluate)
    print(summary.text())
    line = compare_with_bundled(recipe, Path(summary.model_dir))
    if line:
        print(line)
    return 0


def compare_with_bundled(name: str, model_dir: Path) -> str | None:
    """One line saying whether a freshly trained checkpoint equals the bundled one of the same name."""
    from safetensors.torch import load_file

    from reactor_rt.bundled import available, bundled_path

    if name not in available():
        return None
    ours = load_file(str(model_dir / "model.safetensors"))
    shipped = load_file(str(bundled_path(name) / "model.safetensors"))
    if ours.keys() != shipped.keys() or any(ours[k].shape != shipped[k].shape for k in ours):
        return f"differs from the bundled {name!r} checkpoint: other parameter names or shapes"
    diff = max(float((ours[k].float() - shipped[k].float()).abs().max()) for k in ours)
    if diff == 0.0:
        return f"identical to the bundled {name!r} checkpoint (every weight equal)"
    return f"differs from the bundled {name!r} checkpoint: max |weight difference| {diff:.3g}"


def _load(model: str):  # -> ReactiveTransformer
    from reactor_rt.bundled import available, load_model
    from reactor_rt.errors import CheckpointError
    from reactor_rt.model import ReactiveTransformer

    if model in available():
        return load_model(model)
    path = Path(model)
    if path.is_dir():
        return ReactiveTransformer.from_pretrained(path).eval()
    raise CheckpointError(
        f"{model!r} is neither a bundled model ({', '.join(available())}) nor a checkpoint directory"
    )


def eval_recall_command(
    model: str = "tiny",
    json: bool = False,
    n: int = 200,
    ks: Sequence[int] = (0, 1, 2, 4, 8),
    seed: int = 1234,
    ablation: bool = True,
    threads: int | None = DEFAULT_THREADS,
    *,
    json_output: bool | None = None,
    dialogues: int | None = None,
) -> int:
    """Print recall accuracy by intervening turns on held-out dialogues (Markdown table, or JSON).

    model: a bundled name or a checkpoint directory; n: held-out dialogues per cell. ``json_output``
    and ``dialogues`` are accepted as aliases of ``json`` and ``n``. Returns 0.
    """
    json = json if json_output is None else json_output
    n = n if dialogues is None else dialogues
    from reactor_rt.errors import ConfigError

    if n < 1:
        raise ConfigError(f"the recall evaluation needs at least 1 dialogue per cell, not {n}")
    if not ks or min(ks) < 0:
        raise ConfigError(f"--ks needs one or more numbers of intervening turns >= 0, not {list(ks)}")
    _set_threads(threads)
    from reactor_rt.training.eval_recall import evaluate_recall, format_table

    report = evaluate_recall(
        _load(model), ks=tuple(ks), n=n, seed=seed, ablation=ablation, batch_size=min(n, 200)
    )
    if json:
        print(_json.dumps(report.as_dict()))
    else:
        print(format_table(report))
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train`` to a subcommand parser (used by reactor_rt.cli)."""
    p = sub.add_parser("train", help="train a model with a named recipe")
    p.add_argument("--recipe", default="tiny", help="recipe name (tiny, micro)")
    p.add_argument("--out", default=None, help="output directory (default runs/<recipe>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-resume", "--restart", dest="resume", action="store_false", help="start over, clearing --out"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--no-eval", dest="evaluate", action="store_false", help="skip the final recall table")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    return p


def add_eval_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``eval recall`` to a subcommand parser (used by reactor_rt.cli)."""
    p = sub.add_parser("eval", help="evaluate a model")
    kinds = p.add_subparsers(dest="eval_kind", required=True)
    r = kinds.add_parser("recall", help="recall accuracy by intervening turns, with the STM-reset ablation")
    r.add_argument("--model", default="tiny", help="bundled model name or checkpoint directory")
    r.add_argument("--json", action="store_true", help="print JSON instead of a table")
    r.add_argument("--n", type=int, default=200, help="held-out dialogues per cell")
    r.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2, 4, 8], help="intervening turns")
    r.add_argument("--seed", type=int, default=1234)
    r.add_argument("--no-ablation", dest="ablation", action="store_false")
    r.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns its exit status (1 with ``error: ...`` on a ReactorError)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(prog="python -m reactor_rt.cli_train")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_eval_parser(sub)
    args = parser.parse_args(argv)
    from reactor_rt.errors import ReactorError

    try:
        if args.command == "train":
            return train_command(
                args.recipe, args.out, args.seed, args.resume, args.progress, args.threads, args.evaluate
            )
        return eval_recall_command(
            args.model, args.json, args.n, args.ks, args.seed, args.ablation, args.threads
        )
    except ReactorError as exc:  # an expected failure (bad recipe, mismatched run dir): no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

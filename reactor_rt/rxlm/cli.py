"""``reactor-rt import-rxlm SRC OUT``: the command-line face of `reactor_rt.rxlm.convert`."""

from __future__ import annotations

import sys
from pathlib import Path

from reactor_rt.errors import ReactorError

__all__ = ["import_rxlm_command"]


def import_rxlm_command(src: str | Path, out: str | Path, tokenizer: str | Path | None = None) -> int:
    """Convert the RxLM checkpoint in src into a reactor-rt checkpoint in out; 0 on success, 1 on a
    ReactorError (printed to stderr)."""
    from reactor_rt.rxlm.convert import check_destination, load_rxlm, save_converted

    try:
        destination = check_destination(src, out)
        model = load_rxlm(src, tokenizer)
        save_converted(model, destination)
    except ReactorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    c = model.config
    print(
        f"converted {src} -> {out}: {model.num_parameters():,} parameters, {c.layers} memory layers"
        f" (+{len(c.stateless_layers) + len(c.final_stateless_layers)} stateless), {c.stm_slots} STM slots"
    )
    return 0

"""convert(): an RxLM checkpoint directory -> a reactor-rt checkpoint directory."""

from __future__ import annotations

import json
from pathlib import Path

import structlog
import torch

from reactor_rt.errors import CheckpointError, ReactorError
from reactor_rt.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from reactor_rt.model.rxt import ReactiveTransformer
from reactor_rt.rxlm.config_map import UnsupportedCheckpointError, map_config
from reactor_rt.rxlm.weights import map_weights
from reactor_rt.tokenizer import SPECIAL_TOKENS, HFTokenizer

__all__ = ["TOKENIZER_IDS", "check_destination", "convert", "load_rxlm", "save_converted"]

log = structlog.get_logger()

# tokenizer_config keys of the reference -> the special token reactor-rt knows them by
TOKENIZER_IDS = {
    "pad_token_id": "[PAD]", "bos_token_id": "[BOS]", "eos_token_id": "[EOS]",
    "query_token_id": "[Q]", "answer_token_id": "[A]",
}


def _read_config(src: Path) -> dict:
    path = src / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"RxLM checkpoint {src} is missing {CONFIG_FILE}")
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:  # unreadable (permissions, an I/O error)
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"corrupt {path}: not a JSON object")
    return raw


def _read_weights(src: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = src / WEIGHTS_FILE
    if not path.is_file():
        # RxLM saves one file; a sharded set (re-saved by other tools) must be merged first
        sharded = (src / f"{WEIGHTS_FILE}.index.json").is_file()
        raise CheckpointError(f"RxLM checkpoint {src} is missing {WEIGHTS_FILE}" + (
            f" (sharded weights, {WEIGHTS_FILE}.index.json, are not supported: merge them into one file)"
            if sharded else ""))
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt {path}: {exc}") from exc


def _tokenizer(src: Path, tokenizer: str | Path | None, raw: dict, vocab_size: int) -> HFTokenizer:
    """The checkpoint's tokenizer.json, with any special token reactor-rt needs and lacks added."""
    from tokenizers import Tokenizer as _HF

    path = Path(tokenizer) if tokenizer is not None else src / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(
            f"no tokenizer: {path} does not exist (RxLM keeps the tokenizer beside the model; "
            "pass tokenizer=PATH / --tokenizer PATH)"
        )
    try:
        hf = _HF.from_file(str(path))
    except Exception as exc:  # tokenizers raises bare Exception subclasses on bad files
        raise CheckpointError(f"cannot load tokenizer {path}: {exc}") from exc
    ids = raw.get("tokenizer_config") or {}
    if not isinstance(ids, dict):
        raise CheckpointError(f"RxLM config.json: tokenizer_config is not an object: {ids!r}")
    for key, name in TOKENIZER_IDS.items():
        if ids.get(key) is None:
            continue
        if not isinstance(ids[key], int) or isinstance(ids[key], bool) or ids[key] < 0:
            raise CheckpointError(f"RxLM config.json: tokenizer_config.{key}={ids[key]!r} is not a token id")
        have = hf.token_to_id(name)
        if have != ids[key]:
            # the model was trained with the token at ids[key]: it must be the one reactor-rt uses as `name`
            raise CheckpointError(
                f"tokenizer_config.{key}={ids[key]} is {hf.id_to_token(ids[key])!r} in the tokenizer, "
                f"but reactor-rt needs it to be {name}" + ("" if have is None else f" (which is id {have})")
            )
    # only tokens the checkpoint never used (e.g. [R] in a model without reasoning) may be added: the
    # reference prompts with all of TOKENIZER_IDS, so a fresh, untrained [EOS] or [Q] would serve a model
    # that never sees its own markers (its end token never ends an answer)
    unknown = [name for name in TOKENIZER_IDS.values() if hf.token_to_id(name) is None]
    if unknown:
        raise CheckpointError(
            f"tokenizer {path} has no {unknown} and tokenizer_config names no id for them: the model was "
            "trained with such tokens under other names (set tokenizer_config ids, or rename them)"
        )
    missing = [name for name in SPECIAL_TOKENS if hf.token_to_id(name) is None]
    if missing:
        from tokenizers import AddedToken

        hf.add_special_tokens([AddedToken(name, special=True) for name in missing])
        if hf.get_vocab_size(with_added_tokens=True) > vocab_size:
            raise CheckpointError(
                f"tokenizer lacks {missing} and the model's vocabulary ({vocab_size}) has no room to add them"
            )
        log.info("rxlm.import.added_special_tokens", tokens=missing)
    try:
        return HFTokenizer(hf)
    except ReactorError as exc:
        raise CheckpointError(f"tokenizer {path}: {exc}") from exc


def load_rxlm(src_dir: str | Path, tokenizer: str | Path | None = None) -> ReactiveTransformer:
    """Build a ReactiveTransformer (eval mode) from an RxLM checkpoint directory, without writing anything.

    CheckpointError when files are missing or corrupt; UnsupportedCheckpointError (a CheckpointError)
    naming every option reactor-rt cannot reproduce.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise CheckpointError(f"RxLM checkpoint {src} is not a directory")
    raw = _read_config(src)
    tensors = _read_weights(src)
    config, plan = map_config(raw, tensors)
    tok = _tokenizer(src, tokenizer, raw, config.vocab_size)
    try:
        model = ReactiveTransformer(config, tok)
    except ReactorError as exc:
        raise CheckpointError(f"RxLM checkpoint {src}: {exc}") from exc
    fresh = model.state_dict()
    state = map_weights(tensors, config, plan, fresh)
    del tensors  # what is still needed lives on in `state` (mostly the same storage)
    missing = sorted(set(fresh) - set(state))
    if missing:
        raise UnsupportedCheckpointError(f"RxLM weights give no value for {missing[:8]}")
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(fresh[k].shape)}" for k in fresh if state[k].shape != fresh[k].shape]
    if wrong:
        raise CheckpointError("RxLM weights do not match config.json: " + "; ".join(wrong[:5]))
    del fresh
    # assign: the model takes the mapped tensors instead of copying them (one copy of a large model)
    model.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=True, assign=True)
    for note in plan.notes:
        log.info("rxlm.import.defect_handled", note=note)
    return model.eval()


def check_destination(src_dir: str | Path, out_dir: str | Path) -> Path:
    """out_dir as a Path; CheckpointError when writing there would overwrite the RxLM checkpoint
    (reactor-rt's config.json and model.safetensors have the same names) or out_dir is a file."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"output {out} exists and is not a directory")
    if out.resolve() == Path(src_dir).resolve():
        raise CheckpointError(f"output {out} is the RxLM checkpoint itself: converting would overwrite it")
    return out


def save_converted(model: ReactiveTransformer, out: Path) -> None:
    """model.save_pretrained(out), with a failed write (permissions, a full disk) as a CheckpointError."""
    try:
        model.save_pretrained(out)
    except OSError as exc:
        raise CheckpointError(f"cannot write the converted checkpoint to {out}: {exc}") from exc


def convert(src_dir: str | Path, out_dir: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Convert an RxLM checkpoint (config.json + model.safetensors [+ tokenizer.json]) into a reactor-rt
    checkpoint in out_dir, which `ReactiveTransformer.from_pretrained` and `Reactor.start(model=...)` load.

    tokenizer: a tokenizer.json to use when the source directory has none. Returns out_dir as a Path.
    """
    out = check_destination(src_dir, out_dir)
    model = load_rxlm(src_dir, tokenizer)
    save_converted(model, out)
    log.info("rxlm.import.done", src=str(src_dir), out=str(out), parameters=model.num_parameters())
    return out

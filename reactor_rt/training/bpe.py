"""Train the small BPE tokenizer of the recipes with Hugging Face `tokenizers`.

Metaspace word boundaries (so decoding restores spaces exactly), punctuation split off, digits split
one by one (numbers are copied digit by digit, whatever their value), and the whole printable ASCII
alphabet seeded in, so any ASCII text encodes without [UNK]. Other characters map to [UNK].

An optional ``isolate`` regex splits words further before BPE sees them. The recall recipes use it to
cut names and cities at their syllable / place-ending boundary, so that a held-out name is tokenized
like every training name (two pieces both seen in training) instead of in pieces that straddle the
boundary — which made the model copy unseen names as the nearest whole training name.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = ["SPECIAL_TOKENS", "save_tokenizer", "train_bpe_tokenizer"]

# the order fixes their ids: [PAD] = 0, [BOS] = 1, ...; the six RxT specials first, then [UNK] and the
# encoder's MLM [MASK]
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[BOS]", "[EOS]", "[Q]", "[A]", "[R]", "[UNK]", "[MASK]")


def train_bpe_tokenizer(lines: Iterable[str], vocab_size: int = 384, isolate: str | None = None) -> Tokenizer:
    """A BPE tokenizer with the RxT special tokens, trained on ``lines`` (deterministic for the same lines).

    ``isolate``: a regex (Oniguruma) whose matches inside a word (``▁`` marks its start) become pieces of
    their own, so no token spans their boundary.
    """
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    steps = [
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ]
    if isolate:
        steps.append(pre_tokenizers.Split(Regex(isolate), behavior="isolated"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = sorted(set(string.printable) - set(string.whitespace) | {"▁"})
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(list(lines), trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> Path:
    """Write ``tokenizer.json`` into ``directory`` (created if needed) and return its path."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    out = path / "tokenizer.json"
    tok.save(str(out))
    return out

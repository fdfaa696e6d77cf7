"""Tokenizers: one interface, a byte-level default and a wrapper around a `tokenizers` tokenizer.json.

Both know the RxT special tokens: [PAD] [BOS] [EOS] [Q] [A] [R] (and [UNK]).
`IncrementalDecoder` turns a stream of ids into printable text chunks for streaming responses.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path

from reactor_rt.errors import TokenizerError

__all__ = [
    "SPECIAL_TOKENS",
    "ByteTokenizer",
    "HFTokenizer",
    "IncrementalDecoder",
    "Tokenizer",
    "load_tokenizer",
]

SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[Q]", "[A]", "[R]")
_CONFIG_FILE = "tokenizer_config.json"
_HF_FILE = "tokenizer.json"


class Tokenizer(ABC):
    """What the model, template and runtime need from a tokenizer."""

    pad_id: int
    bos_id: int
    eos_id: int
    query_id: int
    answer_id: int
    reasoning_id: int
    unk_id: int | None

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids for `text`; no special tokens are added, and text spelling one ("[A]") stays text."""

    @abstractmethod
    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text for `ids`; incomplete UTF-8 at the end decodes to U+FFFD."""

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write the tokenizer files into `directory` (created if needed)."""

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the special tokens."""
        ids = {self.pad_id, self.bos_id, self.eos_id, self.query_id, self.answer_id, self.reasoning_id}
        if self.unk_id is not None:
            ids.add(self.unk_id)
        return frozenset(ids)


class ByteTokenizer(Tokenizer):
    """256 byte ids after 8 reserved special ids: the default tokenizer of an untrained model."""

    OFFSET = 8  # [PAD] [BOS] [EOS] [Q] [A] [R] [UNK] + one spare

    def __init__(self) -> None:
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
        self.query_id, self.answer_id, self.reasoning_id, self.unk_id = 3, 4, 5, 6
        self._names = {i: name for i, name in enumerate((*SPECIAL_TOKENS, "[UNK]"))}

    @property
    def vocab_size(self) -> int:
        return 256 + self.OFFSET

    def encode(self, text: str) -> list[int]:
        return [b + self.OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        out = bytearray()
        parts: list[str] = []
        for i in ids:
            i = int(i)
            if self.OFFSET <= i < self.vocab_size:
                out.append(i - self.OFFSET)
            elif i >= self.vocab_size:  # an id past the byte range (a model vocab padded beyond it)
                out.extend("\ufffd".encode())
            elif not skip_special:
                parts.append(out.decode("utf-8", errors="replace"))
                out.clear()
                parts.append(self._names.get(i, "[UNK]"))
        parts.append(out.decode("utf-8", errors="replace"))
        return "".join(parts)

    def save(self, directory: str | Path) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / _CONFIG_FILE).write_text(json.dumps({"kind": "byte"}))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash("ByteTokenizer")


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer` that contains the RxT special tokens."""

    def __init__(self, tokenizer: object) -> None:
        from tokenizers import Tokenizer as _HF

        if not isinstance(tokenizer, _HF):
            raise TokenizerError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        # A copy that encodes special tokens' text as plain text: a query spelling "[A]" or "[EOS]" must
        # not become that marker (user text could end the query, fake an answer or stop the answer).
        # Special ids are only ever placed by the template. The caller's object is left as it was.
        tokenizer = _HF.from_str(tokenizer.to_str())
        tokenizer.encode_special_tokens = True
        self._tok = tokenizer
        ids = {name: tokenizer.token_to_id(name) for name in SPECIAL_TOKENS}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise TokenizerError(f"tokenizer lacks the special tokens RxT needs: {missing}")
        self.pad_id, self.bos_id, self.eos_id = ids["[PAD]"], ids["[BOS]"], ids["[EOS]"]
        self.query_id, self.answer_id, self.reasoning_id = ids["[Q]"], ids["[A]"], ids["[R]"]
        self.unk_id = tokenizer.token_to_id("[UNK]")

    @classmethod
    def from_file(cls, path: str | Path) -> HFTokenizer:
        """Load a tokenizer.json file."""
        from tokenizers import Tokenizer as _HF

        try:
            return cls(_HF.from_file(str(path)))
        except TokenizerError:
            raise
        except Exception as exc:  # tokenizers raises bare Exception subclasses on bad files
            raise TokenizerError(f"cannot load tokenizer from {path}: {exc}") from exc

    @property
    def backend(self) -> object:
        """The wrapped `tokenizers.Tokenizer`."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        # special tokens' text stays text (see __init__)
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def save(self, directory: str | Path) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path / _HF_FILE))
        (path / _CONFIG_FILE).write_text(json.dumps({"kind": "hf"}))


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load the tokenizer saved in `directory` (by `Tokenizer.save`, or a bare tokenizer.json)."""
    path = Path(directory)
    config = path / _CONFIG_FILE
    kind = None
    if config.exists():
        try:
            kind = json.loads(config.read_text()).get("kind")
        except (ValueError, AttributeError) as exc:
            raise TokenizerError(f"corrupt {config}: {exc}") from exc
    elif (path / _HF_FILE).exists():
        kind = "hf"
    if kind == "byte":
        return ByteTokenizer()
    if kind == "hf":
        if not (path / _HF_FILE).exists():
            raise TokenizerError(f"missing {path / _HF_FILE}")
        return HFTokenizer.from_file(path / _HF_FILE)
    raise TokenizerError(f"no tokenizer found in {path}")


class IncrementalDecoder:
    """Streams text for ids pushed one by one, holding back incomplete UTF-8 / partial pieces.

    Decodes a short window of recent ids and emits only the text that grew past what was already
    emitted, so multi-byte characters split over several tokens come out whole.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._ids: list[int] = []
        self._prefix = 0  # start of the window whose text was already (partly) emitted
        self._read = 0  # ids before this index have been emitted as text

    def push(self, token_id: int) -> str:
        """Add one id; return the new printable text (may be empty)."""
        self._ids.append(int(token_id))
        decode = self.tokenizer.decode
        done = decode(self._ids[self._prefix : self._read], self.skip_special)
        full = decode(self._ids[self._prefix :], self.skip_special)
        if len(full) > len(done) and not full.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return full[len(done) :]
        return ""

    def flush(self) -> str:
        """Return whatever text is still held back (incomplete bytes become U+FFFD) and reset."""
        decode = self.tokenizer.decode
        done = decode(self._ids[self._prefix : self._read], self.skip_special)
        full = decode(self._ids[self._prefix :], self.skip_special)
        self._ids, self._prefix, self._read = [], 0, 0
        return full[len(done) :] if full.startswith(done) else full

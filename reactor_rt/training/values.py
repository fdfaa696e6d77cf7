"""Attribute values of the recall task, built compositionally and split into train / held-out.

Every value is made of small pieces (syllables, words, digits) that all occur in training, but a
fixed fifth of the *combinations* is held out: evaluation asks the model to remember strings it has
never seen whole, so it must copy them through its memory instead of recalling them from weights.
The split is a pure function of the value (CRC-32), so it is identical in every process and run.
"""

from __future__ import annotations

import zlib
from functools import cache
from typing import Literal

__all__ = [
    "ATTRIBUTES",
    "VALUE_PIECES_PATTERN",
    "Split",
    "all_values",
    "is_held_out",
    "values",
]

Split = Literal["train", "heldout"]

ATTRIBUTES: tuple[str, ...] = ("name", "city", "color", "pet", "number", "food", "job", "day")

# names: two syllables from one set; cities: a syllable from another set + a place ending, so a name
# is never a substring of a city (or the reverse) and held-out strings stay unseen as substrings
_NAME_SYLLABLES = (
    "ka", "lo", "mi", "ra", "ne", "to", "su", "vi", "da", "be",
    "ri", "no", "zu", "fe", "go", "ha", "je", "pa", "ti", "yo",
)  # fmt: skip
_CITY_STARTS = (
    "bram", "cor", "del", "fen", "glen", "hol", "mar", "nor", "pel", "quin",
    "ros", "sel", "tam", "vor", "wes", "ash", "elm", "oak", "kir", "lun",
)  # fmt: skip
_CITY_ENDS = ("ton", "burg", "ville", "ford", "port", "dale", "mere", "wick")
_SHADES = ("light", "dark", "pale", "deep", "bright", "soft", "warm", "cool")
_HUES = (
    "red",
    "blue",
    "green",
    "yellow",
    "orange",
    "purple",
    "pink",
    "brown",
    "gray",
    "teal",
    "gold",
    "silver",
)
_PET_ADJECTIVES = ("small", "big", "lazy", "happy", "spotted", "sleepy", "fluffy", "young", "noisy", "shy")
_ANIMALS = (
    "cat",
    "dog",
    "parrot",
    "rabbit",
    "turtle",
    "hamster",
    "goldfish",
    "pony",
    "snake",
    "lizard",
    "mouse",
    "frog",
)
_FOOD_ADJECTIVES = ("spicy", "sweet", "sour", "salty", "fresh", "hot", "cold", "crispy", "creamy", "smoky")
_DISHES = (
    "noodles",
    "soup",
    "rice",
    "bread",
    "salad",
    "pie",
    "curry",
    "tacos",
    "pasta",
    "cake",
    "stew",
    "pancakes",
)
_JOB_FIELDS = ("bread", "boat", "book", "garden", "code", "music", "stone", "glass", "tea", "bike")
_JOB_ROLES = (
    "maker",
    "seller",
    "painter",
    "keeper",
    "teacher",
    "tester",
    "driver",
    "fixer",
    "cleaner",
    "builder",
)
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


# for the tokenizer (`bpe.train_bpe_tokenizer(isolate=...)`): a word-initial ``▁`` + capitalised first
# piece of a name (consonant-vowel, then one more consonant-vowel syllable) or of a city (then a place
# ending); the match becomes a token boundary, so "Gozu" -> "▁Go" "zu" and "Holdale" -> "▁Hol" "dale"
VALUE_PIECES_PATTERN = (
    r"^▁[A-Z](?:[aeiou](?=[b-df-hj-np-tv-z][aeiou]$)|[a-z]+?(?=(?:" + "|".join(_CITY_ENDS) + r")$))"
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _build(attribute: str) -> tuple[str, ...]:
    if attribute == "name":
        return tuple((a + b).capitalize() for a in _NAME_SYLLABLES for b in _NAME_SYLLABLES if a != b)
    if attribute == "city":
        return tuple((a + b).capitalize() for a in _CITY_STARTS for b in _CITY_ENDS)
    if attribute == "color":
        return tuple(f"{s} {h}" for s in _SHADES for h in _HUES)
    if attribute == "pet":
        return tuple(f"{_article(a)} {a} {b}" for a in _PET_ADJECTIVES for b in _ANIMALS)
    if attribute == "number":
        return tuple(str(n) for n in range(100, 10000))  # >= 100: never a day of the month
    if attribute == "food":
        return tuple(f"{a} {b}" for a in _FOOD_ADJECTIVES for b in _DISHES)
    if attribute == "job":
        return tuple(f"{a} {b}" for a in _JOB_FIELDS for b in _JOB_ROLES)
    if attribute == "day":
        return tuple(f"{m} {d}" for m in _MONTHS for d in range(1, 29))
    raise KeyError(f"unknown attribute {attribute!r}; known: {', '.join(ATTRIBUTES)}")


def is_held_out(attribute: str, value: str) -> bool:
    """True for the fixed fifth of an attribute's values reserved for evaluation."""
    return zlib.crc32(f"{attribute}:{value}".encode()) % 5 == 0


@cache
def all_values(attribute: str) -> tuple[str, ...]:
    """Every value of an attribute, train and held-out together (the scorer's universe)."""
    return _build(attribute)


@cache
def values(attribute: str, split: Split) -> tuple[str, ...]:
    """The values of one split: "train" never contains a held-out value, "heldout" only those."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    want = split == "heldout"
    return tuple(v for v in all_values(attribute) if is_held_out(attribute, v) == want)

"""The recall scorer: did an answer name the right value, and no other value of that attribute?"""

from __future__ import annotations

import re
from functools import cache

from reactor_rt.training.values import all_values

__all__ = ["mentioned_values", "recall_correct"]

_WORD = re.compile(r"[A-Za-z0-9]+")
_MAX_WORDS = 3  # the longest value ("a lazy cat") has three words


@cache
def _universe(attribute: str) -> frozenset[str]:
    return frozenset(v.lower() for v in all_values(attribute))


def mentioned_values(answer: str, attribute: str) -> set[str]:
    """Every value of ``attribute`` (train or held-out, lower-cased) that occurs as whole words."""
    words = [w.lower() for w in _WORD.findall(answer)]
    universe = _universe(attribute)
    found: set[str] = set()
    for n in range(1, _MAX_WORDS + 1):
        for i in range(len(words) - n + 1):
            phrase = " ".join(words[i : i + n])
            if phrase in universe:
                found.add(phrase)
    return found


def recall_correct(answer: str, attribute: str, expected: str) -> bool:
    """True when the expected value appears in the answer and no other value of the attribute does.

    Matching is on whole words, case-insensitive, ignoring punctuation. A value that is part of the
    expected one (e.g. "cat" inside "a lazy cat") is not counted as another value.
    """
    found = mentioned_values(answer, attribute)
    want = expected.lower()
    if want not in found:
        return False
    return all(f" {v} " in f" {want} " for v in found)

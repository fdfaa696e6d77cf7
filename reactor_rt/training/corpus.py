"""Small natural-looking text for stage 1 (joint LM pre-training) and for training the tokenizer.

A tiny template grammar: everyday sentences about people, places, pets, food and jobs, built from the
*train* split's values only, plus the dialogue lines themselves. It teaches the embedding and both
stacks the words and the sentence shapes that the dialogues use, before memory is involved.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from reactor_rt.training.dialogues import ACKNOWLEDGEMENTS, SMALL_TALK, DialogueGenerator
from reactor_rt.training.values import values

__all__ = ["natural_sentences", "tokenizer_corpus"]

_PLACES = ("park", "market", "library", "station", "garden", "river", "school", "harbor")
_VERBS = ("likes", "visits", "remembers", "paints", "finds", "watches", "wants", "sees")
_TIMES = ("today", "every morning", "on weekends", "in the evening", "at night", "after lunch")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

_TEMPLATES = (
    "{name} lives in {city}.",
    "{name} works as a {job} in {city}.",
    "{name} has {pet} and a {color} bag.",
    "My friend {name} likes {food}.",
    "In {city} people eat {food} {time}.",
    "The {color} house near the {place} belongs to {name}.",
    "{name} {verb} {pet} at the {place} {time}.",
    "The {job} from {city} {verb} the {place} on {weekday}.",
    "We met {name} on {day} at the {place}.",
    "{name} counted {number} birds near the {place}.",
    "There are {number} houses in {city}.",
    "Her favorite color is {color}, and his is {color2}.",
    "On {weekday} {name} cooked {food} for {name2}.",
    "The train to {city} leaves at {hour} o'clock.",
    "{pet_cap} sleeps in the {color} basket.",
)


def natural_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences from the template grammar, using train-split values only."""
    rng = random.Random(seed)

    def pick(attribute: str) -> str:
        return rng.choice(values(attribute, "train"))

    out: list[str] = []
    for _ in range(n):
        pet = pick("pet")
        fields = {
            "name": pick("name"),
            "name2": pick("name"),
            "city": pick("city"),
            "job": pick("job"),
            "pet": pet,
            "pet_cap": pet[0].upper() + pet[1:],
            "color": pick("color"),
            "color2": pick("color"),
            "food": pick("food"),
            "number": pick("number"),
            "day": pick("day"),
            "place": rng.choice(_PLACES),
            "verb": rng.choice(_VERBS),
            "time": rng.choice(_TIMES),
            "weekday": rng.choice(_WEEKDAYS),
            "hour": str(rng.randint(1, 12)),
        }
        out.append(rng.choice(_TEMPLATES).format(**fields))
    return out


def tokenizer_corpus(n_sentences: int = 4000, n_dialogues: int = 1500, seed: int = 0) -> Iterator[str]:
    """Lines to train the BPE tokenizer on: natural sentences plus train-split dialogue lines."""
    yield from natural_sentences(n_sentences, seed=seed)
    yield from ACKNOWLEDGEMENTS
    for query, answer in SMALL_TALK:
        yield query
        yield answer
    gen = DialogueGenerator("train", seed=seed + 1)
    for _ in range(n_dialogues):
        for turn in gen.dialogue(8).turns:
            yield turn.query
            yield turn.answer

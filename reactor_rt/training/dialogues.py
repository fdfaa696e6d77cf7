"""Synthetic multi-turn dialogues for the recall task (the project's own data; nothing downloaded).

Turn kinds:

* fact: ``My <attribute> is <value>.`` answered by a short acknowledgement;
* question: ``What is my <attribute>?`` answered ``Your <attribute> is <value>.`` (only about an
  attribute stated earlier in the same dialogue);
* chat: small talk with a fixed answer.

A generator draws values from one split only (`values.values`), so a "train" generator can never
emit a held-out value. Everything is driven by one `random.Random(seed)`: same seed, same data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from reactor_rt.training.values import ATTRIBUTES, Split, values

__all__ = [
    "ACKNOWLEDGEMENTS",
    "SMALL_TALK",
    "Dialogue",
    "DialogueGenerator",
    "Turn",
    "TurnKind",
    "fact_turn",
    "question_turn",
]

TurnKind = Literal["fact", "question", "chat"]

ACKNOWLEDGEMENTS: tuple[str, ...] = (
    "Got it.",
    "Okay, noted.",
    "Nice to know.",
    "I will remember that.",
    "Thanks for telling me.",
    "Good to know.",
)

SMALL_TALK: tuple[tuple[str, str], ...] = (
    ("Hello!", "Hello! How can I help?"),
    ("Hi there.", "Hi! Nice to see you."),
    ("How are you?", "I am fine, thank you."),
    ("What a nice day.", "Yes, it is lovely."),
    ("I am a bit tired.", "Maybe take a short rest."),
    ("Tell me something nice.", "You are doing great."),
    ("Do you like music?", "Yes, music is fun."),
    ("It is raining today.", "Then take an umbrella."),
    ("I went for a walk.", "Walks are good for you."),
    ("Thank you!", "You are welcome."),
    ("Can you help me?", "Of course, just ask."),
    ("I am hungry.", "Maybe it is time to eat."),
    ("What time is it?", "I do not have a clock."),
    ("Good morning.", "Good morning to you too."),
    ("I like this chat.", "Me too, thanks."),
    ("See you later.", "See you soon."),
)


@dataclass(frozen=True)
class Turn:
    """One interaction: the user's query and the reference answer."""

    query: str
    answer: str
    kind: TurnKind
    attribute: str | None = None
    value: str | None = None


@dataclass(frozen=True)
class Dialogue:
    """A sequence of turns; a question turn asks about a fact stated in an earlier turn."""

    turns: tuple[Turn, ...]

    def __len__(self) -> int:
        return len(self.turns)


def fact_turn(attribute: str, value: str, ack: str) -> Turn:
    """``My <attribute> is <value>.`` with the given acknowledgement as answer."""
    return Turn(f"My {attribute} is {value}.", ack, "fact", attribute, value)


def question_turn(attribute: str, value: str) -> Turn:
    """``What is my <attribute>?`` answered ``Your <attribute> is <value>.``."""
    return Turn(f"What is my {attribute}?", f"Your {attribute} is {value}.", "question", attribute, value)


class DialogueGenerator:
    """Draws dialogues whose values all come from one split (train or held-out)."""

    def __init__(self, split: Split = "train", seed: int = 0) -> None:
        self.split: Split = split
        self.rng = random.Random(seed)
        self._values = {a: values(a, split) for a in ATTRIBUTES}

    def value(self, attribute: str) -> str:
        """A random value of the attribute from this generator's split."""
        return self.rng.choice(self._values[attribute])

    def fact(self, attribute: str) -> Turn:
        return fact_turn(attribute, self.value(attribute), self.rng.choice(ACKNOWLEDGEMENTS))

    def chat(self) -> Turn:
        query, answer = self.rng.choice(SMALL_TALK)
        return Turn(query, answer, "chat")

    def dialogue(self, n_turns: int, p_question: float = 0.45, p_fact: float = 0.4) -> Dialogue:
        """A training dialogue of ``n_turns`` turns: facts, questions about earlier facts, small talk.

        Each attribute is stated at most once, so the latest value is the only value. The first turn is
        always a fact, and a dialogue of two or more turns always contains at least one question.
        """
        if n_turns < 1:
            raise ValueError("a dialogue needs at least one turn")
        rng = self.rng
        unused = list(ATTRIBUTES)
        rng.shuffle(unused)
        stated: dict[str, str] = {}
        turns: list[Turn] = []
        asked = False
        for t in range(n_turns):
            last = t == n_turns - 1
            roll = rng.random()
            if stated and (roll < p_question or (last and not asked)):
                attribute = rng.choice(list(stated))
                turns.append(question_turn(attribute, stated[attribute]))
                asked = True
            elif unused and (t == 0 or roll < p_question + p_fact):
                turn = self.fact(unused.pop())
                assert turn.attribute is not None and turn.value is not None
                stated[turn.attribute] = turn.value
                turns.append(turn)
            else:
                turns.append(self.chat())
        return Dialogue(tuple(turns))

    def recall_dialogue(self, k: int, attribute: str | None = None) -> Dialogue:
        """The evaluation shape: a fact, ``k`` filler turns, then the question about that fact.

        Fillers are small talk and facts about *other* attributes, so the only answer to the last
        question is the first turn's value.
        """
        if k < 0:
            raise ValueError("k (intervening turns) must be >= 0")
        rng = self.rng
        target = attribute or rng.choice(ATTRIBUTES)
        fact = self.fact(target)
        others = [a for a in ATTRIBUTES if a != target]
        rng.shuffle(others)
        fillers: list[Turn] = []
        for _ in range(k):
            if others and rng.random() < 0.5:
                fillers.append(self.fact(others.pop()))
            else:
                fillers.append(self.chat())
        assert fact.value is not None
        return Dialogue((fact, *fillers, question_turn(target, fact.value)))

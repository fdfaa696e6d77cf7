"""Phase-A data: value split, dialogue generator, natural text, tokenizer, recall scorer."""

from __future__ import annotations

import pytest

from reactor_rt.training.bpe import SPECIAL_TOKENS, train_bpe_tokenizer
from reactor_rt.training.corpus import natural_sentences, tokenizer_corpus
from reactor_rt.training.dialogues import DialogueGenerator
from reactor_rt.training.recall import mentioned_values, recall_correct
from reactor_rt.training.values import _CITY_ENDS, ATTRIBUTES, VALUE_PIECES_PATTERN, all_values, values


def held_out_mentions(text: str) -> set[str]:
    found = set()
    for a in ATTRIBUTES:
        held = {v.lower() for v in values(a, "heldout")}
        found |= mentioned_values(text, a) & held
    return found


def test_split_is_disjoint_complete_and_large():
    required = {"name", "city", "color", "pet", "number", "food", "job", "day"}
    assert required <= set(ATTRIBUTES)
    for a in ATTRIBUTES:
        train, held = set(values(a, "train")), set(values(a, "heldout"))
        assert not train & held
        assert train | held == set(all_values(a))
        assert len(held) >= 12, a
        assert 0.1 < len(held) / len(all_values(a)) < 0.3, a
    with pytest.raises(ValueError):
        values("name", "test")  # type: ignore[arg-type]


def test_no_value_is_whole_words_inside_another_value():
    # the scorer relies on it: "a lazy cat" must not contain another pet value
    for a in ATTRIBUTES:
        for v in all_values(a)[:200]:
            assert mentioned_values(v, a) == {v.lower()}, (a, v)


def test_dialogue_format_and_questions_follow_their_facts():
    gen = DialogueGenerator("train", seed=3)
    for n in (1, 2, 5, 12):
        for _ in range(50):
            d = gen.dialogue(n)
            assert len(d) == n
            assert d.turns[0].kind == "fact"
            stated = {}
            for t in d.turns:
                if t.kind == "fact":
                    assert t.query == f"My {t.attribute} is {t.value}."
                    assert t.attribute not in stated
                    stated[t.attribute] = t.value
                elif t.kind == "question":
                    assert t.query == f"What is my {t.attribute}?"
                    assert t.answer == f"Your {t.attribute} is {stated[t.attribute]}."
            if n >= 2:
                assert any(t.kind == "question" for t in d.turns)


def test_dialogues_are_deterministic_per_seed():
    a = [DialogueGenerator("train", seed=7).dialogue(6) for _ in range(3)]
    b = [DialogueGenerator("train", seed=7).dialogue(6) for _ in range(3)]
    c = DialogueGenerator("train", seed=8).dialogue(6)
    assert a == b
    assert c != a[0]


def test_recall_dialogue_shape():
    gen = DialogueGenerator("heldout", seed=1)
    for k in (0, 1, 4, 8):
        d = gen.recall_dialogue(k)
        assert len(d) == k + 2
        first, last = d.turns[0], d.turns[-1]
        assert first.kind == "fact" and last.kind == "question"
        assert (last.attribute, last.value) == (first.attribute, first.value)
        for filler in d.turns[1:-1]:
            assert filler.kind in ("chat", "fact") and filler.attribute != first.attribute
        assert held_out_mentions(first.query) == {first.value.lower()}


def test_held_out_values_never_occur_in_training_data():
    gen = DialogueGenerator("train", seed=0)
    texts = [t.query + " " + t.answer for _ in range(2000) for t in gen.dialogue(10).turns]
    texts += natural_sentences(3000, seed=0)
    texts += list(tokenizer_corpus(n_sentences=500, n_dialogues=200, seed=5))
    leaks = set().union(*(held_out_mentions(x) for x in texts))
    assert not leaks, sorted(leaks)[:10]
    # and the check itself can see a leak
    assert held_out_mentions(f"My name is {values('name', 'heldout')[0]}.")


def test_recall_scorer():
    assert recall_correct("Your name is Kalo.", "name", "Kalo")
    assert recall_correct("your pet is a lazy cat", "pet", "a lazy cat")
    assert not recall_correct("Your name is Kalo or Mira.", "name", "Kalo")
    assert not recall_correct("Your name is Kal.", "name", "Kalo")
    assert not recall_correct("Your pet is a lazy dog.", "pet", "a lazy cat")
    assert not recall_correct("Your number is 4821.", "number", "482")
    assert recall_correct("Your number is 482.", "number", "482")
    assert recall_correct("Your day is May 12.", "day", "May 12")
    assert not recall_correct("Your day is May 12.", "day", "May 1")
    assert not recall_correct("", "city", "Bramton")


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(tokenizer_corpus(n_sentences=1500, n_dialogues=500), vocab_size=512)


def test_tokenizer_specials_and_round_trip(tokenizer):
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(s) == i
    assert tokenizer.get_vocab_size() <= 512
    for text in ("My name is Kalo.", "What is my number?", "Your day is May 12.", "Hi! (ok) 100% #1 ~x"):
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids) == text
    enc = tokenizer.encode("Your number is 4821.", add_special_tokens=False)
    assert [t for t in enc.tokens if t.isdigit()] == ["4", "8", "2", "1"]


def test_held_out_values_encode_without_unknown_pieces(tokenizer):
    unk = tokenizer.token_to_id("[UNK]")
    for a in ATTRIBUTES:
        for v in values(a, "heldout")[:50]:
            assert unk not in tokenizer.encode(f"Your {a} is {v}.", add_special_tokens=False).ids


def test_value_pieces_pattern_cuts_names_and_cities_at_their_boundary():
    tok = train_bpe_tokenizer(
        tokenizer_corpus(n_sentences=1500, n_dialogues=500), vocab_size=512, isolate=VALUE_PIECES_PATTERN
    )

    def pieces(value: str) -> list[str]:
        return tok.encode(f"Your name is {value}.", add_special_tokens=False).tokens[3:-1]

    # no token spans the boundary of a name's two syllables or of a city's start and place ending,
    # train and held-out alike
    for a in ("name", "city"):
        for split in ("train", "heldout"):
            for v in values(a, split):
                first = v[:2] if a == "name" else v[: -len(next(e for e in _CITY_ENDS if v.endswith(e)))]
                ps = pieces(v)
                assert "▁" + first in {"".join(ps[:j]) for j in range(1, len(ps))}, (v, ps)
    # lossless for every other text
    for text in ("Nice to meet Tomi in Wesmere!", "What is my button? 1234", "Bosu, Ab, a."):
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text

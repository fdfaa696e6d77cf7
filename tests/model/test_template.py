"""The interaction template helpers."""

import pytest

from reactor_rt.template import answer_start, build_interaction, build_prompt, split_interaction
from reactor_rt.tokenizer import ByteTokenizer

tok = ByteTokenizer()


def test_prompt_and_interaction_layout():
    q, a = tok.encode("Hi?"), tok.encode("Hello.")
    assert build_prompt(tok, "Hi?") == [tok.bos_id, tok.query_id, *q, tok.answer_id]
    assert build_interaction(tok, "Hi?", "Hello.") == [tok.bos_id, tok.query_id, *q, tok.answer_id, *a, tok.eos_id]


def test_reasoning_form():
    ids = build_interaction(tok, "2+2?", "4", reasoning="add")
    r = ids.index(tok.reasoning_id)
    assert ids[:2] == [tok.bos_id, tok.query_id] and ids[2:r] == tok.encode("2+2?")
    assert tok.decode(ids[r + 1 : ids.index(tok.answer_id)]) == "add"
    assert build_prompt(tok, "2+2?", reasoning="add") == ids[: answer_start(tok, ids)]


def test_answer_start_and_split():
    ids = build_interaction(tok, "Q", "the answer")
    start = answer_start(tok, ids)
    assert ids[start - 1] == tok.answer_id and tok.decode(ids[start:]) == "the answer"
    prompt, answer = split_interaction(tok, [*ids, tok.pad_id, tok.pad_id])
    assert prompt == build_prompt(tok, "Q") and tok.decode(answer) == "the answer"
    with pytest.raises(ValueError, match=r"\[A\]"):
        answer_start(tok, tok.encode("no answer marker"))

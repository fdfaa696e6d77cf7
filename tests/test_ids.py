"""Id validation: 1-256 printable characters, anything else is an InvalidIdError (and only that)."""

from __future__ import annotations

import enum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reactor_rt import InvalidIdError, ReactorError
from reactor_rt.ids import MAX_ID_LENGTH, validate_id


@pytest.mark.parametrize(
    "value", ["alice", "a", "x" * MAX_ID_LENGTH, "Chat 1: team/π", "../../etc/passwd", " "]
)
def test_valid_ids_are_returned_unchanged(value):
    assert validate_id(value) == value
    assert type(validate_id(value)) is str


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "empty"),
        ("x" * (MAX_ID_LENGTH + 1), "too long"),
        ("line\nbreak", "non-printable character U+000A at index 4"),
        ("nul\x00", "U+0000"),
        ("tab\t", "U+0009"),
        ("\u200b", "U+200B"),  # zero-width space: category Cf
        ("\ud800", "U+D800"),  # lone surrogate
        (None, "must be a str, not NoneType"),
        (b"alice", "must be a str, not bytes"),
        (42, "must be a str, not int"),
    ],
)
def test_invalid_ids_raise_with_kind_and_problem(value, problem):
    with pytest.raises(InvalidIdError) as info:
        validate_id(value, kind="memory")
    message = str(info.value)
    assert "memory id" in message and problem in message
    assert isinstance(info.value, ReactorError) and isinstance(info.value, ValueError)


def test_huge_id_is_not_echoed_in_the_message():
    with pytest.raises(InvalidIdError) as info:
        validate_id("y" * 10_000_000)
    assert len(str(info.value)) < 300
    assert "10000000 characters" in str(info.value)


def test_str_subclass_is_normalised_to_plain_str():
    class Name(enum.StrEnum):
        ALICE = "alice"

    result = validate_id(Name.ALICE)
    assert result == "alice" and type(result) is str


@given(st.one_of(st.text(), st.text(min_size=250, max_size=300), st.binary(), st.integers(), st.none()))
def test_any_value_validates_or_raises_invalid_id_error(value):
    try:
        result = validate_id(value, kind="stream")
    except InvalidIdError as exc:
        assert "stream id" in str(exc)
        assert not (isinstance(value, str) and 1 <= len(value) <= MAX_ID_LENGTH and value.isprintable())
    else:
        assert result == value
        assert 1 <= len(result) <= MAX_ID_LENGTH and result.isprintable()

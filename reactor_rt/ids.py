"""Validation of the opaque ids that name streams, memories and interactions.

An id is a ``str`` of 1-256 characters for which ``str.isprintable()`` holds (DESIGN.md §3). Ids are
only ever compared and stored as data: never used as file paths, never interpolated into SQL.
"""

from __future__ import annotations

from reactor_rt.errors import InvalidIdError

__all__ = ["MAX_ID_LENGTH", "validate_id"]

MAX_ID_LENGTH = 256

# How much of a bad id an error message may quote: a 10 MB id must not end up in a log line.
_PREVIEW_CHARS = 40


def _preview(value: str) -> str:
    """A short, escaped rendering of ``value`` for error messages."""
    if len(value) <= _PREVIEW_CHARS:
        return repr(value)
    return f"{value[:_PREVIEW_CHARS]!r}... ({len(value)} characters)"


def validate_id(value: object, kind: str = "stream") -> str:
    """Return ``value`` as a plain ``str`` when it is a valid id, else raise `InvalidIdError`.

    ``kind`` names what the id is for ("stream", "memory", "interaction", ...) in the error message.
    """
    if not isinstance(value, str):
        raise InvalidIdError(f"{kind} id must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidIdError(f"{kind} id must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdError(
            f"{kind} id {_preview(value)} is too long: {len(value)} characters, at most {MAX_ID_LENGTH}"
        )
    if not value.isprintable():
        index, char = next((i, c) for i, c in enumerate(value) if not c.isprintable())
        raise InvalidIdError(
            f"{kind} id {_preview(value)} contains a non-printable character "
            f"U+{ord(char):04X} at index {index}"
        )
    # str subclasses (enums, custom types) are normalised so that stores and events see a plain str
    return str.__str__(value)

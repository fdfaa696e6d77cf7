"""Event filters shared by the buses and the log: types by exact name or by prefix ("rx.memory.")."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["TypeFilter"]


class TypeFilter:
    """Matches event types against exact names and prefixes (names ending in "."); None matches all."""

    __slots__ = ("exact", "prefixes")

    def __init__(self, types: Iterable[str] | str | None = None) -> None:
        if isinstance(types, str):  # a lone name, not an iterable of characters
            types = (types,)
        self.exact: frozenset[str] | None = None
        self.prefixes: tuple[str, ...] = ()
        if types is not None:
            names = list(types)
            for name in names:
                if not isinstance(name, str) or not name:
                    raise ValueError(f"event type filters are non-empty strings, got {name!r}")
            self.exact = frozenset(n for n in names if not n.endswith("."))
            self.prefixes = tuple(n for n in names if n.endswith("."))

    @property
    def matches_all(self) -> bool:
        """True when the filter accepts every type."""
        return self.exact is None

    def __call__(self, type_: str) -> bool:
        if self.exact is None or type_ in self.exact:
            return True
        return any(type_.startswith(p) for p in self.prefixes)

    def sql(self, column: str = "type") -> tuple[str, list[str]]:
        """An SQL condition (and its parameters) equivalent to this filter; "1" when it matches all."""
        if self.exact is None:
            return "1", []
        parts: list[str] = []
        params: list[str] = []
        if self.exact:
            parts.append(f"{column} IN ({','.join('?' * len(self.exact))})")
            params.extend(sorted(self.exact))
        for prefix in self.prefixes:
            # substr, not LIKE: LIKE is case-insensitive and treats % and _ as wildcards
            parts.append(f"substr({column}, 1, {len(prefix)}) = ?")
            params.append(prefix)
        return ("(" + " OR ".join(parts) + ")") if parts else "0", params

    def __repr__(self) -> str:
        if self.exact is None:
            return "TypeFilter(None)"
        return f"TypeFilter({sorted(self.exact) + list(self.prefixes)!r})"

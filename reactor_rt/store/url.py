"""`open_store`: an STM store from a URL (``sqlite:///path.db``, ``memory://``)."""

from __future__ import annotations

from reactor_rt.errors import ConfigError
from reactor_rt.store.base import STMStore
from reactor_rt.store.in_memory import MemorySTMStore
from reactor_rt.store.sqlite import SQLiteSTMStore

__all__ = ["ACCEPTED_URLS", "open_store", "sqlite_path"]

ACCEPTED_URLS = (
    "sqlite:///relative/path.db",
    "sqlite:////absolute/path.db",
    "memory://",
)

_SQLITE = "sqlite:///"
_MEMORY = "memory://"


def _bad_url(url: object, why: str) -> ConfigError:
    shown = repr(url) if isinstance(url, str) and len(url) <= 200 else type(url).__name__
    return ConfigError(f"bad STM store URL {shown}: {why}; accepted forms: {', '.join(ACCEPTED_URLS)}")


def sqlite_path(url: str) -> str | None:
    """The file path of a ``sqlite:///`` URL as written (None for any other URL)."""
    return url.removeprefix(_SQLITE) if url.startswith(_SQLITE) else None


def open_store(url: str) -> STMStore:
    """Open the store a URL names.

    ``sqlite:///`` is followed by the file path as is (SQLAlchemy's convention): ``sqlite:///stm.db``
    is relative to the working directory, ``sqlite:////var/lib/stm.db`` is absolute. Missing parent
    directories are created. ``memory://`` is a fresh, process-local store. Anything else (including
    query parameters and surrounding whitespace) raises `ConfigError` listing the accepted forms.
    """
    if not isinstance(url, str):
        raise _bad_url(url, "must be a str")
    if url != url.strip():  # a pasted or templated value: the blank would become part of a file name
        raise _bad_url(url, "leading or trailing whitespace")
    if url == _MEMORY:
        return MemorySTMStore()
    path = sqlite_path(url)
    if path is not None:
        if not path:
            raise _bad_url(url, "no database path after 'sqlite:///'")
        if "\x00" in path:
            raise _bad_url(url, "the path contains a NUL character")
        if path == ":memory:":  # not durable, yet the runtime would keep an event log beside it on disk
            raise _bad_url(url, "an in-memory SQLite database is not durable; use 'memory://' for a throwaway store")
        if "?" in path:  # e.g. ?mode=ro: it would not be applied, only end up in the file name
            raise _bad_url(url, "query parameters ('?...') are not supported")
        return SQLiteSTMStore(path)
    if url.startswith("sqlite:"):
        raise _bad_url(url, "sqlite URLs take three slashes before the path")
    if url.startswith("memory:"):
        raise _bad_url(url, "the in-memory store is exactly 'memory://'")
    raise _bad_url(url, "unknown scheme")

"""open_store(url): the accepted URL forms and clear errors for the rest."""

from __future__ import annotations

import pytest
import torch

from reactor_rt import ConfigError
from reactor_rt.store import MemorySTMStore, SQLiteSTMStore, open_store


def test_memory_url_gives_a_fresh_store_each_time():
    a, b = open_store("memory://"), open_store("memory://")
    with a, b:
        assert isinstance(a, MemorySTMStore) and a is not b
        a.save("m", torch.zeros(2), expected_version=0)
        assert b.load("m") is None


def test_sqlite_absolute_path(tmp_path):
    url = f"sqlite:///{tmp_path}/stm.db"  # tmp_path is absolute: four slashes in all
    assert url.startswith("sqlite:////")
    with open_store(url) as store:
        assert isinstance(store, SQLiteSTMStore)
        assert store.path == f"{tmp_path}/stm.db"
        store.save("m", torch.ones(3), expected_version=0)
    assert (tmp_path / "stm.db").exists()


def test_sqlite_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///data/stm.db") as store:
        assert store.path == "data/stm.db"
        store.save("m", torch.ones(3), expected_version=0)
    assert (tmp_path / "data" / "stm.db").exists()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "unknown scheme"),
        ("/tmp/stm.db", "unknown scheme"),
        ("postgres://db/stm", "unknown scheme"),
        ("sqlite:///", "no database path"),
        ("sqlite://stm.db", "three slashes"),
        ("sqlite:stm.db", "three slashes"),
        ("memory:", "exactly 'memory://'"),
        ("memory://x", "exactly 'memory://'"),
        ("sqlite:///a\x00b", "NUL"),
        ("sqlite:///stm.db?mode=ro", "query parameters"),
        ("sqlite:///:memory:", "use 'memory://'"),
        ("sqlite:///stm.db ", "whitespace"),
        (" memory://", "whitespace"),
        ("memory://\n", "whitespace"),
        (None, "must be a str"),
    ],
)
def test_bad_urls_list_the_accepted_forms(url, why, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative sqlite path that slipped through lands here, not in the repo
    with pytest.raises(ConfigError) as info:
        open_store(url)
    message = str(info.value)
    assert why in message
    for form in ("sqlite:///relative/path.db", "sqlite:////absolute/path.db", "memory://"):
        assert form in message


def test_huge_url_is_not_echoed():
    with pytest.raises(ConfigError) as info:
        open_store("x" * 100_000)
    assert len(str(info.value)) < 400


def test_a_rejected_sqlite_url_creates_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url in ("sqlite:///stm.db?mode=ro", "sqlite:///stm.db\t"):
        with pytest.raises(ConfigError):
            open_store(url)
    assert list(tmp_path.iterdir()) == []

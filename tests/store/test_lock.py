"""One runtime per durable store: the store lock."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reactor_rt.errors import StoreError
from reactor_rt.store.lock import StoreLock


def test_a_second_holder_is_refused_until_the_first_releases(tmp_path):
    url = f"sqlite:///{tmp_path / 'stm.db'}"
    first = StoreLock.acquire(url)
    assert first.path == tmp_path / "stm.db.lock"
    with pytest.raises(StoreError, match="in use by another reactor-rt runtime"):
        StoreLock.acquire(url)
    first.release()
    first.release()  # idempotent
    StoreLock.acquire(url).release()


def test_the_lock_is_held_across_processes_and_dropped_when_its_process_ends(tmp_path):
    url = f"sqlite:///{tmp_path / 'stm.db'}"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from reactor_rt.store.lock import StoreLock; "
         f"lock = StoreLock.acquire({url!r}); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError):
            StoreLock.acquire(url)
    finally:
        holder.kill()  # ends without releasing: the operating system drops the lock
        holder.wait(30)
    StoreLock.acquire(url).release()


def test_a_memory_store_takes_no_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lock = StoreLock.acquire("memory://")
    assert lock.path is None and list(tmp_path.iterdir()) == []
    lock.release()

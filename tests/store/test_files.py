"""Export/import of one STM to a standalone .safetensors file."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from reactor_rt import StoreError
from reactor_rt.store import load_stm_file, save_stm_file


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_is_exact(tmp_path, dtype):
    stm = torch.randn(1, 4, 16, 32, generator=torch.Generator().manual_seed(0)).to(dtype)
    meta = {"memory": "alice", "version": "7", "model": "tiny"}
    path = tmp_path / "alice.safetensors"
    save_stm_file(path, stm, meta)
    got, got_meta = load_stm_file(path)
    assert got.dtype == dtype and torch.equal(got, stm)
    assert got_meta == meta


def test_metadata_is_optional_and_overwrite_is_atomic(tmp_path):
    path = tmp_path / "m.safetensors"
    save_stm_file(path, torch.zeros(2, 2))
    save_stm_file(str(path), torch.ones(3))  # str paths work too; replaces the old file
    got, meta = load_stm_file(str(path))
    assert torch.equal(got, torch.ones(3)) and meta == {}
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind


def test_non_contiguous_tensor_is_saved(tmp_path):
    stm = torch.arange(12.0).reshape(3, 4).t()
    save_stm_file(tmp_path / "t.safetensors", stm)
    assert torch.equal(load_stm_file(tmp_path / "t.safetensors")[0], stm)


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="dict"):
        save_stm_file(tmp_path / "x.safetensors", torch.zeros(1), {"version": 3})
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        save_stm_file(tmp_path / "x.safetensors", [0.0])
    with pytest.raises(StoreError, match="cannot write"):
        save_stm_file(tmp_path / "no" / "such" / "dir" / "x.safetensors", torch.zeros(1))


def test_missing_file_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match=r"missing\.safetensors"):
        load_stm_file(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"\xff" * 8 + b"{}", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"],
)
def test_malformed_file_is_a_store_error(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=r"bad\.safetensors"):
        load_stm_file(path)


def test_truncated_file_is_a_store_error(tmp_path):
    path = tmp_path / "t.safetensors"
    save_stm_file(path, torch.randn(64, 64))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(StoreError, match="not a valid safetensors"):
        load_stm_file(path)


def test_a_safetensors_file_without_exactly_one_stm_tensor_is_refused(tmp_path):
    other = tmp_path / "weights.safetensors"
    save_file({"wte": torch.zeros(2)}, other)
    with pytest.raises(StoreError, match="expected exactly"):
        load_stm_file(other)
    both = tmp_path / "both.safetensors"
    save_file({"stm": torch.zeros(2), "extra": torch.zeros(2)}, both)
    with pytest.raises(StoreError, match="expected exactly"):
        load_stm_file(both)


def test_a_pickle_file_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "stm.pt"
    torch.save({"stm": torch.zeros(2)}, path)
    with pytest.raises(StoreError):
        load_stm_file(path)


def test_the_file_and_the_rename_are_synced_before_save_returns(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    save_stm_file(tmp_path / "m.safetensors", torch.zeros(3))
    # the data first, then the directory entry that the rename changed
    assert synced == ["file", "dir"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_or_a_directory_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "stm.safetensors"
    os.mkfifo(fifo)
    # reading a FIFO that no one writes to used to block forever
    with pytest.raises(StoreError, match="not a regular file"):
        load_stm_file(fifo)
    with pytest.raises(StoreError, match="not a regular file"):
        load_stm_file(tmp_path)

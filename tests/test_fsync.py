"""Durable renames: the directory fsync shared by STM exports, learned weights and training checkpoints."""

from __future__ import annotations

import errno
import os

import pytest

from reactor_rt.fsync import fsync_directory


def test_the_directory_is_synced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.samefile(f"/proc/self/fd/{fd}", tmp_path)),
                                                 real(fd)))
    fsync_directory(tmp_path)
    assert synced == [True]


@pytest.mark.parametrize(("code", "raised"), [(errno.EINVAL, False), (errno.ENOTSUP, False), (errno.EIO, True)])
def test_a_file_system_that_cannot_sync_a_directory_is_let_be_other_errors_are_raised(tmp_path, monkeypatch, code,
                                                                                      raised):
    def refuse(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", refuse)
    if raised:
        with pytest.raises(OSError):
            fsync_directory(tmp_path)
    else:
        fsync_directory(tmp_path)

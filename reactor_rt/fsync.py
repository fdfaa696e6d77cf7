"""Durable renames: a file written to a temporary name, fsynced and renamed into place is on disk only
once its directory's entry is too."""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["fsync_directory"]

# file systems that cannot fsync a directory (some network and FUSE mounts) say so with these
_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable: until its entry is on disk, a power loss can bring back
    the previous file (or none), though the new one was already reported saved. A platform or file
    system that cannot fsync a directory is let be; any other error is raised."""
    try:
        fd = os.open(Path(directory), os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms (Windows): no such fsync either
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    finally:
        os.close(fd)

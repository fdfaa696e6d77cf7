"""The learner's files: safetensors only (no pickle), each written to a temporary name and then renamed,
so a crash mid-save leaves the previous file whole.

    <dir>/learner.safetensors        current trainable weights ("param/<name>"), optimizer moments
                                     ("exp_avg/<name>", "exp_avg_sq/<name>", "step/<name>"), and the
                                     version, parameter set and baseline in the metadata
    <dir>/versions/v<N>.safetensors  the weights of each kept version (for rollback after a restart)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from torch import Tensor

from reactor_rt.errors import CheckpointError
from reactor_rt.fsync import fsync_directory

__all__ = [
    "FORMAT",
    "STATE_FILE",
    "VERSIONS_DIR",
    "DamagedLearnerFile",
    "read_tensors",
    "saved_version",
    "version_files",
    "write_tensors",
]

FORMAT = "reactor-rt-learner/1"
STATE_FILE = "learner.safetensors"
VERSIONS_DIR = "versions"
_VERSION_FILE = re.compile(r"^v(\d+)\.safetensors$")


class DamagedLearnerFile(CheckpointError):
    """A learner file that cannot be read, or holds non-finite weights: damaged on disk, as opposed to
    one that belongs to another model or parameter set."""


def write_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write tensors + string metadata to path atomically (temporary file, fsync, rename, fsync of the
    directory)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(cpu, str(tmp), metadata={"format": FORMAT, **metadata})
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)


def read_tensors(path: Path, metadata_only: bool = False) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a file written by write_tensors; CheckpointError when missing, corrupt or foreign."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise CheckpointError(f"no learner state at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {} if metadata_only else {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DamagedLearnerFile(f"corrupt learner file {path}: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a learner file (format {metadata.get('format')!r})")
    return tensors, metadata


def version_files(directory: Path) -> dict[int, Path]:
    """The kept versions' files under directory/versions, by version."""
    folder = directory / VERSIONS_DIR
    if not folder.is_dir():
        return {}
    found = {}
    for entry in folder.iterdir():
        match = _VERSION_FILE.match(entry.name)
        if match:
            found[int(match.group(1))] = entry
    return found


def saved_version(directory: str | Path) -> int | None:
    """The weights version saved in directory, or None when nothing was saved there."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return None
    _, metadata = read_tensors(path, metadata_only=True)
    return int(metadata["weights_version"])

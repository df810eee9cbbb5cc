"""Atomic file writes: a reader sees a file's old content or all of the new one, never a part.

Each write goes to a temporary sibling (same folder, so the rename stays on one file system),
is flushed to disk, then renamed over the real name.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from internvl_trainer.storage.errors import ObjectNotFound, StorageError


def temporary_sibling(path: Path) -> Path:
    """A unique temporary name in the same folder (so a rename onto ``path`` is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or all of the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_copy(source: Path, destination: Path) -> None:
    """Copy a file through a temporary sibling and a rename."""
    try:
        source_size = source.stat().st_size
    except FileNotFoundError:
        raise ObjectNotFound(f"{source}: no such file") from None
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(destination)
    try:
        shutil.copyfile(source, temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        if temporary.stat().st_size != source_size:
            raise StorageError(f"{source}: changed while it was copied")
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)

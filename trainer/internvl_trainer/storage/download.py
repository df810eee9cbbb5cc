"""Verified downloads of a folder (a model, a checkpoint).

``download_tree`` copies everything below an S3 prefix (or a local folder) into a local folder:

- When the source has a ``manifest.json``, exactly the files it lists are fetched and each is
  checked against the manifest's size and sha256; a listed file that is missing, or an invalid
  manifest, is an error. Without a manifest, every listed object is fetched and checked against
  the listing's size.
- Each file arrives under a temporary name, is verified, then renamed into place, so a crash
  never leaves a half file under a real name. Files already in place with the right size (and
  sha256) are kept, so an interrupted download resumes.
- Paths from the manifest or listing go through the same escape checks as dataset keys.
- ``manifest.json`` is written into the folder last (the source's, or one made from what arrived).

Transfers run in parallel through s3transfer (ranged multipart GETs for large files).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from internvl_trainer.storage.atomic import atomic_write, temporary_sibling
from internvl_trainer.storage.errors import IntegrityError, ObjectNotFound
from internvl_trainer.storage.manifest import MANIFEST_NAME, FileEntry, Manifest, read_manifest, sha256_file
from internvl_trainer.storage.uri import check_key, parse

if TYPE_CHECKING:
    from internvl_trainer.storage.store import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Wanted:
    path: str
    size: int
    sha256: str | None


def download_tree(storage: Storage, source: str | os.PathLike[str], destination: Path) -> Manifest:
    """Download the folder ``source`` into ``destination``; returns the verified manifest."""
    root = parse(source)
    manifest_location = root.child(MANIFEST_NAME)
    published = read_manifest(storage, manifest_location, strict=True)
    if published is not None:
        wanted = [_Wanted(entry.path, entry.size, entry.sha256) for entry in published.files]
    else:
        wanted = [
            _Wanted(check_key(info.key), info.size, None) for info in storage.list(root) if info.key != MANIFEST_NAME
        ]
        if not wanted:
            raise ObjectNotFound(f"{root}: nothing to download (no objects below it)")
    destination.mkdir(parents=True, exist_ok=True)

    entries: dict[str, FileEntry] = {}
    pending = []
    try:
        with storage.transfers(root) as transfers:
            for item in wanted:
                target = destination / item.path
                if _in_place(target, item):
                    entries[item.path] = FileEntry(
                        path=item.path, size=item.size, sha256=item.sha256 or sha256_file(target)
                    )
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                temporary = temporary_sibling(target)
                pending.append((item, temporary, transfers.get(root.child(item.path), temporary)))
            for item, temporary, transfer in pending:
                try:
                    transfer.result()
                except ObjectNotFound:
                    raise IntegrityError(
                        f"{root.child(item.path)}: listed in {manifest_location} but missing"
                    ) from None
                entries[item.path] = _verify(root.child(item.path), temporary, item)
                os.replace(temporary, destination / item.path)
    finally:
        # After the transfers have stopped, so none can re-create a temporary file.
        for _, temporary, _ in pending:
            temporary.unlink(missing_ok=True)

    manifest = published or Manifest(files=list(entries.values()))
    atomic_write(destination / MANIFEST_NAME, manifest.to_json())
    log.info(
        "downloaded %s to %s: %d files fetched, %d already in place, %d bytes verified",
        root,
        destination,
        len(pending),
        len(wanted) - len(pending),
        manifest.total_size,
    )
    return manifest


def _in_place(target: Path, item: _Wanted) -> bool:
    try:
        if target.stat().st_size != item.size:
            return False
    except FileNotFoundError:
        return False
    return item.sha256 is None or sha256_file(target) == item.sha256


def _verify(uri: object, temporary: Path, item: _Wanted) -> FileEntry:
    size = temporary.stat().st_size
    if size != item.size:
        raise IntegrityError(f"{uri}: {size} bytes arrived, expected {item.size}")
    digest = sha256_file(temporary)
    if item.sha256 is not None and digest != item.sha256:
        raise IntegrityError(f"{uri}: sha256 {digest} does not match the manifest's {item.sha256}")
    return FileEntry(path=item.path, size=size, sha256=digest)

"""Uploads that publish atomically and resume.

``upload_tree`` publishes a local folder below an S3 prefix (or a local folder):

1. Each file's sha256 is computed (in parallel, overlapping the uploads).
2. A file already at the destination with the same size and sha256 (recorded as the object's
   ``x-amz-meta-sha256`` by an earlier upload) is not sent again, so re-running an interrupted
   upload sends only what is missing.
3. Before the first file is sent, an existing ``manifest.json`` that does not describe this
   upload is deleted, so a half-replaced folder never looks complete.
4. The other files go in parallel through s3transfer (multipart above the TransferConfig
   threshold, botocore retrying every request).
5. The sizes are checked with a fresh listing, then ``manifest.json`` (files, sizes, sha256,
   time, producing config) is written last, in one request.

A reader that sees the manifest sees a complete upload. Objects below the prefix that the
manifest does not list (left by an older upload) are left alone; the manifest is the content.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

from internvl_trainer.storage.errors import IntegrityError, ObjectNotFound
from internvl_trainer.storage.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    entry_for,
    read_manifest,
    sha256_file,
)
from internvl_trainer.storage.uri import Location, check_key, parse

if TYPE_CHECKING:
    from internvl_trainer.storage.store import Pending, Storage

log = logging.getLogger(__name__)


def local_files(source: Path) -> list[tuple[str, Path]]:
    """The regular files below ``source`` as (relative path with ``/``, path), sorted; a top-level
    manifest.json is left out (the upload writes its own)."""
    if not source.is_dir():
        raise ObjectNotFound(f"{source}: no such folder")
    found = []
    for folder, folders, files in os.walk(source):
        folders.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if not path.is_file():
                continue
            relative = check_key(path.relative_to(source).as_posix())
            if relative == MANIFEST_NAME:
                log.warning("%s: not uploaded; the upload writes its own %s", path, MANIFEST_NAME)
                continue
            found.append((relative, path))
    return sorted(found)


def _already_there(storage: Storage, location: Location, entry: FileEntry, remote_size: int | None) -> bool:
    if remote_size != entry.size:
        return False
    if location.is_s3:
        return storage.head(location).sha256 == entry.sha256
    return sha256_file(location.path) == entry.sha256


def upload_file(storage: Storage, path: Path, destination: str | os.PathLike[str] | Location) -> FileEntry:
    """Upload one file to exactly ``destination`` (skipped when it is already there, same sha256)."""
    location = parse(destination)
    entry = entry_for(path, check_key(location.name))
    try:
        remote_size: int | None = storage.head(location).size
    except ObjectNotFound:
        remote_size = None
    if _already_there(storage, location, entry, remote_size):
        log.info("%s is already at %s", path, location)
        return entry
    with storage.transfers(location) as transfers:
        transfers.put(path, location, entry).result()
    if storage.head(location).size != entry.size:
        raise IntegrityError(f"{location}: uploaded {entry.size} bytes, the store holds a different size")
    return entry


def upload_tree(
    storage: Storage,
    source: Path,
    destination: str | os.PathLike[str] | Location,
    *,
    producer: dict[str, Any] | None = None,
    hashed: Manifest | None = None,
) -> Manifest:
    """Upload the folder ``source`` below ``destination`` and write ``manifest.json`` last.
    ``hashed`` lists the folder's files already hashed (as ``export`` writes them): their hashes
    are taken from it, not computed again."""
    root = parse(destination)
    files = local_files(source)
    describe = entry_for if hashed is None else _entries_of(hashed, source, files)
    manifest_location = root.child(MANIFEST_NAME)
    previous = read_manifest(storage, manifest_location)
    previous_removed = previous is None
    remote = {info.key: info.size for info in storage.list(root)}

    entries: list[FileEntry] = []
    pending: list[tuple[FileEntry, Pending]] = []
    sent_bytes = 0
    hash_threads = max(1, min(storage.threads, os.cpu_count() or 1))
    with ThreadPoolExecutor(hash_threads, thread_name_prefix="storage-hash") as hashers:
        with storage.transfers(root) as transfers:
            hashing = {hashers.submit(describe, path, relative): path for relative, path in files}
            for future in as_completed(hashing):
                entry = future.result()
                entries.append(entry)
                location = root.child(entry.path)
                if _already_there(storage, location, entry, remote.get(entry.path)):
                    continue
                if not previous_removed:
                    log.info("deleting %s: it describes an earlier upload", manifest_location)
                    storage.delete(manifest_location)
                    previous_removed = True
                pending.append((entry, transfers.put(hashing[future], location, entry)))
                sent_bytes += entry.size
            for entry, transfer in pending:
                transfer.result()
                log.debug("uploaded %s (%d bytes)", root.child(entry.path), entry.size)

    manifest = Manifest(files=entries, producer=producer)
    if previous is not None and previous_removed is False and previous.same_files(manifest):
        log.info("%s: already complete (%d files)", root, len(entries))
        return previous
    _check_sizes(storage, root, manifest)
    storage.write_bytes(manifest_location, manifest.to_json())
    log.info(
        "uploaded %s: %d of %d files sent (%d of %d bytes), %s written",
        root,
        len(pending),
        len(entries),
        sent_bytes,
        manifest.total_size,
        MANIFEST_NAME,
    )
    return manifest


def _entries_of(manifest: Manifest, source: Path, files: list[tuple[str, Path]]) -> Callable[[Path, str], FileEntry]:
    """``entry_for`` answered by ``manifest``, once it lists exactly ``files`` with their sizes."""
    entries = manifest.by_path()
    sizes = {relative: path.stat().st_size for relative, path in files}
    differing = sorted(
        relative
        for relative in sizes.keys() | entries.keys()
        if relative not in sizes or relative not in entries or entries[relative].size != sizes[relative]
    )
    if differing:
        raise IntegrityError(f"{source}: {', '.join(differing)}: not as the manifest given for the upload lists")
    return lambda path, relative: entries[relative]


def _check_sizes(storage: Storage, root: Location, manifest: Manifest) -> None:
    """Every listed file is at the destination with its size (one paginated listing)."""
    found = {info.key: info.size for info in storage.list(root)}
    for entry in manifest.files:
        size = found.get(entry.path)
        if size is None:
            raise IntegrityError(f"{root.child(entry.path)}: missing after the upload")
        if size != entry.size:
            raise IntegrityError(f"{root.child(entry.path)}: {size} bytes after the upload, expected {entry.size}")

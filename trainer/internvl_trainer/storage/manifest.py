"""``manifest.json``: the list of files of a published folder, written last.

A folder upload (a model, a checkpoint) ends by writing ``manifest.json`` next to its files, so a
reader that sees the manifest sees a complete upload. It lists every file with its size and
sha256, the total, when it was written, and the configuration that produced it::

    {"version": 1, "created": "2026-11-23T19:40:00Z", "totalSize": 123,
     "files": [{"path": "model/config.json", "size": 123, "sha256": "..."}],
     "producer": {... the train.yaml ...}}

Paths are relative to the folder, with ``/`` between segments, sorted.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from internvl_trainer.storage.errors import ObjectNotFound, StorageError, UnsafeKeyError
from internvl_trainer.storage.uri import Location, check_key

if TYPE_CHECKING:
    from internvl_trainer.storage.store import Storage

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
_HASH_CHUNK = 4 * 1024 * 1024


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(_HASH_CHUNK)
        view = memoryview(buffer)
        while True:
            count = handle.readinto(buffer)
            if not count:
                return digest.hexdigest()
            digest.update(view[:count])


class FileEntry(BaseModel):
    """One file of a manifest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        try:
            checked = check_key(value)
        except UnsafeKeyError as error:
            raise ValueError(str(error)) from None
        if checked != value:
            raise ValueError(f"path {value!r} is not normalised (expected {checked!r})")
        return value


class Manifest(BaseModel):
    """The files of a complete upload, with the time and the producing configuration."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    version: int = MANIFEST_VERSION
    created: str = Field(default_factory=lambda: utc_now())
    total_size: int | None = Field(None, alias="totalSize", ge=0)
    files: list[FileEntry]
    producer: dict[str, Any] | None = None

    @field_validator("files")
    @classmethod
    def _sorted_unique(cls, files: list[FileEntry]) -> list[FileEntry]:
        paths = [entry.path for entry in files]
        if len(set(paths)) != len(paths):
            raise ValueError("a path is listed twice")
        if MANIFEST_NAME in paths:
            raise ValueError(f"{MANIFEST_NAME} cannot list itself")
        return sorted(files, key=lambda entry: entry.path)

    @model_validator(mode="after")
    def _total(self) -> Manifest:
        total = sum(entry.size for entry in self.files)
        if self.total_size is None:
            self.total_size = total
        elif self.total_size != total:
            raise ValueError(f"totalSize {self.total_size} is not the sum of the file sizes ({total})")
        return self

    def by_path(self) -> dict[str, FileEntry]:
        return {entry.path: entry for entry in self.files}

    def same_files(self, other: Manifest) -> bool:
        """Whether both list the same paths with the same sizes and hashes."""
        return self.files == other.files

    def to_json(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json", by_alias=True), indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes | str, *, source: str = MANIFEST_NAME) -> Manifest:
        try:
            return cls.model_validate_json(data)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise StorageError(f"{source}: not a valid manifest: {where}: {first['msg']}") from None


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def entry_for(path: Path, relative: str) -> FileEntry:
    """A manifest entry for a local file (reads it once for the hash)."""
    size = path.stat().st_size
    return FileEntry(path=relative, size=size, sha256=sha256_file(path))


def read_manifest(storage: Storage, location: Location, *, strict: bool = False) -> Manifest | None:
    """The manifest at ``location``, or None when there is none. An invalid one raises
    StorageError when ``strict``, else it is logged and treated as absent."""
    try:
        data = storage.read_bytes(location)
    except ObjectNotFound:
        return None
    try:
        return Manifest.from_json(data, source=str(location))
    except StorageError as error:
        if strict:
            raise
        log.warning("ignoring %s", error)
        return None

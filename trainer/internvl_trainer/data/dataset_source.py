"""``DatasetSource``: one dataset of a meta file, the samples a run draws from.

It joins a dataset's indexed annotations (``annotations``), its root (``storage.DatasetRoot``:
media paths that escape it are refused) and the media under it, read through the node's cache.
A sample becomes a checked record (``records``), its media read, then a ``BuiltSample`` through
the run's ``SampleBuilder``; what goes wrong with the media is a ``SampleError`` of kind ``path``
(escapes the root), ``missing`` (no such file) or ``unreadable`` (storage failed), and a bad sample
is skipped and counted (``report.BadSamples``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from internvl_trainer.data.annotations import AnnotationFile, open_annotations
from internvl_trainer.data.errors import MediaPathError, MissingMediaError, SampleError, UnreadableMediaError
from internvl_trainer.data.meta import DatasetMeta, MetaFile
from internvl_trainer.data.records import Record, parse_record
from internvl_trainer.data.report import BadSamples
from internvl_trainer.data.video import FrameList
from internvl_trainer.storage import Cache, DatasetRoot, Location, ObjectNotFound, Storage, StorageError, UnsafeKeyError

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
"""Files of a frame folder that are frames."""

_NUMBER = re.compile(r"(\d+)")


def frame_order(name: str) -> tuple:
    """Sort key of frame file names: by the numbers in them (``frame_2`` before ``frame_10``)."""
    return tuple(int(part) if part.isdigit() else part for part in _NUMBER.split(name))


class DatasetSource:
    """One dataset of a meta file: its indexed annotations, its root, and the media under it.

    Media are read through ``cache`` when given (a node's shared object cache: one download per
    object), otherwise straight from storage."""

    def __init__(
        self,
        name: str,
        dataset: DatasetMeta,
        annotations: AnnotationFile,
        storage: Storage,
        cache: Cache | None = None,
    ):
        self.name = name
        self.dataset = dataset
        self.annotations = annotations
        self.storage = storage
        self.cache = cache
        self.root = DatasetRoot(dataset.root)

    def __len__(self) -> int:
        return len(self.annotations)

    def where(self, number: int) -> str:
        """``file:line`` of sample ``number``."""
        return self.annotations.where(number)

    def record(self, number: int) -> Record:
        """The checked record of sample ``number``. Raises SampleError."""
        return parse_record(self.annotations.read(number))

    # -- media -----------------------------------------------------------------------------

    def locate(self, key: str) -> Location:
        """Where a media path of the annotations is. Raises MediaPathError."""
        try:
            return self.root.resolve(key)
        except UnsafeKeyError as error:
            raise MediaPathError(str(error)) from None

    def read_media(self, key: str) -> bytes:
        """The bytes of a media file. Raises MediaPathError, MissingMediaError, UnreadableMediaError."""
        location = self.locate(key)
        try:
            if self.cache is not None:
                return self.cache.read_bytes(self.storage, location)
            return self.storage.read_bytes(location)
        except (ObjectNotFound, FileNotFoundError, IsADirectoryError):
            raise MissingMediaError(f"{key}: no such file under {self.dataset.root}") from None
        except (StorageError, OSError) as error:
            raise UnreadableMediaError(f"cannot read {key}: {error}") from None

    def exists(self, key: str) -> bool:
        """Whether a media file exists (MediaPathError for a path outside the root)."""
        location = self.locate(key)
        try:
            return self.storage.exists(location)
        except StorageError as error:
            raise UnreadableMediaError(f"cannot look up {key}: {error}") from None

    def frame_keys(self, record: Record) -> list[str]:
        """The frame paths of a ``frames`` record: its list, or its folder's images in order."""
        if record.frames:
            return list(record.frames)
        assert record.video is not None
        folder = record.video.rstrip("/")
        location = self.locate(folder)
        try:
            names = [info.key for info in self.storage.list(location) if "/" not in info.key]
        except StorageError as error:
            raise UnreadableMediaError(f"cannot list {record.video}: {error}") from None
        names = sorted((name for name in names if name.lower().endswith(FRAME_SUFFIXES)), key=frame_order)
        if not names:
            raise MissingMediaError(f"{record.video}: no frame images in this folder under {self.dataset.root}")
        return [f"{folder}/{name}" for name in names]

    def frames(self, record: Record) -> FrameList:
        """The frames of a ``frames`` record, each read only when sampled."""
        keys = self.frame_keys(record)
        return FrameList([_Fetch(self, key) for key in keys])

    # -- samples ---------------------------------------------------------------------------

    def build_inputs(self, record: Record) -> dict[str, Any]:
        """The keyword arguments of ``SampleBuilder.build`` for ``record`` (media read)."""
        options: dict[str, Any] = {"augment": self.dataset.data_augment}
        if record.kind in ("video", "frames"):
            assert record.video is not None or record.frames
            options["video"] = self.frames(record) if record.kind == "frames" else self.read_media(record.video)  # type: ignore[arg-type]
            options["clip"] = record.clip
        elif record.images:
            options["images"] = [self.read_media(key) for key in record.images]
            options["max_tiles"] = self.dataset.max_dynamic_patch
        return options

    def build(self, number: int, builder: Any, rng: np.random.Generator) -> Any:
        """``builder.build`` on sample ``number`` (a BuiltSample). Raises SampleError, OverlongError
        when the over-long policy drops it."""
        record = self.record(number)
        return builder.build(record.conversations, rng=rng, **self.build_inputs(record))

    def build_or_skip(self, number: int, builder: Any, rng: np.random.Generator, bad: BadSamples) -> Any:
        """``build``, with a bad sample skipped and counted in ``bad`` (None returned), or, in
        strict mode, StrictDataError raised with the sample's ``file:line``."""
        try:
            return self.build(number, builder, rng)
        except SampleError as error:
            bad.skip(error, self.where(number))
            return None


def open_sources(meta: MetaFile, storage: Storage, cache: Cache, *, media_cache: bool = True) -> list[DatasetSource]:
    """Every dataset of ``meta``, its annotations indexed (and, when remote, fetched into ``cache``);
    media read through ``cache`` too when ``media_cache``. Raises BadInput naming each dataset whose
    annotation file cannot be used."""
    files = open_annotations(meta, storage, cache)
    return [
        DatasetSource(name, dataset, file, storage, cache if media_cache else None)
        for (name, dataset), file in zip(meta.root.items(), files, strict=True)
    ]


class _Fetch:
    """A frame read when called (picklable, unlike a lambda)."""

    def __init__(self, source: DatasetSource, key: str):
        self.source = source
        self.key = key

    def __call__(self) -> bytes:
        return self.source.read_media(self.key)

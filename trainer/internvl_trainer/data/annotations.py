"""Annotation files, local or on S3, read one sample at a time through their byte-offset index.

``open_annotation`` indexes a file once per node (``data.index``) and returns an
``AnnotationFile``: its length, the raw text of sample ``n`` and the sample's ``file:line``. The
index lives in ``<cache folder>/annotation-index/`` and is shared by every rank and data-loader
worker of the node. A remote annotation file is fetched once into the node's object cache when one
is given (random reads then stay local), and is otherwise read with one ranged GET per sample.

Memory per process is the mapped index (16 bytes per sample, shared through the page cache) and
one open file descriptor; an ``AnnotationFile`` pickles without either and reopens them in the
process that unpickles it (spawned data-loader workers).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from internvl_trainer.data.index import AnnotationFormatError, AnnotationIndex, SourceIdentity, cached_index
from internvl_trainer.data.meta import MetaFile
from internvl_trainer.data.sampling import DatasetSpec
from internvl_trainer.problems import BadInput, Problem
from internvl_trainer.storage import Cache, Storage, StorageError, parse

log = logging.getLogger(__name__)

INDEX_FOLDER = "annotation-index"
"""Where the indexes live under the cache folder (beside the object cache's own folders)."""

DEFAULT_CACHE_BYTES = 50 * 1024**3
"""The node's data cache size unless ``$INTERNVL_DATA_CACHE_BYTES`` says otherwise."""


def data_cache(folder: str | os.PathLike[str]) -> Cache:
    """The node's cache of annotation files and media under ``folder``."""
    return Cache(folder, int(os.environ.get("INTERNVL_DATA_CACHE_BYTES", DEFAULT_CACHE_BYTES)))


class AnnotationFile:
    """One indexed annotation file (see the module docstring)."""

    def __init__(self, uri: str, index: AnnotationIndex, *, path: Path | None = None, storage: Storage | None = None):
        if path is None and storage is None:
            raise ValueError("an annotation file is read from a local path or through storage")
        self.uri = uri
        self.index = index
        self.path = path
        """The local file the samples are read from (the file itself, or its cached copy)."""
        self.storage = storage
        self._descriptor: int | None = None
        self._pid = -1
        self._lock = threading.Lock()

    @property
    def format(self) -> str:
        """``jsonl`` or ``json`` (an array)."""
        return self.index.format

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_descriptor"] = None
        state["_pid"] = -1
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        descriptor, self._descriptor = getattr(self, "_descriptor", None), None
        if descriptor is not None and self._pid == os.getpid():
            os.close(descriptor)

    def read(self, number: int) -> bytes:
        """The raw text of sample ``number`` (thread-safe; a forked process opens its own file)."""
        offset, length = self.index.span(number)
        if self.path is None:
            assert self.storage is not None
            return self.storage.read_range(self.uri, offset, length)
        data = os.pread(self._file(), length, offset)
        if len(data) != length:
            raise OSError(f"{self.uri}: changed after it was indexed (sample {number} ends past the file)")
        return data

    def _file(self) -> int:
        """This process's descriptor of the local file (opened once per process)."""
        descriptor = self._descriptor
        if descriptor is not None and self._pid == os.getpid():
            return descriptor
        with self._lock:
            if self._descriptor is None or self._pid != os.getpid():
                assert self.path is not None
                self._descriptor = os.open(self.path, os.O_RDONLY)
                self._pid = os.getpid()
            return self._descriptor

    def line(self, number: int) -> int:
        """The 1-based line sample ``number`` starts on."""
        return self.index.line(number)

    def where(self, number: int) -> str:
        """``file:line`` of sample ``number``, as editors count lines."""
        return f"{self.uri}:{self.index.line(number)}"

    def __repr__(self) -> str:
        return f"AnnotationFile({self.uri!r}, {len(self)} samples, {self.format})"


def open_annotation(
    uri: str, storage: Storage, cache_dir: str | os.PathLike[str], *, cache: Cache | None = None
) -> AnnotationFile:
    """The annotation file at ``uri``, indexed once under ``cache_dir``. With ``cache``, a remote
    file is fetched into it first. Raises StorageError (unreadable), AnnotationFormatError (a
    broken JSON array)."""
    location = parse(uri)
    folder = Path(cache_dir) / INDEX_FOLDER
    name = str(location)
    if not location.is_s3:
        path = location.path
        try:
            identity = SourceIdentity.of_file(path, name)
        except FileNotFoundError:
            raise StorageError(f"{name}: no such file") from None
        index = cached_index(folder, identity, lambda: open(path, "rb"), source=name)
        return AnnotationFile(name, index, path=path)
    info = storage.head(location)
    identity = SourceIdentity(name, info.size, info.etag or "")
    local: Path | None = None
    if cache is not None:
        local = cache.fetch(storage, location)
        if local.stat().st_size != info.size:
            log.warning("%s: the cached copy differs from the object in size; reading the object itself", name)
            local = None
    if local is not None:
        copy = local
        index = cached_index(folder, identity, lambda: open(copy, "rb"), source=name)
    else:
        index = cached_index(folder, identity, lambda: storage.open(location), source=name)
    return AnnotationFile(name, index, path=local, storage=storage)


def open_annotations(
    meta: MetaFile, storage: Storage, cache: Cache, *, cache_dir: str | os.PathLike[str] | None = None
) -> list[AnnotationFile]:
    """Every dataset's annotation file, indexed (indexes under ``cache_dir``, by default the
    object cache's folder). Raises BadInput naming each dataset whose file cannot be used."""
    files, problems = [], []
    folder = Path(cache_dir) if cache_dir is not None else cache.root
    for name, dataset in meta.root.items():
        try:
            files.append(open_annotation(dataset.annotation, storage, folder, cache=cache))
        except (StorageError, OSError) as error:
            problems.append(Problem(f"{name}.annotation", f"cannot read {dataset.annotation}: {error}"))
        except AnnotationFormatError as error:
            problems.append(Problem(f"{name}.annotation", str(error)))
    if problems:
        raise BadInput(problems)
    return files


def dataset_specs(meta: MetaFile, sizes: Sequence[int]) -> list[DatasetSpec]:
    """The sampler's view of the datasets: name, samples, repeat time and weight."""
    return [
        DatasetSpec(name, size, repeat_time=dataset.repeat_time, weight=dataset.weight)
        for (name, dataset), size in zip(meta.root.items(), sizes, strict=True)
    ]

"""One interface for ``s3://bucket/key`` URIs and local paths (plain or ``file://``).

``Storage`` is what data loading, model loading and export use::

    storage = Storage(config.storage)
    storage.exists(uri); storage.size(uri); storage.list(prefix)
    with storage.open(uri) as stream: ...          # seekable, resumes after dropped connections
    storage.read_range(uri, start, length)
    storage.download(prefix, local_dir)            # verified against manifest.json when there is one
    storage.upload(local_dir, prefix, producer=config.to_wire())   # manifest.json written last

S3 calls go through boto3 (botocore's retries, s3transfer's parallel multipart transfers); local
paths through the file system, with the same atomicity (temporary file, then rename). A
``Storage`` pickles without its client, so it can be handed to data-loader workers; each process
makes its own client. Its repr shows the endpoint (without user info), region and addressing
style, never credentials.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import BotoCoreError, ClientError

from internvl_trainer.config import StorageConfig
from internvl_trainer.storage.atomic import atomic_copy, atomic_write
from internvl_trainer.storage.client import ClientHolder, redact_url
from internvl_trainer.storage.download import download_tree
from internvl_trainer.storage.errors import ObjectNotFound, StorageError
from internvl_trainer.storage.manifest import FileEntry, Manifest
from internvl_trainer.storage.stream import S3Reader, client_error_code, client_error_status
from internvl_trainer.storage.upload import upload_file, upload_tree
from internvl_trainer.storage.uri import Location, parse

log = logging.getLogger(__name__)

MiB = 1024 * 1024
SHA256_METADATA = "sha256"
"""User metadata key (``x-amz-meta-sha256``) that uploads set on every object."""

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}


def default_transfer_config(threads: int = 8) -> TransferConfig:
    """Multipart above 64 MiB in 16 MiB parts, ``threads`` parts in flight (botocore retries each)."""
    return TransferConfig(
        multipart_threshold=64 * MiB,
        multipart_chunksize=16 * MiB,
        max_concurrency=threads,
        io_chunksize=1 * MiB,
        use_threads=True,
    )


@dataclass(frozen=True)
class ObjectInfo:
    """An object (or local file) found by ``list`` or ``head``."""

    uri: str
    key: str
    """The path relative to the listed folder, with ``/`` between segments (empty from ``head``)."""
    size: int
    etag: str | None = None
    sha256: str | None = None
    """The sha256 recorded when this project uploaded the object (``head`` only)."""


class ObjectStream(io.BufferedReader):
    """A buffered, seekable read stream that also knows the object's ``size``."""

    @property
    def size(self) -> int:
        raw = self.raw
        if isinstance(raw, S3Reader):
            return raw.size
        return os.fstat(raw.fileno()).st_size


class StorageStats:
    """Counters of one process's storage activity (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.resumed_reads = 0

    def resumed(self, uri: str, position: int) -> None:
        with self._lock:
            self.resumed_reads += 1


class Pending(Protocol):
    """A transfer in progress; ``result()`` waits for it and raises StorageError when it failed."""

    def result(self) -> Any: ...


class Transfers(Protocol):
    """Parallel file transfers, from ``Storage.transfers``."""

    def put(self, path: Path, location: Location, entry: FileEntry) -> Pending: ...

    def get(self, location: Location, path: Path) -> Pending: ...


class Storage:
    """S3 and local storage behind one interface; every method takes a URI or a path."""

    def __init__(
        self,
        config: StorageConfig | None = None,
        *,
        threads: int = 8,
        transfer: TransferConfig | None = None,
        max_stalls: int = 6,
    ):
        self.config = config or StorageConfig()
        self.threads = threads
        self.transfer = transfer or default_transfer_config(threads)
        self.max_stalls = max_stalls
        self._clients = ClientHolder(self.config, max_pool_connections=max(32, 2 * threads + 8))
        self.stats = StorageStats()

    def __repr__(self) -> str:
        return (
            f"Storage(endpoint={redact_url(self.config.endpoint)!r}, region={self.config.region!r},"
            f" addressing_style={self.config.addressing_style!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["stats"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stats = StorageStats()

    def client(self) -> Any:
        """This process's boto3 S3 client."""
        return self._clients.get()

    # -- queries ---------------------------------------------------------------------------------

    def exists(self, uri: str | os.PathLike[str]) -> bool:
        """Whether the object (or local file) exists."""
        location = parse(uri)
        if not location.is_s3:
            return location.path.is_file()
        try:
            self.head(location)
        except ObjectNotFound:
            return False
        return True

    def size(self, uri: str | os.PathLike[str]) -> int:
        """The object's size in bytes; ObjectNotFound when it does not exist."""
        return self.head(uri).size

    def head(self, uri: str | os.PathLike[str] | Location) -> ObjectInfo:
        """Size, ETag and recorded sha256 of one object (local files: size only)."""
        location = parse(uri)
        if not location.is_s3:
            try:
                stat = location.path.stat()
            except FileNotFoundError:
                raise ObjectNotFound(f"{location}: no such file") from None
            if not location.path.is_file():
                raise ObjectNotFound(f"{location}: not a file")
            return ObjectInfo(str(location), "", stat.st_size)
        with self._s3_errors(location):
            response = self.client().head_object(Bucket=location.bucket, Key=location.key)
        return ObjectInfo(
            str(location),
            "",
            int(response["ContentLength"]),
            etag=response.get("ETag"),
            sha256=(response.get("Metadata") or {}).get(SHA256_METADATA),
        )

    def list(self, uri: str | os.PathLike[str], *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Every object below ``uri`` taken as a folder, page by page (S3: in key order)."""
        location = parse(uri)
        if location.is_s3:
            yield from self._list_s3(location, page_size)
        else:
            yield from self._list_local(location)

    def _list_s3(self, location: Location, page_size: int) -> Iterator[ObjectInfo]:
        prefix = location.folder_prefix()
        paginator = self.client().get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=location.bucket, Prefix=prefix, PaginationConfig={"PageSize": max(1, min(page_size, 1000))}
        )
        with self._s3_errors(location, missing_ok=True):
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"]
                    if key.endswith("/"):
                        continue
                    yield ObjectInfo(
                        f"s3://{location.bucket}/{key}", key[len(prefix) :], int(item["Size"]), etag=item.get("ETag")
                    )

    def _list_local(self, location: Location) -> Iterator[ObjectInfo]:
        root = location.path
        if not root.is_dir():
            return
        for folder, folders, files in os.walk(root):
            folders.sort()
            for name in sorted(files):
                path = Path(folder) / name
                if not path.is_file():
                    continue
                relative = path.relative_to(root).as_posix()
                yield ObjectInfo(str(path), relative, path.stat().st_size)

    # -- reads -----------------------------------------------------------------------------------

    def open(self, uri: str | os.PathLike[str], *, buffer_size: int = 1 * MiB) -> ObjectStream:
        """A seekable read stream. For S3 it sends GETs lazily and resumes a broken body with a
        Range request at the next byte; ``stream.size`` is the object's size."""
        location = parse(uri)
        if not location.is_s3:
            try:
                raw: io.RawIOBase = io.FileIO(location.path, "r")
            except FileNotFoundError:
                raise ObjectNotFound(f"{location}: no such file") from None
            except IsADirectoryError:
                raise ObjectNotFound(f"{location}: not a file") from None
            return ObjectStream(raw, buffer_size)
        return ObjectStream(self._reader(location), buffer_size)

    def reader(self, uri: str | os.PathLike[str] | Location) -> ObjectStream | S3Reader:
        """A read stream without a buffer of its own, for reading an object whole or in large
        chunks: ``open`` without the buffer, which costs a small image's read about 2 % (the
        node cache reads this way); ``stream.size`` is the object's size."""
        location = parse(uri)
        if not location.is_s3:
            return self.open(location)
        return self._reader(location)

    def _reader(self, location: Location, *, start: int = 0, end: int | None = None) -> S3Reader:
        return S3Reader(
            self.client,
            location.bucket,
            location.key,
            start=start,
            end=end,
            max_stalls=self.max_stalls,
            on_resume=self.stats.resumed,
        )

    def read_range(self, uri: str | os.PathLike[str], start: int, length: int) -> bytes:
        """``length`` bytes from byte ``start`` (fewer at the end of the object, none past it)."""
        if start < 0 or length < 0:
            raise ValueError(f"invalid byte range: start {start}, length {length}")
        location = parse(uri)
        if length == 0:
            return b""
        if not location.is_s3:
            try:
                with open(location.path, "rb") as handle:
                    handle.seek(start)
                    return handle.read(length)
            except FileNotFoundError:
                raise ObjectNotFound(f"{location}: no such file") from None
        with self._reader(location, start=start, end=start + length) as reader:
            return reader.readall()

    def read_bytes(self, uri: str | os.PathLike[str]) -> bytes:
        """The whole object."""
        location = parse(uri)
        if not location.is_s3:
            try:
                return location.path.read_bytes()
            except FileNotFoundError:
                raise ObjectNotFound(f"{location}: no such file") from None
        with self._reader(location) as reader:
            return reader.readall()

    # -- writes ----------------------------------------------------------------------------------

    def write_bytes(self, uri: str | os.PathLike[str], data: bytes) -> None:
        """Write one object in a single request (atomic for readers; local: temporary file, then rename)."""
        location = parse(uri)
        if not location.is_s3:
            atomic_write(location.path, data)
            return
        with self._s3_errors(location):
            self.client().put_object(Bucket=location.bucket, Key=location.key, Body=data)

    def delete(self, uri: str | os.PathLike[str]) -> None:
        """Delete one object or file; nothing happens when it does not exist."""
        location = parse(uri)
        if not location.is_s3:
            location.path.unlink(missing_ok=True)
            return
        with self._s3_errors(location, missing_ok=True):
            self.client().delete_object(Bucket=location.bucket, Key=location.key)

    def upload(
        self,
        source: str | os.PathLike[str],
        destination: str | os.PathLike[str],
        *,
        producer: dict[str, Any] | None = None,
    ) -> Manifest:
        """Upload a file to ``destination``, or a folder below it with ``manifest.json`` written last.

        Sends only what is not already there; see ``internvl_trainer.storage.upload``."""
        origin = parse(source)
        if origin.is_s3:
            raise StorageError(f"{origin}: the source of an upload must be a local file or folder")
        if origin.path.is_dir():
            return upload_tree(self, origin.path, destination, producer=producer)
        if not origin.path.is_file():
            raise ObjectNotFound(f"{origin}: no such file or folder")
        return Manifest(files=[upload_file(self, origin.path, destination)], producer=producer)

    def download(self, source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Manifest:
        """Download everything below ``source`` into a local folder, verifying sizes (and sha256 when
        ``source`` has a manifest.json); see ``internvl_trainer.storage.download``."""
        return download_tree(self, source, Path(destination))

    # -- parallel transfers (used by upload and download) -----------------------------------------

    @contextlib.contextmanager
    def transfers(self, location: Location) -> Iterator[Transfers]:
        """Parallel file transfers to or from the side of ``location``."""
        if location.is_s3:
            with create_transfer_manager(self.client(), self.transfer) as manager:
                yield _S3Transfers(manager, self)
        else:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="storage-copy") as pool:
                yield _LocalTransfers(pool)

    # -- errors ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _s3_errors(self, location: Location, *, missing_ok: bool = False) -> Iterator[None]:
        try:
            yield
        except ClientError as error:
            code = client_error_code(error)
            if code in _NOT_FOUND or (client_error_status(error) == 404 and code != "NoSuchBucket"):
                if missing_ok:
                    return
                raise ObjectNotFound(f"{location}: no such object") from None
            raise StorageError(self._scrub(f"{location}: {code or client_error_status(error)}: {error}")) from None
        except BotoCoreError as error:
            raise StorageError(self._scrub(f"{location}: {type(error).__name__}: {error}")) from None

    def _scrub(self, message: str) -> str:
        endpoint = self.config.endpoint
        if endpoint and redact_url(endpoint) != endpoint:
            message = message.replace(endpoint, redact_url(endpoint) or "")
        return message


class _S3Transfers:
    def __init__(self, manager: Any, storage: Storage):
        self._manager = manager
        self._storage = storage

    def put(self, path: Path, location: Location, entry: FileEntry) -> Pending:
        return _Translated(
            self._manager.upload(
                str(path), location.bucket, location.key, extra_args={"Metadata": {SHA256_METADATA: entry.sha256}}
            ),
            self._storage,
            location,
        )

    def get(self, location: Location, path: Path) -> Pending:
        return _Translated(self._manager.download(location.bucket, location.key, str(path)), self._storage, location)


class _Translated:
    """An s3transfer future whose errors come out as StorageError."""

    def __init__(self, future: Any, storage: Storage, location: Location):
        self._future = future
        self._storage = storage
        self._location = location

    def result(self) -> Any:
        with self._storage._s3_errors(self._location):
            try:
                return self._future.result()
            except (ClientError, BotoCoreError):
                raise
            except Exception as error:  # s3transfer wraps failures (S3UploadFailedError, RetriesExceededError)
                raise StorageError(self._storage._scrub(f"{self._location}: {type(error).__name__}: {error}")) from None


class _LocalTransfers:
    def __init__(self, pool: ThreadPoolExecutor):
        self._pool = pool

    def put(self, path: Path, location: Location, entry: FileEntry) -> Pending:
        return self._pool.submit(atomic_copy, path, location.path)

    def get(self, location: Location, path: Path) -> Pending:
        return self._pool.submit(atomic_copy, location.path, path)

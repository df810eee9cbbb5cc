"""Streaming reads of S3 objects that survive dropped connections.

``S3Reader`` is a seekable raw stream over one object. botocore retries a GET until its response
starts (5xx, SlowDown, resets); a connection that breaks mid-body is this module's job: the reader
sends a new GET with ``Range: bytes=<next byte>-`` and ``If-Match: <etag>`` (so a replaced object
fails loudly instead of splicing two versions) and goes on from exactly the byte it stopped at.
It gives up after ``max_stalls`` consecutive failures without progress.
"""

from __future__ import annotations

import http.client
import io
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError, IncompleteReadError
from urllib3.exceptions import HTTPError as URLLib3HTTPError

from internvl_trainer.storage.errors import ObjectNotFound, StorageError

log = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024
"""Largest single read from the socket."""

_BROKEN_BODY = (
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    URLLib3HTTPError,
    http.client.HTTPException,
    OSError,
    socket.timeout,
)
"""What a body read raises when the connection breaks (botocore wraps most of them)."""

_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}


class _Truncated(Exception):
    """The body ended before its Content-Length."""


def client_error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def client_error_status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _transient(error: Exception) -> bool:
    """Whether a failed GET is worth sending again (botocore has already retried it)."""
    if isinstance(error, ClientError):
        return client_error_status(error) >= 500 or client_error_code(error) in ("SlowDown", "RequestTimeout")
    return isinstance(error, BotoCoreError | OSError)


class S3Reader(io.RawIOBase):
    """A seekable, resumable raw stream over ``s3://bucket/key``.

    ``client`` is a callable returning the process's S3 client. ``on_resume(uri, position)`` is
    called each time a broken body is resumed. ``start`` and ``end`` (exclusive) limit the stream to
    a byte range: reads stop at ``end``, and requests ask for no more than that. ``size`` (the whole
    object's) and ``etag`` are known after the first request; reading ``size`` sends it."""

    def __init__(
        self,
        client: Callable[[], Any],
        bucket: str,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        max_stalls: int = 6,
        on_resume: Callable[[str, int], None] | None = None,
    ):
        super().__init__()
        self._client = client
        self.bucket = bucket
        self.key = key
        self.uri = f"s3://{bucket}/{key}"
        self.max_stalls = max_stalls
        self._on_resume = on_resume
        self._position = start
        self._end = end
        self._body: Any = None
        self._body_start = 0
        self._size: int | None = None
        self.etag: str | None = None
        self.resumes = 0
        self.requests = 0

    # -- io.RawIOBase ------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._position + offset
        elif whence == io.SEEK_END:
            target = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        if target != self._position:
            self._drop_body()
            self._position = target
        return target

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        data = self._read_some(len(view))
        view[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        return self._read_some(size)

    def readall(self) -> bytes:
        """The rest of the stream. It is first read in one call, as boto3's ``read()`` does (one
        buffer, no copies); if that breaks, the part it had received is lost with the connection,
        so reading goes on chunk by chunk from the first byte not yet returned."""
        first = self._read_some(None)
        if not first or self._position >= self._limit():
            return first
        chunks = [first]
        while data := self._read_some(CHUNK):
            chunks.append(data)
        return b"".join(chunks)

    def close(self) -> None:
        self._drop_body()
        super().close()

    # -- the object ----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The object's size in bytes (sends the first GET when none was sent yet)."""
        if self._size is None:
            self._stalled_retry(lambda: self._open(self._position))
        assert self._size is not None
        return self._size

    def _read_some(self, size: int | None) -> bytes:
        """Up to ``size`` bytes from the current position (None: the rest, in one call, or one
        chunk after a break); empty only at the end of the object."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        stalls = 0
        while True:
            if self._position >= self._limit():
                return b""
            try:
                if self._body is None:
                    self._open(self._position)
                    if self._position >= self._limit():
                        return b""
                if size is None:
                    data = self._body.read()
                else:
                    data = self._body.read(min(size, CHUNK, self._limit() - self._position))
                if not data:
                    raise _Truncated(f"body ended at byte {self._position} of {self._size}")
            except StorageError:
                raise
            except (_Truncated, ClientError, *_BROKEN_BODY) as error:
                if isinstance(error, ClientError) and not _transient(error):
                    raise self._translate(error) from None
                stalls += 1
                size = CHUNK if size is None else size
                self._drop_body()
                if stalls >= self.max_stalls:
                    raise StorageError(
                        f"{self.uri}: reading failed {stalls} times in a row at byte {self._position}:"
                        f" {type(error).__name__}: {error}"
                    ) from None
                self.resumes += 1
                log.info("resuming %s at byte %d after %s: %s", self.uri, self._position, type(error).__name__, error)
                if self._on_resume is not None:
                    self._on_resume(self.uri, self._position)
                time.sleep(min(0.05 * 2 ** (stalls - 1), 2.0))
                continue
            self._position += len(data)
            return data

    def _limit(self) -> int:
        """Where reading stops: the range's end or the object's (unbounded before the first request)."""
        size = self._size if self._size is not None else 1 << 62
        return size if self._end is None else min(self._end, size)

    def _stalled_retry(self, action: Callable[[], None]) -> None:
        for attempt in range(1, self.max_stalls + 1):
            try:
                action()
                return
            except StorageError:
                raise
            except (ClientError, BotoCoreError, OSError) as error:
                if not _transient(error) or attempt == self.max_stalls:
                    raise self._translate(error) from None
                time.sleep(min(0.05 * 2 ** (attempt - 1), 2.0))

    def _open(self, position: int) -> None:
        """GET the object from ``position``; on the first request learn its size and ETag."""
        self._drop_body()
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if self._end is not None and position >= self._end:
            return
        if position > 0 or self._end is not None:
            if self._size is not None and position >= self._size:
                return
            last = "" if self._end is None else str(self._end - 1)
            request["Range"] = f"bytes={position}-{last}"
        if self.etag is not None:
            request["IfMatch"] = self.etag
        self.requests += 1
        try:
            response = self._client().get_object(**request)
        except ClientError as error:
            if client_error_code(error) == "InvalidRange" and "Range" in request:
                # Past the end: learn the size, read nothing.
                if self._size is None:
                    head = self._client().head_object(Bucket=self.bucket, Key=self.key)
                    self._size = int(head["ContentLength"])
                    self.etag = head.get("ETag")
                return
            raise
        body = response["Body"]
        content_range = response.get("ContentRange")
        if content_range:
            # "bytes 100-199/1000"
            span, _, total = content_range.partition(" ")[2].partition("/")
            start = int(span.partition("-")[0])
            if start != position:
                body.close()
                raise StorageError(f"{self.uri}: asked for byte {position}, the server answered from byte {start}")
            size = int(total)
        elif "Range" in request:
            body.close()
            raise StorageError(f"{self.uri}: the server ignored the Range request for byte {position}")
        else:
            size = int(response["ContentLength"])
        if self._size is None:
            self._size = size
            self.etag = response.get("ETag")
        elif size != self._size:
            body.close()
            raise StorageError(f"{self.uri}: the object changed size while being read ({self._size} -> {size})")
        self._body = body
        self._body_start = position

    def _drop_body(self) -> None:
        if self._body is not None:
            if self._position < self._limit():  # read to its end, a body has given its connection back already
                try:
                    self._body.close()
                except Exception:  # noqa: BLE001 - closing a broken connection may fail in many ways
                    pass
            self._body = None

    def _translate(self, error: Exception) -> StorageError:
        if isinstance(error, ClientError):
            code = client_error_code(error)
            if code in _NOT_FOUND:
                return ObjectNotFound(f"{self.uri}: no such object")
            if code == "PreconditionFailed":
                return StorageError(f"{self.uri}: the object was replaced while being read")
            return StorageError(f"{self.uri}: {code or client_error_status(error)}: {error}")
        if isinstance(error, StorageError):
            return error
        return StorageError(f"{self.uri}: {type(error).__name__}: {error}")

    def __repr__(self) -> str:
        return f"S3Reader({self.uri!r}, position={self._position}, size={self._size})"

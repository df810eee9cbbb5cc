"""S3Reader against a scripted client: resumption at the exact byte, ranges, seeks, give-up."""

from __future__ import annotations

import io
import os

import pytest
from botocore.exceptions import ClientError, IncompleteReadError, ResponseStreamingError
from urllib3.exceptions import ProtocolError

from internvl_trainer.storage import ObjectNotFound, StorageError
from internvl_trainer.storage.stream import S3Reader


class Body:
    """A response body that breaks after ``break_after`` bytes (or ends early with ``truncate``)."""

    def __init__(self, data: bytes, break_after: int | None = None, truncate: bool = False):
        self._data = io.BytesIO(data)
        self._left = break_after
        self._truncate = truncate
        self.closed = False

    def read(self, amount: int | None = None) -> bytes:
        if amount is None and self._left is not None:
            # botocore checks a whole read against Content-Length; what arrived is lost with the error
            self._data.read(self._left)
            self._left = 0
            raise IncompleteReadError(actual_bytes=0, expected_bytes=1)
        if amount is None:
            return self._data.read()
        if self._left is not None:
            if self._left <= 0:
                if self._truncate:
                    return b""
                raise ResponseStreamingError(error=ProtocolError("Connection broken: IncompleteRead"))
            amount = min(amount, self._left)
            self._left -= amount
        return self._data.read(amount)

    def close(self) -> None:
        self.closed = True


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


class FakeClient:
    """Serves one object; ``breaks`` lists, per GET, after how many body bytes the connection drops."""

    def __init__(self, data: bytes, breaks: list[int | None] | None = None, etag: str = '"abc"'):
        self.data = data
        self.breaks = list(breaks or [])
        self.etag = etag
        self.requests: list[dict] = []
        self.errors: list[Exception] = []
        self.truncate = False

    def get_object(self, **request):
        self.requests.append(request)
        if self.errors:
            raise self.errors.pop(0)
        if "IfMatch" in request and request["IfMatch"] != self.etag:
            raise client_error("PreconditionFailed", 412)
        start, end = 0, len(self.data) - 1
        response = {"ETag": self.etag}
        if "Range" in request:
            first, _, last = request["Range"].removeprefix("bytes=").partition("-")
            start = int(first)
            if start >= len(self.data):
                raise client_error("InvalidRange", 416)
            if last:
                end = min(int(last), len(self.data) - 1)
            response["ContentRange"] = f"bytes {start}-{end}/{len(self.data)}"
        body = self.data[start : end + 1]
        response["ContentLength"] = len(body)
        response["Body"] = Body(body, self.breaks.pop(0) if self.breaks else None, self.truncate)
        return response

    def head_object(self, **request):
        return {"ContentLength": len(self.data), "ETag": self.etag}


DATA = os.urandom(100_000)


def reader(client: FakeClient, **options) -> S3Reader:
    resumed: list[tuple[str, int]] = []
    stream = S3Reader(lambda: client, "bkt", "key", on_resume=lambda uri, at: resumed.append((uri, at)), **options)
    stream.resumed_log = resumed  # type: ignore[attr-defined]
    return stream


def read_in_chunks(stream: S3Reader, size: int = 4096) -> bytes:
    parts = []
    while chunk := stream.read(size):
        parts.append(chunk)
    return b"".join(parts)


def test_resumes_at_the_exact_next_byte():
    client = FakeClient(DATA, breaks=[12_345, 30_000, None])
    stream = reader(client)
    assert read_in_chunks(stream) == DATA
    assert [request.get("Range") for request in client.requests] == [None, "bytes=12345-", "bytes=42345-"]
    assert [request.get("IfMatch") for request in client.requests] == [None, '"abc"', '"abc"']
    assert stream.resumes == 2
    assert stream.resumed_log == [("s3://bkt/key", 12_345), ("s3://bkt/key", 42_345)]


def test_readall_reads_in_one_call_then_chunk_by_chunk_after_a_break():
    client = FakeClient(DATA, breaks=[None])
    assert reader(client).read() == DATA
    assert len(client.requests) == 1
    # A whole read that breaks loses what it received: reading restarts at the first byte not
    # returned yet (here 2_000, after a first small read) and continues in chunks, resuming exactly.
    client = FakeClient(DATA, breaks=[5_000, 7_000, None])
    stream = reader(client)
    assert stream.read(2_000) == DATA[:2_000]
    assert stream.read() == DATA[2_000:]
    assert [request.get("Range") for request in client.requests] == [None, "bytes=2000-", "bytes=9000-"]
    assert stream.resumes == 2


def test_a_body_that_ends_early_is_resumed_too():
    client = FakeClient(DATA, breaks=[50_000, None])
    client.truncate = True
    assert read_in_chunks(reader(client)) == DATA
    assert client.requests[1]["Range"] == "bytes=50000-"


def test_small_reads_through_a_buffer():
    client = FakeClient(DATA, breaks=[777, None])
    stream = io.BufferedReader(reader(client), 4096)
    parts = []
    while chunk := stream.read(1000):
        parts.append(chunk)
    assert b"".join(parts) == DATA


def test_gives_up_after_max_stalls_without_progress():
    client = FakeClient(DATA, breaks=[10, 0, 0, 0])
    stream = reader(client, max_stalls=4)
    with pytest.raises(StorageError, match=r"s3://bkt/key: reading failed 4 times in a row at byte 10"):
        read_in_chunks(stream)


def test_progress_resets_the_stall_count():
    client = FakeClient(DATA, breaks=[10_000] * 9 + [None])
    assert read_in_chunks(reader(client, max_stalls=2)) == DATA


def test_transient_errors_on_the_resume_request_are_retried():
    client = FakeClient(DATA, breaks=[5_000, None])
    client_errors = [client_error("SlowDown", 503)]
    original = client.get_object

    def get_object(**request):
        if "Range" in request and client_errors:
            client.requests.append(request)
            raise client_errors.pop(0)
        return original(**request)

    client.get_object = get_object
    assert read_in_chunks(reader(client)) == DATA
    assert [r.get("Range") for r in client.requests] == [None, "bytes=5000-", "bytes=5000-"]


def test_a_replaced_object_fails_instead_of_splicing():
    client = FakeClient(DATA, breaks=[1_000, None])
    stream = reader(client)
    stream.read(500)
    client.etag = '"other"'
    with pytest.raises(StorageError, match="replaced while being read"):
        stream.read()


def test_missing_object():
    client = FakeClient(DATA)
    client.errors.append(client_error("NoSuchKey", 404))
    with pytest.raises(ObjectNotFound, match="s3://bkt/key: no such object"):
        reader(client).read()


def test_access_denied_is_not_retried():
    client = FakeClient(DATA)
    client.errors.append(client_error("AccessDenied", 403))
    with pytest.raises(StorageError, match="AccessDenied"):
        reader(client).read(1)
    assert len(client.requests) == 1


def test_seek_and_tell_send_ranges_lazily():
    client = FakeClient(DATA)
    stream = reader(client)
    assert stream.size == len(DATA)
    assert len(client.requests) == 1
    stream.seek(60_000)
    assert len(client.requests) == 1
    assert stream.read(10) == DATA[60_000:60_010]
    assert client.requests[-1]["Range"] == "bytes=60000-"
    stream.seek(-10, io.SEEK_END)
    assert stream.read() == DATA[-10:]
    stream.seek(5, io.SEEK_CUR)
    assert stream.tell() == len(DATA) + 5
    assert stream.read(10) == b""
    with pytest.raises(ValueError):
        stream.seek(-1)


def test_byte_range_reader():
    client = FakeClient(DATA, breaks=[300, None])
    stream = reader(client, start=1_000, end=2_000)
    assert read_in_chunks(stream, 100) == DATA[1_000:2_000]
    assert [r["Range"] for r in client.requests] == ["bytes=1000-1999", "bytes=1300-1999"]


def test_range_past_the_end_reads_nothing():
    client = FakeClient(DATA)
    stream = reader(client, start=len(DATA) + 5, end=len(DATA) + 10)
    assert stream.read() == b""
    assert stream.size == len(DATA)


def test_closed_reader_refuses_reads():
    stream = reader(FakeClient(DATA))
    stream.close()
    with pytest.raises(ValueError):
        stream.read(1)

"""The storage interface against a real S3 server (SeaweedFS): every operation, errors, credentials."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import traceback

import pytest

from internvl_trainer.config import StorageConfig
from internvl_trainer.storage import (
    MANIFEST_NAME,
    DatasetRoot,
    IntegrityError,
    Manifest,
    ObjectNotFound,
    Storage,
    StorageError,
    UnsafeKeyError,
)
from internvl_trainer.storage.stream import S3Reader
from tests.integration.conftest import request_path

pytestmark = pytest.mark.integration


def test_queries_and_reads(storage, base):
    data = os.urandom(3 * 1024 * 1024 + 17)
    uri = f"{base}/data/blob.bin"
    storage.write_bytes(uri, data)
    storage.write_bytes(f"{base}/data/sub/small.txt", b"small")
    storage.write_bytes(f"{base}/database/other.txt", b"not below data/")

    assert storage.exists(uri)
    assert not storage.exists(f"{base}/data/missing")
    assert storage.size(uri) == len(data)
    assert storage.read_bytes(uri) == data
    assert storage.read_range(uri, 1000, 5000) == data[1000:6000]
    assert storage.read_range(uri, len(data) - 3, 100) == data[-3:]
    assert storage.read_range(uri, len(data) + 10, 100) == b""
    assert storage.read_range(uri, 0, 0) == b""

    listed = list(storage.list(f"{base}/data"))
    assert [(info.key, info.size) for info in listed] == [("blob.bin", len(data)), ("sub/small.txt", 5)]

    with storage.open(uri) as stream:
        assert stream.size == len(data)
        assert stream.read(10) == data[:10]
        stream.seek(2_000_000)
        assert stream.read(100) == data[2_000_000:2_000_100]
        stream.seek(-7, os.SEEK_END)
        assert stream.read() == data[-7:]
        stream.seek(0)
        assert stream.read() == data
    with storage.reader(uri) as stream:  # no buffer: whole reads and large chunks
        assert isinstance(stream, S3Reader) and stream.size == len(data)
        assert stream.read(1000) == data[:1000] and stream.read() == data[1000:]

    with pytest.raises(ObjectNotFound, match="no such object"):
        storage.size(f"{base}/data/missing")
    with pytest.raises(ObjectNotFound):
        storage.read_bytes(f"{base}/data/missing")
    with pytest.raises(ObjectNotFound):
        storage.open(f"{base}/data/missing").read(1)

    storage.delete(f"{base}/data/sub/small.txt")
    storage.delete(f"{base}/data/sub/small.txt")  # deleting twice is fine
    assert not storage.exists(f"{base}/data/sub/small.txt")


def test_empty_object(storage, base):
    uri = f"{base}/empty"
    storage.write_bytes(uri, b"")
    assert storage.size(uri) == 0
    assert storage.read_bytes(uri) == b""
    assert storage.read_range(uri, 0, 10) == b""
    with storage.open(uri) as stream:
        assert stream.read() == b""


def test_list_is_paginated(proxied_storage, proxy, base):
    storage = proxied_storage()
    for index in range(10):
        storage.write_bytes(f"{base}/many/{index:02d}", b"x" * index)
    start = proxy.mark()
    listed = list(storage.list(f"{base}/many/", page_size=3))
    assert [info.key for info in listed] == [f"{index:02d}" for index in range(10)]
    assert [info.size for info in listed] == list(range(10))
    pages = [entry for entry in proxy.entries(method="GET", since=start) if "list-type=2" in entry.query]
    assert len(pages) == 4
    assert sum("continuation-token" in entry.query for entry in pages) == 3


def test_dataset_root_refuses_escapes_on_s3(storage, base):
    storage.write_bytes(f"{base}/secret.txt", b"outside the dataset")
    storage.write_bytes(f"{base}/dataset/images/a.jpg", b"inside")
    root = DatasetRoot(f"{base}/dataset")
    assert storage.read_bytes(root.uri("images/a.jpg")) == b"inside"
    for key in ["../secret.txt", "images/../../secret.txt", "%2e%2e/secret.txt", f"{base}/secret.txt", "/secret"]:
        with pytest.raises(UnsafeKeyError, match="escapes the dataset root"):
            root.uri(key)
    assert root.refused == 5


def test_folder_upload_and_verified_download(storage, base, tmp_path):
    source = tmp_path / "model"
    (source / "model").mkdir(parents=True)
    files = {
        "model/config.json": b'{"a": 1}',
        "model/model-00001.safetensors": os.urandom(2_000_000),
        "model/model-00002.safetensors": os.urandom(1_500_000),
        "README.md": b"",
    }
    for relative, content in files.items():
        (source / relative).write_bytes(content)
    producer = {"run": {"name": "demo"}}

    manifest = storage.upload(source, f"{base}/out", producer=producer)
    assert manifest.producer == producer
    assert {entry.path: entry.size for entry in manifest.files} == {path: len(c) for path, c in files.items()}
    published = Manifest.from_json(storage.read_bytes(f"{base}/out/{MANIFEST_NAME}"))
    assert published.files == manifest.files
    assert json.loads(storage.read_bytes(f"{base}/out/{MANIFEST_NAME}"))["totalSize"] == sum(map(len, files.values()))
    for entry in manifest.files:
        assert entry.sha256 == hashlib.sha256(files[entry.path]).hexdigest()
        assert storage.head(f"{base}/out/{entry.path}").sha256 == entry.sha256

    target = tmp_path / "downloaded"
    downloaded = storage.download(f"{base}/out", target)
    assert downloaded.files == manifest.files
    for relative, content in files.items():
        assert (target / relative).read_bytes() == content
    assert Manifest.from_json((target / MANIFEST_NAME).read_bytes()).files == manifest.files
    assert not list(target.rglob("*.partial"))

    # A shard replaced behind the manifest's back (same size, other bytes) is caught.
    storage.write_bytes(f"{base}/out/model/model-00002.safetensors", os.urandom(1_500_000))
    with pytest.raises(IntegrityError, match="sha256"):
        storage.download(f"{base}/out", tmp_path / "again")
    assert not (tmp_path / "again" / "model" / "model-00002.safetensors").exists()
    assert not list((tmp_path / "again").rglob("*.partial"))


def test_download_resumes_and_checks_sizes_without_manifest(proxied_storage, proxy, base, tmp_path):
    storage = proxied_storage()
    for index in range(4):
        storage.write_bytes(f"{base}/shards/{index}.bin", bytes([index]) * 100_000)
    target = tmp_path / "shards"
    target.mkdir()
    (target / "0.bin").write_bytes(bytes([0]) * 100_000)  # already in place
    (target / "1.bin").write_bytes(b"short")  # a leftover of the wrong size
    start = proxy.mark()
    manifest = storage.download(f"{base}/shards", target)  # looks for a manifest.json first, finds none
    fetched = {entry.key for entry in proxy.entries(method="GET", since=start) if "list-type" not in entry.query}
    assert fetched == {request_path(f"{base}/shards/{name}") for name in ("1.bin", "2.bin", "3.bin", MANIFEST_NAME)}
    assert [entry.path for entry in manifest.files] == ["0.bin", "1.bin", "2.bin", "3.bin"]
    for index in range(4):
        assert (target / f"{index}.bin").read_bytes() == bytes([index]) * 100_000


def test_single_file_upload_skips_identical(proxied_storage, proxy, base, tmp_path):
    storage = proxied_storage()
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(500_000))
    uri = f"{base}/single/weights.bin"
    entry = storage.upload(path, uri).files[0]
    assert storage.read_bytes(uri) == path.read_bytes()
    assert entry.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    start = proxy.mark()
    storage.upload(path, uri)
    assert proxy.entries(method="PUT", since=start) == []


def test_credentials_never_leak(s3_server, base, monkeypatch, caplog):
    """Wrong credentials fail with a clear error; neither the error, the logs (every logger at
    DEBUG, botocore's request dumps included), repr() nor a pickle carry the secrets."""
    secret = "wrong-secret-" + os.urandom(8).hex()
    token = "session-token-" + os.urandom(8).hex()
    access_key = "AKIDLEAKCHECK" + os.urandom(4).hex().upper()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    caplog.set_level(logging.DEBUG)
    config = StorageConfig(endpoint=s3_server.endpoint, addressing_style="path")
    storage = Storage(config)
    with pytest.raises(StorageError) as raised:
        storage.read_bytes(f"{base}/anything")
    error = raised.value
    seen = [str(error), repr(error), repr(storage), repr(pickle.loads(pickle.dumps(storage)))]
    seen.append(pickle.dumps(storage).decode("latin-1"))
    seen += [record.getMessage() for record in caplog.records]
    seen.append(caplog.text)
    seen.append("".join(traceback.format_exception(error)))
    assert any("botocore" in record.name for record in caplog.records), "botocore logged nothing at DEBUG"
    assert "403" in str(error) or "Forbidden" in str(error) or "Signature" in str(error) or "Access" in str(error)
    for text in seen:
        assert secret not in text
        assert token not in text
        assert access_key not in text

"""The storage interface on local paths: reads, atomic writes, resumable uploads with a manifest,
verified downloads."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from internvl_trainer.storage import (
    MANIFEST_NAME,
    IntegrityError,
    Manifest,
    ObjectNotFound,
    Storage,
    StorageError,
    UnsafeKeyError,
)
from internvl_trainer.storage import store as store_module


@pytest.fixture
def storage() -> Storage:
    return Storage(threads=2)


def make_tree(root, files: dict[str, bytes]) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


FILES = {
    "model/config.json": b'{"hidden": 64}',
    "model/model.safetensors": os.urandom(300_000),
    "model-original/weights.bin": os.urandom(100_000),
    "tokenizer.json": b"{}",
}


def test_queries_and_reads(storage, tmp_path):
    data = os.urandom(10_000)
    path = tmp_path / "data" / "blob.bin"
    storage.write_bytes(path, data)
    storage.write_bytes(f"file://{tmp_path}/data/sub/x.txt", b"x")
    uri = f"file://{path}"
    assert storage.exists(uri) and storage.exists(path)
    assert not storage.exists(tmp_path / "data")  # a folder is not an object
    assert storage.size(path) == 10_000
    assert storage.read_bytes(uri) == data
    assert storage.read_range(path, 9_990, 100) == data[9_990:]
    assert storage.read_range(path, 20_000, 5) == b""
    with storage.open(path) as stream:
        assert stream.size == 10_000
        stream.seek(5_000)
        assert stream.read(10) == data[5_000:5_010]
    with storage.reader(uri) as stream:
        assert stream.size == 10_000 and stream.read() == data
    listed = list(storage.list(tmp_path / "data"))
    assert [(info.key, info.size) for info in listed] == [("blob.bin", 10_000), ("sub/x.txt", 1)]
    assert list(storage.list(tmp_path / "nothing")) == []
    storage.delete(path)
    storage.delete(path)
    assert not storage.exists(path)
    for call in (storage.size, storage.read_bytes, storage.open, storage.reader):
        with pytest.raises(ObjectNotFound):
            call(path)
    with pytest.raises(ObjectNotFound):
        storage.read_range(path, 0, 1)
    with pytest.raises(ValueError):
        storage.read_range(uri, -1, 1)


def test_write_bytes_is_atomic(storage, tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    storage.write_bytes(path, b"old")

    def broken_fsync(descriptor):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(path, b"new content")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_upload_folder_writes_manifest_last(storage, tmp_path, monkeypatch):
    source = tmp_path / "src"
    make_tree(source, FILES)
    destination = tmp_path / "published"
    order = []
    original = store_module.atomic_copy
    original_write = store_module.atomic_write

    def copy(src, dst):
        order.append(dst.name)
        original(src, dst)

    def write(path, data):
        order.append(path.name)
        original_write(path, data)

    monkeypatch.setattr(store_module, "atomic_copy", copy)
    monkeypatch.setattr(store_module, "atomic_write", write)
    manifest = storage.upload(source, destination, producer={"run": "x"})
    assert order[-1] == MANIFEST_NAME and len(order) == len(FILES) + 1
    written = json.loads((destination / MANIFEST_NAME).read_text())
    assert written["producer"] == {"run": "x"}
    assert written["totalSize"] == sum(map(len, FILES.values()))
    assert {f["path"]: f["sha256"] for f in written["files"]} == {
        path: hashlib.sha256(content).hexdigest() for path, content in FILES.items()
    }
    assert [f["path"] for f in written["files"]] == sorted(FILES)
    assert manifest.files == Manifest.from_json((destination / MANIFEST_NAME).read_bytes()).files
    for relative, content in FILES.items():
        assert (destination / relative).read_bytes() == content

    # Re-running sends nothing and leaves the manifest alone.
    order.clear()
    again = storage.upload(source, destination)
    assert order == []
    assert again.created == manifest.created


def test_interrupted_upload_resumes_and_never_shows_a_stale_manifest(storage, tmp_path, monkeypatch):
    source = tmp_path / "src"
    make_tree(source, FILES)
    destination = tmp_path / "published"
    storage.upload(source, destination)
    old_manifest = (destination / MANIFEST_NAME).read_bytes()

    # A new model replaces two files; the upload dies after the first copy.
    (source / "model" / "model.safetensors").write_bytes(os.urandom(300_001))
    (source / "tokenizer.json").write_bytes(b'{"new": true}')
    original = store_module.atomic_copy
    copied = []

    def dying_copy(src, dst):
        if copied:
            raise OSError("killed")
        copied.append(dst.name)
        original(src, dst)

    monkeypatch.setattr(store_module, "atomic_copy", dying_copy)
    with pytest.raises(OSError, match="killed"):
        storage.upload(source, destination)
    assert not (destination / MANIFEST_NAME).exists(), "a manifest describing old files survived"

    sent = []

    def counting_copy(src, dst):
        sent.append(dst.relative_to(destination).as_posix())
        original(src, dst)

    monkeypatch.setattr(store_module, "atomic_copy", counting_copy)
    manifest = storage.upload(source, destination)
    assert len(sent) == 1 and sent[0] in ("model/model.safetensors", "tokenizer.json")
    assert (destination / MANIFEST_NAME).read_bytes() != old_manifest
    for entry in manifest.files:
        assert hashlib.sha256((destination / entry.path).read_bytes()).hexdigest() == entry.sha256


def test_upload_leaves_out_a_local_manifest(storage, tmp_path, caplog):
    source = tmp_path / "src"
    make_tree(source, {"a.bin": b"a", MANIFEST_NAME: b"{}", "sub/manifest.json": b"{}"})
    manifest = storage.upload(source, tmp_path / "dst")
    assert [entry.path for entry in manifest.files] == ["a.bin", "sub/manifest.json"]
    assert "not uploaded" in caplog.text


def test_upload_single_file(storage, tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights")
    manifest = storage.upload(path, tmp_path / "out" / "renamed.bin")
    assert (tmp_path / "out" / "renamed.bin").read_bytes() == b"weights"
    assert manifest.files[0].path == "renamed.bin"
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def test_upload_of_a_missing_folder(storage, tmp_path):
    with pytest.raises(ObjectNotFound):
        storage.upload(tmp_path / "absent", tmp_path / "dst")


def test_download_verifies_against_the_manifest(storage, tmp_path):
    source = tmp_path / "src"
    make_tree(source, FILES)
    published = tmp_path / "published"
    storage.upload(source, published)
    target = tmp_path / "local"
    manifest = storage.download(published, target)
    for relative, content in FILES.items():
        assert (target / relative).read_bytes() == content
    assert (target / MANIFEST_NAME).read_bytes() == (published / MANIFEST_NAME).read_bytes()
    assert manifest.total_size == sum(map(len, FILES.values()))

    # Tampered: same size, other bytes.
    (published / "tokenizer.json").write_bytes(b"[]")
    with pytest.raises(IntegrityError, match="sha256"):
        storage.download(published, tmp_path / "local2")
    # Truncated.
    (published / "tokenizer.json").write_bytes(b"{")
    with pytest.raises(IntegrityError, match="1 bytes arrived, expected 2"):
        storage.download(published, tmp_path / "local3")
    # Missing.
    (published / "tokenizer.json").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        storage.download(published, tmp_path / "local4")
    for folder in ("local2", "local3", "local4"):
        assert not list((tmp_path / folder).rglob("*.partial"))
        assert not (tmp_path / folder / "tokenizer.json").exists()


def test_download_resumes_keeping_verified_files(storage, tmp_path, monkeypatch):
    source = tmp_path / "src"
    make_tree(source, FILES)
    published = tmp_path / "published"
    storage.upload(source, published)
    target = tmp_path / "local"
    make_tree(target, {"model/config.json": FILES["model/config.json"], "tokenizer.json": b"{{"})
    fetched = []
    original = store_module.atomic_copy

    def counting_copy(src, dst):
        fetched.append(src.relative_to(published).as_posix())
        original(src, dst)

    monkeypatch.setattr(store_module, "atomic_copy", counting_copy)
    storage.download(published, target)
    assert sorted(fetched) == ["model-original/weights.bin", "model/model.safetensors", "tokenizer.json"]
    assert (target / "tokenizer.json").read_bytes() == b"{}"


def test_download_without_manifest_checks_sizes(storage, tmp_path):
    source = tmp_path / "src"
    make_tree(source, {"a.bin": b"aaa", "b/c.bin": b"cc"})
    manifest = storage.download(source, tmp_path / "dst")
    assert [(entry.path, entry.size) for entry in manifest.files] == [("a.bin", 3), ("b/c.bin", 2)]
    assert manifest.files[0].sha256 == hashlib.sha256(b"aaa").hexdigest()
    with pytest.raises(ObjectNotFound, match="nothing to download"):
        storage.download(tmp_path / "empty", tmp_path / "dst2")


def test_download_refuses_a_manifest_that_escapes(storage, tmp_path):
    published = tmp_path / "published"
    published.mkdir()
    evil = {
        "version": 1,
        "created": "2026-01-01T00:00:00Z",
        "files": [{"path": "../outside.bin", "size": 1, "sha256": "0" * 64}],
    }
    (published / MANIFEST_NAME).write_text(json.dumps(evil))
    (tmp_path / "outside.bin").write_bytes(b"x")
    with pytest.raises(StorageError, match=r"not a valid manifest: files\.0\.path: .*escapes the dataset root"):
        storage.download(published, tmp_path / "dst")
    assert (tmp_path / "outside.bin").read_bytes() == b"x"
    assert not (tmp_path / "dst").exists() or not any((tmp_path / "dst").iterdir())


def test_listing_keys_are_checked_on_download(storage, tmp_path, monkeypatch):
    from internvl_trainer.storage.store import ObjectInfo

    def evil_list(uri, page_size=1000):
        yield ObjectInfo(str(tmp_path / "x"), "../../etc/passwd", 10)

    monkeypatch.setattr(storage, "list", evil_list)
    with pytest.raises(UnsafeKeyError):
        storage.download(tmp_path / "src", tmp_path / "dst")


def test_storage_error_for_other_schemes(storage):
    with pytest.raises(StorageError, match="unsupported scheme"):
        storage.exists("gs://bucket/x")

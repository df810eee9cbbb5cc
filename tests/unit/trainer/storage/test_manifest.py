"""manifest.json: round trip and validation."""

from __future__ import annotations

import hashlib
import json

import pytest

from internvl_trainer.storage import FileEntry, Manifest, StorageError, sha256_file

SHA = "a" * 64


def test_round_trip_sorted_with_total():
    manifest = Manifest(
        files=[FileEntry(path="b/2.bin", size=2, sha256=SHA), FileEntry(path="a.bin", size=5, sha256=SHA)],
        producer={"model": {"name": "InternVL3-1B"}},
    )
    data = json.loads(manifest.to_json())
    assert [f["path"] for f in data["files"]] == ["a.bin", "b/2.bin"]
    assert data["totalSize"] == 7
    assert data["version"] == 1
    assert data["created"].endswith("Z")
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert again.by_path()["a.bin"].size == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["files"][0].update(path="../x"), "escapes the dataset root"),
        (lambda d: d["files"][0].update(path="a//b"), "not normalised"),
        (lambda d: d["files"][0].update(sha256="xyz"), "sha256"),
        (lambda d: d["files"][0].update(size=-1), "size"),
        (lambda d: d["files"].append(dict(d["files"][0])), "listed twice"),
        (lambda d: d["files"][0].update(path="manifest.json"), "cannot list itself"),
        (lambda d: d.update(totalSize=99), "not the sum"),
        (lambda d: d.update(extra=1), "extra"),
    ],
)
def test_invalid_manifests_are_refused(change, message):
    data = json.loads(Manifest(files=[FileEntry(path="a.bin", size=1, sha256=SHA)]).to_json())
    change(data)
    with pytest.raises(StorageError, match=message):
        Manifest.from_json(json.dumps(data), source="s3://bkt/m/manifest.json")


def test_not_json_at_all():
    with pytest.raises(StorageError, match="s3://bkt/manifest.json: not a valid manifest"):
        Manifest.from_json(b"<html>", source="s3://bkt/manifest.json")


def test_sha256_file(tmp_path):
    path = tmp_path / "f"
    content = bytes(range(256)) * 40_000
    path.write_bytes(content)
    assert sha256_file(path) == hashlib.sha256(content).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()

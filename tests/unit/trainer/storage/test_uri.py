"""URI parsing and the dataset-root escape checks."""

from __future__ import annotations

import logging
import os
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from internvl_trainer.storage import DatasetRoot, StorageError, UnsafeKeyError, check_key, parse


@pytest.mark.parametrize(
    ("uri", "scheme", "bucket", "key"),
    [
        ("s3://my-bucket/a/b.jpg", "s3", "my-bucket", "a/b.jpg"),
        ("s3://my.bucket", "s3", "my.bucket", ""),
        ("s3://bkt/", "s3", "bkt", ""),
        ("s3://bkt/with space?and#hash", "s3", "bkt", "with space?and#hash"),
        ("file:///data/x.jpg", "file", "", "/data/x.jpg"),
        ("file://localhost/data/x.jpg", "file", "", "/data/x.jpg"),
        ("file:///data/a%20b.jpg", "file", "", "/data/a b.jpg"),
        ("/data/../data/x", "file", "", "/data/x"),
    ],
)
def test_parse(uri, scheme, bucket, key):
    location = parse(uri)
    assert (location.scheme, location.bucket, location.key) == (scheme, bucket, key)


def test_parse_relative_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse("sub/file.txt").key == str(tmp_path / "sub" / "file.txt")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "empty URI"),
        ("s3://", "not a valid bucket name"),
        ("s3://ab/key", "not a valid bucket name"),
        ("s3://UPPER/key", "not a valid bucket name"),
        ("file://otherhost/x", "file:///absolute/path"),
        ("http://example.com/x", "unsupported scheme"),
        ("gs://bucket/x", "unsupported scheme"),
        ("/data/\x00x", "NUL"),
    ],
)
def test_parse_refuses(uri, message):
    with pytest.raises(StorageError, match=message):
        parse(uri)


def test_location_helpers():
    root = parse("s3://bkt/prefix/")
    assert str(root.child("a/b.jpg")) == "s3://bkt/prefix/a/b.jpg"
    assert root.folder_prefix() == "prefix/"
    assert parse("s3://bkt").folder_prefix() == ""
    assert str(parse("s3://bkt").child("x")) == "s3://bkt/x"
    assert parse("s3://bkt/a/b.jpg").name == "b.jpg"
    assert str(parse("/data").child("x/y")) == "/data/x/y"
    with pytest.raises(StorageError):
        _ = parse("s3://bkt/x").path


@pytest.mark.parametrize(
    ("key", "normalised"),
    [
        ("images/a.jpg", "images/a.jpg"),
        ("./images//a.jpg", "images/a.jpg"),
        ("a..b/c...jpg", "a..b/c...jpg"),
        ("100%/done.jpg", "100%/done.jpg"),
        ("frame:01.png", "frame:01.png"),
        ("日本/写真.jpg", "日本/写真.jpg"),
        ("~user/x.jpg", "~user/x.jpg"),
    ],
)
def test_check_key_accepts(key, normalised):
    assert check_key(key) == normalised


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty key"),
        ("..", "'..' segment"),
        ("../x.jpg", "'..' segment"),
        ("a/../../x.jpg", "'..' segment"),
        ("a/..", "'..' segment"),
        ("/etc/passwd", "absolute path"),
        ("//host/share/x", "absolute path"),
        ("%2e%2e/x", "once decoded"),
        ("%252e%252e/x", "once decoded"),
        ("..%2fx", "once decoded"),
        ("%2Fetc/passwd", "once decoded"),
        ("\uff0e\uff0e/x", "'..' segment"),
        ("a\\..\\x", "backslash"),
        ("s3://other-bucket/x", "a URL"),
        ("file:///etc/passwd", "a URL"),
        ("file:/etc/passwd", "a URL"),
        ("http://evil/x", "a URL"),
        ("HTTPS://evil/x", "a URL"),
        ("javascript:alert(1)", "a URL"),
        ("C:/windows/x", "drive-letter"),
        ("a\x00b", "control character"),
        ("a\nb", "control character"),
        (".", "root itself"),
        ("./", "root itself"),
        ("x" * 1025, "longer than 1024"),
    ],
)
def test_check_key_refuses(key, reason):
    with pytest.raises(UnsafeKeyError, match=reason):
        check_key(key)


def test_dataset_root_counts_and_logs_refusals(caplog):
    root = DatasetRoot("s3://bkt/data")
    assert root.uri("img/1.jpg") == "s3://bkt/data/img/1.jpg"
    with caplog.at_level(logging.WARNING, logger="internvl_trainer.storage.uri"):
        for key in ["../x", "/abs", "s3://bkt/other"]:
            with pytest.raises(UnsafeKeyError, match=r"escapes the dataset root.*\(root s3://bkt/data\)"):
                root.resolve(key)
    assert root.refused == 3
    assert len(caplog.records) == 3
    assert "refused=3" in repr(root)


def test_dataset_root_counts_from_many_threads():
    root = DatasetRoot("/data")

    def refuse() -> None:
        for _ in range(200):
            with pytest.raises(UnsafeKeyError):
                root.resolve("../x")

    threads = [threading.Thread(target=refuse) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert root.refused == 800


_segment = st.one_of(
    st.sampled_from(["..", ".", "", "%2e%2e", "%2E.", "\uff0e\uff0e", "a", "b.jpg", "%2f", "~", ":"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6),
)


@given(st.lists(_segment, min_size=1, max_size=6).map("/".join))
def test_an_accepted_key_never_leaves_the_root(key):
    """Whatever the key, what resolves stays below the root, on disk and on S3."""
    local = DatasetRoot("/data/root")
    remote = DatasetRoot("s3://bkt/root")
    try:
        path = local.resolve(key).path
    except UnsafeKeyError:
        assert local.refused == 1
        with pytest.raises(UnsafeKeyError):
            remote.resolve(key)
        return
    assert os.path.normpath(path).startswith("/data/root/")
    s3_key = remote.resolve(key).key
    assert s3_key.startswith("root/")
    assert ".." not in s3_key.split("/")


def test_a_symlink_out_of_a_local_root_is_refused_like_dotdot(tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key.jpg").write_bytes(b"secret")
    root_folder = tmp_path / "data"
    (root_folder / "img").mkdir(parents=True)
    (root_folder / "img" / "ok.jpg").write_bytes(b"image")
    (root_folder / "img" / "leak.jpg").symlink_to(outside / "key.jpg")
    (root_folder / "elsewhere").symlink_to(outside)
    (root_folder / "same.jpg").symlink_to(root_folder / "img" / "ok.jpg")  # a link that stays inside
    linked_root = tmp_path / "linked-data"
    linked_root.symlink_to(root_folder)  # the root may itself be a link
    for root in (DatasetRoot(str(root_folder)), DatasetRoot(str(linked_root))):
        assert root.resolve("img/ok.jpg").path.read_bytes() == b"image"
        assert root.resolve("same.jpg").path.read_bytes() == b"image"
        for key in ("img/leak.jpg", "elsewhere/key.jpg", "elsewhere"):
            with pytest.raises(UnsafeKeyError, match="escapes the dataset root: a symlink leads outside it"):
                root.resolve(key)
        assert root.refused == 3

"""Folder uploads given the hashes of their files (the manifest ``export`` wrote)."""

from __future__ import annotations

import hashlib

import pytest

from internvl_trainer.storage import FileEntry, IntegrityError, Manifest, Storage
from internvl_trainer.storage.upload import upload_tree


@pytest.mark.parametrize(
    ("listed", "named"),
    [
        ({"a.bin": b"a"}, "b.bin"),
        ({"a.bin": b"a", "b.bin": b"bb", "c.bin": b"c"}, "c.bin"),
        ({"a.bin": b"a", "b.bin": b"b"}, "b.bin"),
    ],
    ids=["a file unlisted", "a listed file missing", "a size that differs"],
)
def test_hashes_that_do_not_describe_the_folder_are_refused(tmp_path, listed, named):
    source = tmp_path / "staged"
    source.mkdir()
    (source / "a.bin").write_bytes(b"a")
    (source / "b.bin").write_bytes(b"bb")
    hashed = Manifest(
        files=[
            FileEntry(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())
            for path, data in listed.items()
        ]
    )
    with pytest.raises(IntegrityError, match=rf"staged: {named}: not as the manifest given for the upload lists"):
        upload_tree(Storage(), source, tmp_path / "out", hashed=hashed)
    assert not (tmp_path / "out").exists()

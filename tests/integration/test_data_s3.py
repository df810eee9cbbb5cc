"""InternVL's data formats on a real S3 server: a meta file with relative paths, JSON lines and a
JSON array indexed from S3 once per node, samples read by range or from the node's cache, frame
folders listed, and ``internvl-data validate`` finding the same bad samples as on local disk."""

from __future__ import annotations

import json

import pytest

from internvl_trainer.data.annotations import INDEX_FOLDER, open_annotation, open_annotations
from internvl_trainer.data.dataset_source import DatasetSource
from internvl_trainer.data.meta import load_meta
from internvl_trainer.data.validate import SampleChecker, validate_sources
from internvl_trainer.data_cli import main
from internvl_trainer.storage import Cache
from tests.unit.trainer.data.annotation_data import GOOD, GUIDE, annotation_lines, write_dataset

pytestmark = pytest.mark.integration


@pytest.fixture
def uploaded(storage, base, tmp_path):
    write_dataset(tmp_path / "data")
    for path in sorted((tmp_path / "data").rglob("*")):
        if path.is_file():
            storage.write_bytes(f"{base}/data/{path.relative_to(tmp_path / 'data').as_posix()}", path.read_bytes())
    return f"{base}/data"


def test_annotations_are_indexed_from_s3_and_read_by_range_or_from_the_cache(storage, uploaded, tmp_path):
    meta = load_meta(f"{uploaded}/meta.json", storage)
    assert (meta.root["guide"].root, meta.root["guide"].annotation) == (uploaded, f"{uploaded}/guide.json")
    ranged = open_annotation(f"{uploaded}/mixed.jsonl", storage, tmp_path / "node")
    assert ranged.path is None and len(ranged) == 13
    lines = [line for line in annotation_lines() if line]
    assert [ranged.read(number).decode() for number in range(len(ranged))] == lines
    assert ranged.where(7) == f"{uploaded}/mixed.jsonl:9"
    index = ranged.index.path
    built = index.stat().st_mtime_ns
    cache = Cache(tmp_path / "node", 1 << 30)
    files = open_annotations(meta, storage, cache)
    assert files[0].index.path == index and index.stat().st_mtime_ns == built  # indexed once per node
    assert files[0].path is not None and files[0].path.is_relative_to(tmp_path / "node" / "objects")
    assert [json.loads(files[1].read(number)) for number in range(2)] == GUIDE
    assert len(list((tmp_path / "node" / INDEX_FOLDER).glob("*.idx"))) == 2


def test_validation_on_s3_finds_what_it_finds_on_disk(storage, uploaded, tmp_path, s3_server, capsys):
    meta = load_meta(f"{uploaded}/meta.json", storage)
    files = open_annotations(meta, storage, Cache(tmp_path / "node", 1 << 30))
    sources = [DatasetSource(name, d, f, storage) for (name, d), f in zip(meta.root.items(), files, strict=True)]
    assert sources[0].frame_keys(sources[0].record(4))[:3] == [f"frames/clip/frame_{n}.png" for n in (0, 1, 2)]
    validation = validate_sources(sources, SampleChecker(), workers=4, progress=False)
    assert [dict(check.kinds) for check in validation.datasets] == [
        dict.fromkeys(["image", "text", "multi-image", "video"], 1) | {"frames": 2},
        {"image": 1, "text": 1},
    ]
    assert validation.bad.summary()["byKind"] == {
        "conversation": 2,
        "image": 1,
        "json": 1,
        "missing": 1,
        "path": 1,
        "placeholder": 1,
    }
    assert validation.datasets[0].kinds["image"] == sum(kind == "image" for kind, _ in GOOD)
    code = main(
        ["validate", f"{uploaded}/meta.json", "--s3-endpoint", s3_server.endpoint, "--cache-dir", str(tmp_path / "cli")]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[0] == f"{uploaded}/meta.json: 2 dataset(s), 15 samples, 7 bad"
    assert out[1].startswith(f"  mixed: 13 samples in {uploaded}/mixed.jsonl; frames 2, image 1")

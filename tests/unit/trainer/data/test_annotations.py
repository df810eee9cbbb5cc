"""Annotation files read sample by sample through their shared index: JSON lines and JSON arrays,
file:line of each sample, forked and pickled readers, and files that cannot be used."""

from __future__ import annotations

import json
import multiprocessing
import pickle

import pytest

from internvl_trainer.data.annotations import INDEX_FOLDER, open_annotation, open_annotations
from internvl_trainer.data.meta import parse_meta
from internvl_trainer.problems import BadInput
from internvl_trainer.storage import Cache, Storage, StorageError
from tests.unit.trainer.data.annotation_data import GUIDE


def test_json_lines_and_json_arrays_read_alike(tmp_path):
    lines = tmp_path / "guide.jsonl"
    lines.write_text("\n".join(json.dumps(record) for record in GUIDE) + "\n")
    array = tmp_path / "guide.json"
    array.write_text(json.dumps(GUIDE, indent=2))
    from_lines = open_annotation(str(lines), Storage(), tmp_path / "cache")
    from_array = open_annotation(str(array), Storage(), tmp_path / "cache")
    assert (from_lines.format, from_array.format) == ("jsonl", "json")
    assert [json.loads(from_lines.read(n)) for n in range(2)] == [json.loads(from_array.read(n)) for n in range(2)]
    assert [from_lines.where(n) for n in range(2)] == [f"{lines}:1", f"{lines}:2"]
    assert [from_array.where(n) for n in range(2)] == [f"{array}:2", f"{array}:19"]
    assert len(list((tmp_path / "cache" / INDEX_FOLDER).glob("*.idx"))) == 2


def _read_in_child(annotations, queue) -> None:
    queue.put(json.loads(annotations.read(1))["conversations"][0]["value"])


def test_readers_cross_processes(tmp_path):
    path = tmp_path / "guide.json"
    path.write_text(json.dumps(GUIDE))
    annotations = open_annotation(str(path), Storage(), tmp_path / "cache")
    assert json.loads(annotations.read(0))["image"] == "images/b.png"  # opens the file in this process
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(annotations, queue))
    child.start()
    child.join()
    assert queue.get(timeout=5) == "What is shown in the picture?"
    again = pickle.loads(pickle.dumps(annotations))
    assert again.read(1) == annotations.read(1) and again.where(1) == annotations.where(1)


def test_files_that_cannot_be_used_are_bad_input(tmp_path):
    (tmp_path / "broken.json").write_text('[{"a": 1},\n{"b": ')
    meta = parse_meta(
        json.dumps(
            {
                "gone": {"root": str(tmp_path), "annotation": str(tmp_path / "gone.jsonl")},
                "broken": {"root": str(tmp_path), "annotation": str(tmp_path / "broken.json")},
            }
        ),
        "meta.json",
    )
    with pytest.raises(BadInput) as caught:
        open_annotations(meta, Storage(), Cache(tmp_path / "cache", 1 << 20))
    assert [str(problem) for problem in caught.value.problems] == [
        f"gone.annotation: cannot read {tmp_path}/gone.jsonl: {tmp_path}/gone.jsonl: no such file",
        f"broken.annotation: {tmp_path}/broken.json:2: the JSON array is not closed",
    ]
    with pytest.raises(StorageError):
        open_annotation(str(tmp_path / "gone.jsonl"), Storage(), tmp_path / "cache")

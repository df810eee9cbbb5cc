"""InternVL's meta file and the InternVL3 guide's variant: keys, defaults, relative paths, and the
repeat times and weights the sampler gets from it."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from internvl_trainer.data.annotations import dataset_specs
from internvl_trainer.data.meta import MetaFile, load_meta, parse_meta
from internvl_trainer.data.sampling import MixtureSampler
from internvl_trainer.problems import BadInput
from internvl_trainer.storage import Storage

INTERNVL = {
    "charts": {
        "root": "s3://datasets/charts/images",
        "annotation": "s3://datasets/charts/train.jsonl",
        "data_augment": True,
        "repeat_time": 0.25,
        "length": 1200,
        "max_dynamic_patch": 6,
    }
}


def parsed(document: dict) -> MetaFile:
    return parse_meta(json.dumps(document), "meta.json")


def test_internvl_keys_and_defaults():
    charts = parsed(INTERNVL).root["charts"]
    assert (charts.root, charts.annotation, charts.data_augment) == (
        "s3://datasets/charts/images",
        "s3://datasets/charts/train.jsonl",
        True,
    )
    assert (charts.repeat_time, charts.length, charts.max_dynamic_patch, charts.weight) == (0.25, 1200, 6, 1.0)
    plain = parsed({"docs": {"root": "/data", "annotation": "/data/a.jsonl"}}).root["docs"]
    assert (plain.data_augment, plain.repeat_time, plain.weight, plain.max_dynamic_patch) == (False, 1.0, 1.0, None)


def test_the_guide_variant_names_the_same_things():
    guide = parsed({"mine": {"image_folder": "images", "train": "train.json", "repeat_time": 1.5, "weight": 3}})
    mine = guide.root["mine"]
    assert (mine.root, mine.annotation, mine.repeat_time, mine.weight) == ("images", "train.json", 1.5, 3.0)


def test_root_defaults_to_the_annotation_folder():
    assert parsed({"a": {"annotation": "s3://b/sets/a/train.jsonl"}}).root["a"].root == "s3://b/sets/a"
    assert parsed({"a": {"train": "train.json"}}).root["a"].root == "."


@pytest.mark.parametrize(
    ("dataset", "problem"),
    [
        ({"root": "/a", "image_folder": "/b", "annotation": "/a/t.jsonl"}, "give 'root' or 'image_folder'"),
        ({"root": "/a", "annotation": "/a/t.jsonl", "train": "/a/u.jsonl"}, "give 'annotation' or 'train'"),
        ({"root": "/a", "annotation": "/a/t.jsonl", "repeat_time": 0}, "greater than 0"),
        ({"root": "/a", "annotation": "/a/t.jsonl", "weight": -1}, "greater than 0"),
        ({"root": "/a", "annotation": "/a/t.csv"}, "should match pattern"),
    ],
)
def test_wrong_datasets_are_refused(dataset, problem):
    with pytest.raises(BadInput) as caught:
        parsed({"d": dataset})
    assert problem in str(caught.value)


def test_relative_paths_are_relative_to_the_meta_file(tmp_path):
    folder = tmp_path / "sets"
    folder.mkdir()
    (folder / "meta.json").write_text(
        json.dumps(
            {
                "a": {"image_folder": "images", "train": "a/train.json"},
                "b": {"root": "/data/b", "annotation": "../b.jsonl"},
                "c": {"annotation": "c/train.jsonl"},
            }
        )
    )
    meta = load_meta(str(folder / "meta.json"), Storage())
    assert {name: (d.root, d.annotation) for name, d in meta.root.items()} == {
        "a": (f"{folder}/images", f"{folder}/a/train.json"),
        "b": ("/data/b", f"{tmp_path}/b.jsonl"),
        "c": (f"{folder}/c", f"{folder}/c/train.jsonl"),
    }


class _FakeStorage:
    def __init__(self, files: dict[str, bytes]):
        self.files = files

    def read_bytes(self, uri: str) -> bytes:
        return self.files[uri]


def test_relative_paths_on_s3():
    text = json.dumps({"a": {"image_folder": "img", "train": "train.json"}}).encode()
    meta = load_meta("s3://bucket/sets/meta.json", _FakeStorage({"s3://bucket/sets/meta.json": text}))
    assert (meta.root["a"].root, meta.root["a"].annotation) == ("s3://bucket/sets/img", "s3://bucket/sets/train.json")
    top = load_meta("s3://bucket/meta.json", _FakeStorage({"s3://bucket/meta.json": text}))
    assert top.root["a"].annotation == "s3://bucket/train.json"


def test_an_unreadable_meta_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput) as caught:
        load_meta(str(tmp_path / "nope.json"), Storage())
    assert str(caught.value).startswith(f"{tmp_path / 'nope.json'}: cannot read the meta file")


def test_repeat_times_subsample_at_random_and_weights_reach_the_sampler():
    meta = parsed(
        {
            "half": {"root": "/a", "annotation": "/a/t.jsonl", "repeat_time": 0.5},
            "more": {"root": "/b", "annotation": "/b/t.jsonl", "repeat_time": 1.5, "weight": 2},
        }
    )
    specs = dataset_specs(meta, [20, 10])
    assert [(s.name, s.size, s.repeat_time, s.weight, s.per_epoch) for s in specs] == [
        ("half", 20, 0.5, 1.0, 10),
        ("more", 10, 1.5, 2.0, 15),
    ]
    sampler = MixtureSampler(specs, seed=3, epochs=1)
    drawn = Counter((ref.dataset, ref.index) for ref in sampler.shard(0, 1))
    half = sorted(index for dataset, index in drawn if dataset == 0)
    assert len(half) == 10 and half != list(range(10))  # a random subset, not the first lines
    assert all(drawn[(0, index)] == 1 for index in half)
    more = Counter({index: drawn[(1, index)] for index in range(10)})
    assert sorted(more.values()) == [1] * 5 + [2] * 5  # every sample once, half of them twice
    again = Counter((ref.dataset, ref.index) for ref in MixtureSampler(specs, seed=3, epochs=1).shard(0, 1))
    assert again == drawn

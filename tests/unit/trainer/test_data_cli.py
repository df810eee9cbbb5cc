"""``internvl-data validate``: a meta file's datasets, or every problem with its place."""

import json

from internvl_trainer.data_cli import main

META = {
    "charts": {
        "root": "s3://datasets/charts/images",
        "annotation": "s3://datasets/charts/train.jsonl",
        "data_augment": False,
        "repeat_time": 0.5,
        "length": 1200,
    },
    "docvqa": {
        "root": "/data/docvqa",
        "annotation": "/data/docvqa/train.jsonl",
        "repeat_time": 2,
        "max_dynamic_patch": 12,
    },
}


def test_a_valid_meta_file_lists_its_datasets(tmp_path, capsys):
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(META))
    assert main(["validate", str(meta)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{meta}: valid, 2 dataset(s)",
        "  charts: s3://datasets/charts/train.jsonl (images under s3://datasets/charts/images, repeat 0.5)",
        "  docvqa: /data/docvqa/train.jsonl (images under /data/docvqa, repeat 2)",
    ]


def test_every_wrong_field_is_named(tmp_path, capsys):
    meta = tmp_path / "meta.json"
    bad = {"charts": {**META["charts"], "repeat_time": 0, "annotation": "train.csv", "weight_decay": 1}}
    meta.write_text(json.dumps(bad))
    assert main(["validate", "--output", "json", str(meta)]) == 2
    assert [p["path"] for p in json.loads(capsys.readouterr().out)["problems"]] == [
        "charts.annotation",
        "charts.repeat_time",
        "charts.weight_decay",
    ]


def test_broken_json_names_line_and_column(tmp_path, capsys):
    meta = tmp_path / "meta.json"
    meta.write_text('{\n  "charts": {"root": "/data",}\n}\n')
    assert main(["validate", str(meta)]) == 2
    assert capsys.readouterr().err.startswith(f"{meta}:2:30: invalid JSON")


def test_an_empty_meta_file_is_refused(tmp_path, capsys):
    meta = tmp_path / "meta.json"
    meta.write_text("{}")
    assert main(["validate", str(meta)]) == 2
    assert "at least 1 item" in capsys.readouterr().err


def test_a_missing_file_is_named(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.json")]) == 2
    assert capsys.readouterr().err == f"{tmp_path / 'nope.json'}: No such file or directory\n"


def test_a_yaml_meta_file_is_read_as_yaml(tmp_path, capsys):
    meta = tmp_path / "meta.yaml"
    meta.write_text("charts:\n  root: /data/charts\n  annotation: /data/charts/train.jsonl\n  repeat_time: 3\n")
    assert main(["validate", str(meta)]) == 0
    assert "charts: /data/charts/train.jsonl (images under /data/charts, repeat 3)" in capsys.readouterr().out

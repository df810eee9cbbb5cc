"""``internvl-train validate``: exit codes, problem lines and JSON output."""

import json

import yaml

from internvl_trainer.cli import main
from tests.conftest import EXAMPLES, load_example

TRAIN_YAML = str(EXAMPLES / "train.yaml")


def test_valid_config_prints_what_the_run_uses(capsys):
    assert main(["validate", "--config", TRAIN_YAML]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{TRAIN_YAML}: valid"
    assert "  batch        8 = 1 per device x 8 accumulation x 1 processes" in out.splitlines()
    assert "  model out    /tmp/internvl-out/laptop/model" in out.splitlines()


def test_json_output_has_the_resolved_layout(capsys):
    assert main(["validate", "--config", TRAIN_YAML, "--output", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is True
    assert report["layout"]["manifest"] == "/tmp/internvl-out/laptop/manifest.json"
    assert report["config"]["training"]["globalBatchSize"] == 8


def test_problems_are_field_path_lines_and_exit_2(tmp_path, capsys):
    config = load_example("train.yaml")
    config["batch"]["worldSize"] = 2
    config["data"]["video"] = {"sampling": "every-frame"}
    source = tmp_path / "train.yaml"
    source.write_text(yaml.safe_dump(config))
    assert main(["validate", "--config", str(source)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "data.video.sampling: must be rand, middle or fpsN (such as fps1 or fps0.5), got 'every-frame'",
    ]


def test_json_problems(tmp_path, capsys):
    source = tmp_path / "train.yaml"
    source.write_text("kind: TrainConfig\n")
    assert main(["validate", "--config", str(source), "--output", "json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    assert {"path": "model", "message": "required field is missing"} in report["problems"]


def test_two_documents_are_refused(tmp_path, capsys):
    source = tmp_path / "train.yaml"
    source.write_text("a: 1\n---\nb: 2\n")
    assert main(["validate", "--config", str(source)]) == 2
    assert capsys.readouterr().err == f"{source}: expected one YAML document, found 2\n"

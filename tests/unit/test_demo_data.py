"""The demo's dataset: every sample kind, readable media, and a meta file that validates."""

import json

import decord
from PIL import Image

from examples.demo_data import write_dataset
from internvl_trainer.data_cli import main as data_main


def test_the_dataset_has_every_kind_and_readable_media(tmp_path, capsys):
    counts = write_dataset(tmp_path, "s3://demo/datasets/shapes")
    assert counts == {"image": 12, "multi-image": 3, "video": 1, "text": 1}
    lines = [json.loads(line) for line in (tmp_path / "shapes.jsonl").read_text().splitlines()]
    assert len(lines) == sum(counts.values())
    assert lines[0] == {
        "image": "images/red-circle.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is drawn?"},
            {"from": "gpt", "value": "A red circle."},
        ],
    }
    for line in lines:
        for image in [line["image"]] if isinstance(line.get("image"), str) else line.get("image", []):
            assert Image.open(tmp_path / image).size == (224, 224)
        if isinstance(line.get("image"), list):
            assert line["conversations"][0]["value"].count("<image>") == len(line["image"])
    video = decord.VideoReader(str(tmp_path / "videos" / "green-square.mp4"))
    assert len(video) == 12
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["shapes"]["annotation"] == "s3://demo/datasets/shapes/shapes.jsonl"
    assert data_main(["validate", "--meta-only", str(tmp_path / "meta.json")]) == 0  # the data goes to S3 later

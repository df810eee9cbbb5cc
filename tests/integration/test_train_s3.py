"""The whole training path on a real S3 server: the base model, the meta file, the annotations and
the images are read from S3; checkpoints, metrics, TensorBoard files, the data report, the merged
model in both layouts and the root manifest are written to S3; a restart resumes from S3;
``internvl-train plot`` redraws the run's curves from S3; and ``internvl-train evaluate`` scores
the published model from S3 on the S3 data."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch
from PIL import Image

from internvl_trainer.cli import main
from internvl_trainer.config import dump_train_config
from internvl_trainer.model.load import load
from internvl_trainer.storage import Manifest
from internvl_trainer.train import checkpoints, curves
from internvl_trainer.train.run import run
from tests.unit.trainer.train.runs import records, train_config, write_data, write_model

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]


def test_lora_run_from_s3_to_s3(s3_server, storage, base, tmp_path, capsys):
    storage.upload(write_model(tmp_path / "model"), f"{base}/base-model")
    write_data(tmp_path / "data")
    for path in sorted((tmp_path / "data").rglob("*.png")):
        storage.write_bytes(f"{base}/data/images/{path.name}", path.read_bytes())
    storage.write_bytes(f"{base}/data/train.jsonl", "".join(json.dumps(record) + "\n" for record in records()).encode())
    meta = {"pictures": {"root": f"{base}/data", "annotation": f"{base}/data/train.jsonl", "repeat_time": 1}}
    storage.write_bytes(f"{base}/data/meta.json", json.dumps(meta).encode())

    def config(steps: int):
        return train_config(
            f"{base}/base-model",
            f"{base}/data/meta.json",
            f"{base}/out",
            method="lora",
            learning_rate=5e-3,
            steps=steps,
            save_steps=2,
            training={"checkpointsKept": 1},
            storage=s3_server.storage_config().model_dump(),
            output={"layouts": ["hf", "original"]},
        )

    first = run(config(4), environ={}, scratch=tmp_path / "scratch")
    assert first.steps == 4 and first.model_uri == f"{base}/out/model"
    layout = config(4).layout
    assert [(c.step, c.complete) for c in checkpoints.find(storage, layout)] == [(4, True)]  # 2 was pruned
    # The adapters name their base by its S3 URI, not by the node's cached copy.
    adapter = json.loads(storage.read_bytes(f"{layout.checkpoints}/checkpoint-4/adapter_config.json"))
    assert adapter["base_model_name_or_path"] == f"{base}/base-model"

    # The root manifest: every file of model/ and model-original/, sizes and sha256 as stored.
    manifest = Manifest.from_json(storage.read_bytes(f"{base}/out/manifest.json"))
    assert manifest.producer == config(4).to_wire()
    stored = {
        f"{folder}/{info.key}": info.size
        for folder in ("model", "model-original")
        for info in storage.list(f"{base}/out/{folder}")
        if info.key != "manifest.json"
    }
    assert {entry.path: entry.size for entry in manifest.files} == stored
    assert {"model/config.json", "model-original/config.json", "model/tokenizer.json"} <= set(stored)
    for entry in manifest.files:
        assert hashlib.sha256(storage.read_bytes(f"{base}/out/{entry.path}")).hexdigest() == entry.sha256

    for name in ("metrics.jsonl", "data-report.json", "validation.jsonl"):
        assert storage.exists(f"{layout.run}/{name}"), name
    assert len(list(storage.list(layout.tensorboard))) == 1
    metrics = [json.loads(line) for line in storage.read_bytes(layout.metrics).decode().splitlines()]
    assert [record["step"] for record in metrics] == [1, 2, 3, 4]

    # Both published layouts load from S3 and give the same logits.
    hf = load(f"{base}/out/model", storage=storage, cache_dir=tmp_path / "cache")
    original = load(f"{base}/out/model-original", storage=storage, cache_dir=tmp_path / "cache")
    assert original.layout == "original"
    ids = torch.tensor([[3, 4, 20, 21, 22]])
    with torch.no_grad():
        assert torch.allclose(hf.model(input_ids=ids).logits, original.model(input_ids=ids).logits, atol=1e-5)

    # A longer run of the same uid resumes from the S3 checkpoint of step 4.
    second = run(config(6), environ={}, scratch=tmp_path / "scratch-2")
    assert (second.resumed_from, second.steps) == (4, 6)
    assert [(c.step, c.complete) for c in checkpoints.find(storage, layout)] == [(6, True)]
    metrics = [json.loads(line) for line in storage.read_bytes(layout.metrics).decode().splitlines()]
    assert [record["step"] for record in metrics] == [1, 2, 3, 4, 5, 6]

    # The curves of the whole run are in runs/<uid>/plots/; internvl-train plot redraws them from S3.
    published = storage.read_bytes(f"{layout.plots}/{curves.CURVES_PNG}")
    with Image.open(io.BytesIO(published)) as image:
        assert image.size == (1200, 900) and image.text["Metrics"] == curves.digest(metrics)
    capsys.readouterr()
    assert main(["plot", layout.run, "--s3-endpoint", s3_server.endpoint, "--output", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / curves.CURVES_PNG).read_bytes() == published
    assert main(["plot", f"{base}/out/runs/absent", "--s3-endpoint", s3_server.endpoint]) == 2
    assert f"{base}/out/runs/absent/metrics.jsonl: not found" in capsys.readouterr().err

    # internvl-train evaluate, model and data both on S3.
    config_file = tmp_path / "train.yaml"
    config_file.write_text(dump_train_config(config(6)))
    predictions = tmp_path / "predictions.jsonl"
    capsys.readouterr()  # the runs' progress
    code = main(
        [
            "evaluate",
            "--model",
            f"{base}/out/model",
            "--data",
            f"{base}/data/meta.json",
            "--config",
            str(config_file),
            "--output",
            str(predictions),
            "--format",
            "json",
            "--max-new-tokens",
            "12",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert summary["samples"] == len(lines) == 8 and summary["skipped"] == 0
    assert {line["reference"] for line in lines} == {record["conversations"][1]["value"] for record in records()}
    assert all(0.0 <= line["tokenF1"] <= 1.0 and line["loss"] > 0 for line in lines)

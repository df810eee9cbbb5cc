"""Experiment tracking on a tiny LoRA run: a real MLflow server (loopback, SQLite backend) read
back through MLflow's client, and Weights & Biases in offline mode read back from the files it
writes. Both must hold the run's name, train.yaml's values, the per-step losses of metrics.jsonl
and the published model's URIs."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from internvl_trainer.train.run import run
from tests.unit.trainer.train.runs import train_config, write_data, write_model

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]


def tiny_lora_run(folder: Path, tracking: dict, attempt: str = "2"):
    """Four LoRA steps on 8 samples, a quarter held out and evaluated every second step."""
    config = train_config(
        str(write_model(folder / "model")),
        str(write_data(folder / "data")),
        str(folder / "out"),
        method="lora",
        learning_rate=5e-3,
        steps=4,
        data={"evalSplit": 0.25},
        training={"evalSteps": 2},
        tracking=tracking,
    )
    result = run(config, environ={"INTERNVL_ATTEMPT": attempt}, scratch=folder / "scratch")
    lines = (folder / "out/runs/uid-1/metrics.jsonl").read_text().splitlines()
    return result, [json.loads(line) for line in lines]


def series(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(record["step"], record[key]) for record in records if key in record]


def test_mlflow_run_holds_the_name_parameters_losses_and_model(mlflow_server, tmp_path):
    tracking = {"mlflow": {"trackingUri": mlflow_server, "experiment": "tiny-lora"}}
    result, metrics = tiny_lora_run(tmp_path, tracking)

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tiny-lora")
    [tracked] = client.search_runs([experiment.experiment_id], filter_string="tags.`internvl.uid` = 'uid-1'")
    assert tracked.info.run_name == "tiny-attempt-2" and tracked.info.status == "FINISHED"
    params = tracked.data.params
    assert params["method.type"] == "lora" and params["method.lora.rank"] == "8"
    assert params["training.learningRate"] == "0.005" and params["training.maxSteps"] == "4"
    assert params["batch.perDeviceBatchSize"] == "4" and params["output.layouts"] == '["hf"]'
    assert params["tracking.mlflow.experiment"] == "tiny-lora"

    assert len(series(metrics, "loss")) == 4 and len(series(metrics, "evalLoss")) == 2
    for metric, key in (("loss", "loss"), ("eval_loss", "evalLoss"), ("learning_rate", "learningRate")):
        history = client.get_metric_history(tracked.info.run_id, metric)
        assert sorted((point.step, point.value) for point in history) == series(metrics, key), metric

    tags = tracked.data.tags
    assert tags["internvl.modelUri"] == result.model_uri == str(tmp_path / "out/model")
    assert tags["internvl.manifestUri"] == result.manifest_uri
    assert tags["internvl.attempt"] == "2"
    assert client.list_artifacts(tracked.info.run_id) == []  # URIs only, nothing copied


def test_mlflow_copies_the_model_when_asked(mlflow_server, tmp_path):
    tracking = {"mlflow": {"trackingUri": mlflow_server, "experiment": "tiny-artifacts", "logArtifacts": True}}
    tiny_lora_run(tmp_path, tracking)

    client = MlflowClient(mlflow_server)
    [tracked] = client.search_runs([client.get_experiment_by_name("tiny-artifacts").experiment_id])
    assert {artifact.path for artifact in client.list_artifacts(tracked.info.run_id)} == {"manifest.json", "model"}
    model = {artifact.path for artifact in client.list_artifacts(tracked.info.run_id, "model")}
    assert {"model/config.json", "model/model.safetensors", "model/manifest.json"} <= model
    folder = client.download_artifacts(tracked.info.run_id, "manifest.json", str(tmp_path / "fetched"))
    assert Path(folder).read_bytes() == (tmp_path / "out/manifest.json").read_bytes()


# ---------------------------------------------------------------------------------------------
# Weights & Biases, offline


def leveldb_records(path: Path) -> Iterator[bytes]:
    """The records of a W&B transaction log (``run-<id>.wandb``): a 7-byte header (":W&B", magic,
    version), then LevelDB's log format: 32 KiB blocks of chunks (CRC-32, length, type: full,
    first, middle, last), a block's tail shorter than a chunk header padded."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:
            position += block - position % block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        if (checksum, length, kind) == (0, 0, 0):
            break
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum
        position += 7 + length
        pending += chunk
        if kind in (1, 4):  # full or last
            yield pending
            pending = b""


def wandb_records(path: Path) -> list:
    """The protocol-buffer records of a W&B transaction log."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for data in leveldb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        records.append(record)
    return records


def history_rows(records: list) -> list[dict]:
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for record in records
        if record.WhichOneof("record_type") == "history"
    ]


def updates(records: list, kind: str) -> dict:
    """The run's config or summary: the run record's, then every update of that kind, in order."""
    values: dict = {}
    for record in records:
        sources = {"run": getattr(record.run, kind, None), kind: getattr(record, kind, None)}
        source = sources.get(record.WhichOneof("record_type"))
        for item in source.update if source is not None else ():
            values[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return values


def test_wandb_offline_run_holds_the_name_config_losses_and_model(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    tracking = {"wandb": {"project": "tiny-lora", "entity": "vision-team"}}
    result, metrics = tiny_lora_run(tmp_path, tracking)

    [folder] = (tmp_path / "wandb/wandb").glob("offline-run-*")
    [log] = folder.glob("run-*.wandb")
    records = wandb_records(log)
    started = next(record.run for record in records if record.WhichOneof("record_type") == "run")
    assert (started.display_name, started.run_group, started.job_type) == ("tiny-attempt-2", "uid-1", "train")
    assert (started.project, started.entity) == ("tiny-lora", "vision-team")
    rows = history_rows(records)
    assert len(series(metrics, "loss")) == 4 and len(series(metrics, "evalLoss")) == 2
    for metric, key in (("train/loss", "loss"), ("eval/loss", "evalLoss"), ("train/learning_rate", "learningRate")):
        logged = [(row["train/global_step"], row[metric]) for row in rows if metric in row]
        assert logged == series(metrics, key), metric

    config = updates(records, "config")
    assert config["training"]["learningRate"] == 0.005 and config["method"]["type"] == "lora"
    assert config["run"] == {"name": "tiny", "uid": "uid-1", "resume": "latest"}
    assert config["tracking"] == tracking
    summary = updates(records, "summary")
    assert summary["modelUri"] == result.model_uri and summary["manifestUri"] == result.manifest_uri

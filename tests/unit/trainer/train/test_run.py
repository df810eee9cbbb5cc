"""Whole runs on a tiny model, on CPU: memorising 8 image-text samples, the published outputs, the
held-out loss, bad samples, and the command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from internvl_trainer.cli import main
from internvl_trainer.config import dump_train_config
from internvl_trainer.model.load import load
from internvl_trainer.problems import BadInput
from internvl_trainer.storage import Manifest, sha256_file
from internvl_trainer.train import curves
from internvl_trainer.train.metrics import read_records
from internvl_trainer.train.run import run
from tests.unit.trainer.train.runs import ANSWERS, train_config, write_data


def metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "runs/uid-1/metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    ("method", "learning_rate", "final_loss"), [("full", 2e-3, 1e-3), ("lora", 5e-3, 3e-2)], ids=["full", "lora"]
)
def test_memorising_eight_samples(
    tmp_path, tiny_model_dir, pictures, method, learning_rate, final_loss, monkeypatch, caplog
):
    monkeypatch.setenv("INTERNVL_LOG_FORMAT", "json")  # no progress bar, terminal or not
    caplog.set_level(logging.INFO, logger="internvl_trainer.train.trainer")
    output = tmp_path / "out"
    config = train_config(
        str(tiny_model_dir),
        str(pictures),
        str(output),
        method=method,
        learning_rate=learning_rate,
        steps=40,
        save_steps=20,
        training={"checkpointsKept": 1},
    )
    result = run(config, environ={}, scratch=tmp_path / "scratch")

    assert result.steps == 40 and result.resumed_from is None
    losses = [record["loss"] for record in metrics(output)]
    assert len(losses) == 40
    # measured: full 11.09 -> 0.00058, LoRA 11.09 -> 0.0129 (the first steps are pinned in test_pinned_losses)
    assert losses[-1] < final_loss, losses
    assert all(record["epoch"] == record["step"] for record in metrics(output))  # 8 samples a step, 8 an epoch
    # Each logged step is one log line in place of the Trainer's progress bar and printed dicts.
    logged = [message.split(": loss ")[0] for message in caplog.messages if ": loss " in message]
    assert logged == [f"step {step} of 40" for step in range(1, 41)]

    # The published model answers training questions word for word.
    assert result.validation["samples"] == 4 and result.validation["exactMatch"] == 1.0
    lines = [json.loads(line) for line in (output / "runs/uid-1/validation.jsonl").read_text().splitlines()]
    assert [line["prediction"] for line in lines] == [line["reference"] for line in lines]
    assert {line["reference"] for line in lines} <= set(ANSWERS)

    # Only the newest checkpoint is kept; LoRA checkpoints hold the adapters and the projector only.
    checkpoints = output / "runs/uid-1/checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint-40"]
    files = {path.name for path in (checkpoints / "checkpoint-40").iterdir()}
    assert {"manifest.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", "data-state-rank0.json"} <= files
    if method == "lora":
        assert "model.safetensors" not in files
        with safe_open(checkpoints / "checkpoint-40/adapter_model.safetensors", "pt") as adapter:
            keys = list(adapter.keys())
        assert any("lora_A" in key for key in keys) and any("multi_modal_projector" in key for key in keys)
        assert not any("vision_tower" in key or "embed_tokens" in key for key in keys)
    else:
        assert "model.safetensors" in files

    # The root manifest lists every file of model/ with its size and sha256, and the producing config.
    manifest = Manifest.from_json((output / "manifest.json").read_text())
    assert manifest.producer == config.to_wire()
    published = {path.relative_to(output).as_posix() for path in (output / "model").rglob("*") if path.is_file()}
    assert {entry.path for entry in manifest.files} == published - {"model/manifest.json"}
    for entry in manifest.files:
        assert sha256_file(output / entry.path) == entry.sha256
    assert load(output / "model").model.config.text_config.use_cache is True

    # TensorBoard: one record per logged step after the file version, CRCs checked.
    (events,) = (output / "runs/uid-1/tensorboard").iterdir()
    assert len(list(read_records(events))) == 41


def test_held_out_loss_bad_samples_and_the_data_report(tmp_path, tiny_model_dir):
    meta = write_data(tmp_path / "data", bad_lines=2)
    output = tmp_path / "out"
    config = train_config(
        str(tiny_model_dir),
        str(meta),
        str(output),
        steps=6,
        save_steps=3,
        per_device=2,
        accumulation=2,
        data={"evalSplit": 0.2},
        training={"evalSteps": 3},
    )
    result = run(config, environ={}, scratch=tmp_path / "scratch")

    evaluated = [record for record in metrics(output) if "evalLoss" in record]
    assert [record["step"] for record in evaluated] == [3, 6]
    # recorded from the code on CPU in float32 (see test_pinned_losses)
    assert [record["evalLoss"] for record in evaluated] == pytest.approx(
        [5.072421603732639, 3.7325528462727866], rel=1e-4
    )
    assert result.eval_loss == evaluated[-1]["evalLoss"]
    report = json.loads((output / "runs/uid-1/data-report.json").read_text())
    assert report["datasets"]["pictures"] == {
        "annotation": str(tmp_path / "data/train.jsonl"),
        "format": "jsonl",
        "samples": 10,
        "heldOut": 2,
        "repeatTime": 1.0,
        "weight": 1.0,
    }
    # Both broken lines (lines 9 and 10) were met, in training or in the held-out split, and reported once.
    bad = report["badSamples"]
    assert bad["skipped"] == 2 and bad["byKind"] == {"json": 2}
    where = {example.split(": ")[0] for example in bad["examples"]["json"]}
    assert where == {f"{tmp_path / 'data/train.jsonl'}:9", f"{tmp_path / 'data/train.jsonl'}:10"}
    assert all("invalid JSON" in example for example in bad["examples"]["json"])
    lines = [json.loads(line) for line in (output / "runs/uid-1/validation.jsonl").read_text().splitlines()]
    assert lines and all(line["heldOut"] for line in lines)

    # The curves, drawn from the final metrics.jsonl into the run folder and published beside it;
    # internvl-train plot redraws them, titled from the train.yaml the newest checkpoint records.
    published = output / "runs/uid-1/plots" / curves.CURVES_PNG
    assert published.read_bytes() == (tmp_path / "scratch/runs/uid-1/plots" / curves.CURVES_PNG).read_bytes()
    with Image.open(published) as image:
        assert image.size == (1200, 900)
        assert image.text == {
            "Title": "tiny · InternVL3-1B (full)",
            "Panels": "loss,learning rate,gradient norm",
            "Metrics": curves.digest(metrics(output)),
        }
    assert main(["plot", str(output / "runs/uid-1"), "--output", str(tmp_path / "redrawn")]) == 0
    assert (tmp_path / "redrawn" / curves.CURVES_PNG).read_bytes() == published.read_bytes()


def test_strict_mode_stops_at_the_first_bad_sample(tmp_path, tiny_model_dir):
    meta = write_data(tmp_path / "data", count=1, bad_lines=7)
    config = train_config(
        str(tiny_model_dir),
        str(meta),
        str(tmp_path / "out"),
        steps=2,
        per_device=1,
        accumulation=1,
        data={"strict": True},
    )
    with pytest.raises(BadInput) as error:
        run(config, environ={}, scratch=tmp_path / "scratch")
    assert f"{tmp_path / 'data/train.jsonl'}:" in str(error.value) and "invalid JSON" in str(error.value)


def test_the_command_line_runs_and_refuses_a_wrong_world(tmp_path, tiny_model_dir, pictures, capsys, monkeypatch):
    monkeypatch.setenv("INTERNVL_SCRATCH", str(tmp_path / "scratch"))
    config = train_config(str(tiny_model_dir), str(pictures), str(tmp_path / "out"), steps=2, save_steps=1)
    path = tmp_path / "train.yaml"
    path.write_text(dump_train_config(config))
    assert main(["run", "--config", str(path)]) == 0
    assert f"manifest {tmp_path / 'out/manifest.json'}" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out/runs/uid-1/checkpoints").iterdir()) == [
        "checkpoint-1",
        "checkpoint-2",
    ]

    wrong = config.model_copy(
        update={"batch": config.batch.model_copy(update={"per_device_batch_size": 2, "world_size": 2})}
    )
    path.write_text(dump_train_config(wrong))
    assert main(["run", "--config", str(path)]) == 2
    assert "batch.worldSize: train.yaml was planned for 2 processes" in capsys.readouterr().err


def test_accumulating_two_micro_batches_is_the_whole_batch(tmp_path, tiny_model_dir, pictures):
    """The loss of a step is normalised over every micro-batch of the step (``sample`` reduction,
    where a per-micro-batch mean would weigh samples differently): 4 x 2 accumulated trains like 8 x 1."""
    results = {}
    for per_device, accumulation in ((4, 2), (8, 1)):
        output = tmp_path / f"out-{per_device}"
        config = train_config(
            str(tiny_model_dir),
            str(pictures),
            str(output),
            steps=3,
            per_device=per_device,
            accumulation=accumulation,
            training={"lossReduction": "sample"},
        )
        run(config, environ={}, scratch=tmp_path / f"scratch-{per_device}")
        with safe_open(output / "model/model.safetensors", "pt") as weights:
            results[per_device] = (
                [record["loss"] for record in metrics(output)],
                {k: weights.get_tensor(k) for k in weights.keys()},
            )
    (accumulated_losses, accumulated), (whole_losses, whole) = results[4], results[8]
    assert accumulated_losses == pytest.approx(whole_losses, rel=1e-5)
    for key in whole:
        # measured: at most 5.3e-6 after 3 steps of lr 2e-3 (Adam magnifies summation-order noise)
        assert torch.allclose(accumulated[key], whole[key], atol=2e-5), key

"""Exact resume: a run killed with SIGKILL after the checkpoint of step 4 and restarted with
``resume: latest`` starts at step 5, runs only the 8 remaining steps on exactly the samples the
uninterrupted run used for them, and ends with bit-identical weights; restarted without its
optimizer state, it ends elsewhere.

LoRA with dropout and a projector trained in full: the adapters, the optimizer, the scheduler,
the global RNG (dropout) and the data position all have to come back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from internvl_trainer.config import dump_train_config
from internvl_trainer.storage import Manifest
from tests.conftest import REPO
from tests.unit.trainer.train.recorded_run import record
from tests.unit.trainer.train.runs import train_config

STEPS, SAVE_EVERY, KILLED_AFTER = 12, 4, 6


def config_file(tmp_path: Path, name: str, model: Path, meta: Path) -> Path:
    config = train_config(
        str(model),
        str(meta),
        str(tmp_path / name),
        method="lora",
        learning_rate=5e-3,
        steps=STEPS,
        save_steps=SAVE_EVERY,
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump_train_config(config))
    return path


def steps(path: Path) -> list[dict]:
    return [step for step in map(json.loads, path.read_text().splitlines()) if "step" in step]


def weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "model/model.safetensors")


def test_a_killed_run_resumes_exactly(tmp_path, tiny_model_dir, pictures):
    whole = config_file(tmp_path, "whole", tiny_model_dir, pictures)
    record(str(whole), str(tmp_path / "scratch-whole"), str(tmp_path / "whole.jsonl"))

    killed = config_file(tmp_path, "killed", tiny_model_dir, pictures)
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.unit.trainer.train.recorded_run",
            str(killed),
            str(tmp_path / "scratch-killed"),
            str(tmp_path / "before.jsonl"),
            str(KILLED_AFTER),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    checkpoints = tmp_path / "killed/runs/uid-1/checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint-4"]
    assert not (tmp_path / "killed/manifest.json").exists()
    shutil.copytree(tmp_path / "killed", tmp_path / "control")  # the same wreck, for the control below

    record(str(killed), str(tmp_path / "scratch-killed"), str(tmp_path / "after.jsonl"))

    uninterrupted, before, after = (steps(tmp_path / name) for name in ("whole.jsonl", "before.jsonl", "after.jsonl"))
    assert [step["step"] for step in before] == [1, 2, 3, 4, 5, 6]
    assert [step["step"] for step in after] == list(range(5, STEPS + 1))  # starts at k + 1, only the rest
    assert [step["samples"] for step in after] == [step["samples"] for step in uninterrupted[4:]]
    assert [step["samples"] for step in before[:4]] == [step["samples"] for step in uninterrupted[:4]]
    assert all(len(step["samples"]) == 8 for step in after)

    expected, resumed = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key  # bit-identical, no tolerance needed on CPU
    losses = [line["loss"] for line in map(json.loads, (tmp_path / "killed/runs/uid-1/metrics.jsonl").open())]
    whole_losses = [line["loss"] for line in map(json.loads, (tmp_path / "whole/runs/uid-1/metrics.jsonl").open())]
    assert losses == whole_losses  # steps 5 and 6 of the killed attempt are not left in metrics.jsonl

    # Control: the same restart without the optimizer state (the Trainer then builds a fresh optimizer;
    # the schedule is constant here, and the weights, the RNG and the data position are restored).
    control_checkpoint = tmp_path / "control/runs/uid-1/checkpoints/checkpoint-4"
    (control_checkpoint / "optimizer.pt").unlink()
    manifest = Manifest.from_json((control_checkpoint / "manifest.json").read_text())
    kept = [entry for entry in manifest.files if entry.path != "optimizer.pt"]
    (control_checkpoint / "manifest.json").write_bytes(Manifest(files=kept, producer=manifest.producer).to_json())
    control = config_file(tmp_path, "control", tiny_model_dir, pictures)
    record(str(control), str(tmp_path / "scratch-control"), str(tmp_path / "control.jsonl"))
    assert [step["samples"] for step in steps(tmp_path / "control.jsonl")] == [step["samples"] for step in after]
    different = weights(tmp_path / "control")
    largest = max((different[key] - expected[key]).abs().max().item() for key in expected)
    assert largest > 1e-3, largest


def test_a_run_killed_while_publishing_logs_its_held_out_loss_once(tmp_path, tiny_model_dir, pictures, monkeypatch):
    """The final held-out loss is logged after the last checkpoint; the attempt that died publishing
    uploaded it, and the next attempt, resumed from that checkpoint, evaluates and logs it again."""
    from internvl_trainer.train import publish
    from internvl_trainer.train.run import run

    config = train_config(
        str(tiny_model_dir), str(pictures), str(tmp_path / "out"), steps=2, save_steps=2, data={"evalSplit": 0.25}
    )

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while publishing")

    with monkeypatch.context() as patch:
        patch.setattr(publish, "publish", killed)
        try:
            run(config, environ={}, scratch=tmp_path / "scratch-1")
        except KeyboardInterrupt:
            pass
    metrics = tmp_path / "out/runs/uid-1/metrics.jsonl"
    assert ["evalLoss" in line for line in map(json.loads, metrics.open())] == [False, False, True]
    result = run(config, environ={}, scratch=tmp_path / "scratch-2")
    assert result.resumed_from == 2 and result.manifest_uri is not None
    records = [json.loads(line) for line in metrics.open()]
    assert [(record["step"], "evalLoss" in record) for record in records] == [(1, False), (2, False), (2, True)]
    assert records[-1]["evalLoss"] == result.eval_loss

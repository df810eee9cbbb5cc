"""DeepSpeed on CPU, one process: ZeRO-1 and ZeRO-3 with CPU offload (the operator's own configs)
train the tiny model, checkpoint and publish, with AdamW (DeepSpeedCPUAdam under offload) over
the decay and no-decay groups.

Both follow the plain run's losses: the trainer hands accelerate torch's AdamW, which it swaps for
DeepSpeedCPUAdam in AdamW mode under offload. (Handed a DeepSpeedCPUAdam, accelerate rebuilds it as
Adam with L2 decay: the trajectory then departs from the plain run's at the second step.)

Each run is a process of its own (DeepSpeed initialises torch.distributed and accelerate's global
state). The first run on a machine JIT-compiles DeepSpeed's shared-memory and CPU Adam ops into
``TORCH_EXTENSIONS_DIR`` (the Makefile keeps it in .cache/torch_extensions), about two minutes;
later runs load them from there."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from internvl_operator.deepspeed import deepspeed_config
from internvl_trainer.config import dump_train_config
from internvl_trainer.model.load import load
from internvl_trainer.train.run import run
from tests.conftest import REPO
from tests.unit.trainer.train.runs import train_config

STEPS = 4
DECAY = {"weightDecay": 0.05}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def plain_losses(tmp_path_factory, tiny_model_dir, pictures) -> list[float]:
    """The same run without DeepSpeed."""
    tmp_path = tmp_path_factory.mktemp("plain")
    config = train_config(
        str(tiny_model_dir), str(pictures), str(tmp_path / "out"), steps=STEPS, save_steps=2, training=DECAY
    )
    run(config, environ={}, scratch=tmp_path / "scratch")
    return [json.loads(line)["loss"] for line in (tmp_path / "out/runs/uid-1/metrics.jsonl").open()]


@pytest.mark.parametrize(
    ("variant", "optimizer"),
    [("zero_stage1_config", "AdamW"), ("zero_stage3_config_100b_1e7_offload", "DeepSpeedCPUAdam")],
    ids=["zero1", "zero3-offload"],
)
def test_deepspeed_trains_on_cpu(tmp_path, tiny_model_dir, pictures, plain_losses, variant, optimizer):
    config = train_config(
        str(tiny_model_dir), str(pictures), str(tmp_path / "out"), steps=STEPS, save_steps=2, training=DECAY
    )
    config = config.model_copy(update={"deepspeed": deepspeed_config(variant)})
    path = tmp_path / "train.yaml"
    path.write_text(dump_train_config(config))
    environment = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    environment.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache/torch_extensions"))
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.unit.trainer.train.recorded_run",
            str(path),
            str(tmp_path / "scratch"),
            str(tmp_path / "steps.jsonl"),
        ],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr[-4000:]

    started, *steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").open()]
    assert started == {"optimizer": optimizer, "decoupledDecay": True, "weightDecay": [0.05, 0.0]}
    assert [step["step"] for step in steps] == list(range(1, STEPS + 1))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "out/runs/uid-1/metrics.jsonl").open()]
    assert losses == pytest.approx(plain_losses, rel=1e-4)

    output = tmp_path / "out"
    assert sorted(p.name for p in (output / "runs/uid-1/checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    shards = list((output / "runs/uid-1/checkpoints/checkpoint-4").glob("global_step4/*optim_states.pt"))
    assert len(shards) == 1  # DeepSpeed's own optimizer shard went up with the checkpoint
    assert (output / "manifest.json").is_file()
    assert load(output / "model").model.config.text_config.hidden_size == 64

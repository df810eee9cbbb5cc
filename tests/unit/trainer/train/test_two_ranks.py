"""Two processes under torchrun on CPU (gloo), as a pod with two GPUs runs the trainer: the global
batch split over two ranks trains, evaluates the held-out split and resumes from a checkpoint
exactly as one process taking the whole batch, with DDP and with ZeRO-3 + CPU offload, whose
weights are partitioned while every rank loads them together."""

from __future__ import annotations

import json

import pytest

from internvl_operator.deepspeed import deepspeed_config
from internvl_trainer.train.run import run
from tests.unit.trainer.train.runs import run_two_ranks, train_config, write_data

STEPS = 6
GLOBAL_BATCH = 8


def losses(output) -> list[tuple[str, float]]:
    """Training and held-out losses in the order they were logged."""
    records = [json.loads(line) for line in (output / "runs/uid-1/metrics.jsonl").open()]
    return [(key, record[key]) for record in records for key in ("loss", "evalLoss") if key in record]


def config_for(model, meta, output, *, world: int, deepspeed: str | None = None, steps: int = STEPS):
    config = train_config(
        str(model),
        str(meta),
        str(output),
        steps=steps,
        per_device=GLOBAL_BATCH // 2 // world,
        accumulation=2,
        save_steps=2,
        training={"weightDecay": 0.05, "globalBatchSize": GLOBAL_BATCH, "evalSteps": 2},
        data={"evalSplit": 0.25},
        batch={"worldSize": world},
    )
    if deepspeed is not None:
        config = config.model_copy(update={"deepspeed": deepspeed_config(deepspeed)})
    return config


@pytest.fixture(scope="module")
def sixteen(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("sixteen"), count=16)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir, sixteen) -> list[tuple[str, float]]:
    tmp_path = tmp_path_factory.mktemp("one")
    run(config_for(tiny_model_dir, sixteen, tmp_path / "out", world=1), environ={}, scratch=tmp_path / "scratch")
    return losses(tmp_path / "out")


@pytest.mark.parametrize("deepspeed", [None, "zero_stage3_config_100b_1e7_offload"], ids=["ddp", "zero3-offload"])
def test_two_ranks_train_and_resume_as_one_process(tmp_path, tiny_model_dir, sixteen, one_process, deepspeed):
    """Four steps, then the next attempt of the same run resumes from step 4's checkpoint to step 6."""
    for attempt, steps in enumerate((4, STEPS)):
        config = config_for(tiny_model_dir, sixteen, tmp_path / "out", world=2, deepspeed=deepspeed, steps=steps)
        process = run_two_ranks(config, tmp_path, str(attempt))  # each attempt is a new pod
        assert process.returncode == 0, process.stderr[-4000:]
        if attempt:
            assert "resuming from " in process.stderr, process.stderr[-4000:]
            assert "missing keys" not in process.stderr, process.stderr[-4000:]
    two = losses(tmp_path / "out")
    assert [key for key, _ in two] == [key for key, _ in one_process] and "evalLoss" in dict(two)
    assert [value for _, value in two] == pytest.approx([value for _, value in one_process], rel=1e-5)
    checkpoint = tmp_path / f"out/runs/uid-1/checkpoints/checkpoint-{STEPS}"
    assert sorted(path.name for path in checkpoint.glob("data-state-rank*.json")) == [
        "data-state-rank0.json",
        "data-state-rank1.json",
    ]
    assert (tmp_path / "out/manifest.json").is_file()

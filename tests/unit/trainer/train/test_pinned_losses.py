"""The exact per-step losses of short tiny runs, full and LoRA, packed and unpacked, as torchtune's
recipe tests pin theirs. The other training tests compare runs with each other, which a change that
moves every run together (a label mask, the chat template, the loss's normaliser, the optimizer's
groups) passes; these fail on it. The numbers were recorded from the code on CPU in float32 with one
thread; a deliberate change of the training's numbers records them again and says why."""

from __future__ import annotations

import json

import pytest

from internvl_trainer.train.run import run
from tests.unit.trainer.train.runs import train_config

RECORDED_LOSSES = {
    ("full", False): [11.091501235961914, 7.526062965393066, 5.267363548278809, 3.3952603340148926],
    ("lora", False): [11.091501235961914, 8.859415054321289, 6.90570068359375, 5.42173957824707],
    ("full", True): [11.074286460876465, 7.606475830078125, 5.121512413024902, 3.447828769683838],
    ("lora", True): [11.074286460876465, 8.824012756347656, 6.89364767074585, 5.41254997253418],
}
LEARNING_RATES = {"full": 2e-3, "lora": 5e-3}


@pytest.mark.parametrize(
    ("method", "packing"),
    list(RECORDED_LOSSES),
    ids=[f"{m}-{'packed' if p else 'unpacked'}" for m, p in RECORDED_LOSSES],
)
def test_per_step_losses_are_the_recorded_ones(tmp_path, tiny_model_dir, pictures, method, packing):
    output = tmp_path / "out"
    config = train_config(
        str(tiny_model_dir),
        str(pictures),
        str(output),
        method=method,
        learning_rate=LEARNING_RATES[method],
        steps=4,
        data={"packing": packing},
    )
    run(config, environ={}, scratch=tmp_path / "scratch")

    lines = (output / "runs/uid-1/metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines]
    assert losses == pytest.approx(RECORDED_LOSSES[method, packing], rel=1e-4)

"""A training run in its own process that records the sample ids of every optimizer step and can
be killed with SIGKILL right after a chosen step, as a node failure would kill it.

    python -m tests.unit.trainer.train.recorded_run CONFIG SCRATCH SAMPLES_JSONL [KILL_AFTER_STEP]
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from internvl_trainer.cli import read_config
from internvl_trainer.train.run import run
from internvl_trainer.train.trainer import TrainerAware


class Recorder(TrainerAware):
    """Appends the optimizer's class and groups' weight decay at the start, ``{"step", "samples"}``
    after every optimizer step; kills the process after
    ``kill_after`` (the uploads of a checkpoint at that step are done by then)."""

    def __init__(self, path: Path, kill_after: int | None = None):
        self.path = path
        self.kill_after = kill_after

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        inner = self.trainer.optimizer
        while hasattr(inner, "optimizer"):  # accelerate's and DeepSpeed's wrappers
            inner = inner.optimizer
        with open(self.path, "a") as handle:
            handle.write(
                json.dumps(
                    {
                        "optimizer": type(inner).__name__,
                        "decoupledDecay": getattr(inner, "adam_w_mode", isinstance(inner, torch.optim.AdamW)),
                        "weightDecay": [group["weight_decay"] for group in inner.param_groups],
                    }
                )
                + "\n"
            )

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        samples = [sample for rows in self.trainer.step_samples for row in rows for sample in row]
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": state.global_step, "samples": samples}) + "\n")
        if self.kill_after is not None and state.global_step == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


def record(config_path: str, scratch: str, samples: str, kill_after: int | None = None) -> None:
    torch.set_num_threads(1)
    config = read_config(config_path)
    run(config, scratch=Path(scratch), callbacks=[Recorder(Path(samples), kill_after)])


if __name__ == "__main__":
    arguments = sys.argv[1:]
    record(*arguments[:3], int(arguments[3]) if len(arguments) > 3 else None)

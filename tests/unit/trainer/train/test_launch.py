"""Exit codes through the launchers a pod really runs. A PyTorchJob's pod runs the operator's
rendered command (``internvl-train launch``, torchrun inside) under the ``PET_*`` variables the
training operator sets, here with two CPU processes; an MPIJob's launcher runs mpirun (where it is
installed). A process that refuses its input makes the pod exit 2 with the problem as its last
line and no traceback; any other failure exits 1 naming the rank and why."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from internvl_operator.render.context import TRAIN_CONFIG_PATH
from internvl_operator.render.pytorchjob import trainer_command
from internvl_trainer.cli import main
from internvl_trainer.config import dump_train_config
from internvl_trainer.storage.local_server import free_port
from internvl_trainer.train.launch import Outcome, outcome
from tests.conftest import REPO
from tests.unit.trainer.train.runs import train_config

WRONG_WORLD = "batch.worldSize: train.yaml was planned for 1 processes, but the torchrun launcher started 2"


def write_config(tmp_path: Path, model: Path, meta: Path, *, world: int) -> Path:
    config = train_config(
        str(model),
        str(meta),
        str(tmp_path / "out"),
        steps=2,
        per_device=1,
        accumulation=2,
        training={"globalBatchSize": 2 * world},
        batch={"worldSize": world},
    )
    path = tmp_path / "train.yaml"
    path.write_text(dump_train_config(config))
    return path


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The pod's environment as far as the launch goes: the training operator's PET_* variables
    for one node of two processes, the image's PATH."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "INTERNVL_SCRATCH": str(tmp_path / "scratch"),
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "2",
        "PET_NODE_RANK": "0",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(free_port()),
        **extra,
    }


def pod(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The PyTorchJob container's command, its train.yaml path pointed at ``config``."""
    command = [str(config) if part == TRAIN_CONFIG_PATH else part for part in trainer_command()]
    return subprocess.run(command, cwd=config.parent, env=env, capture_output=True, text=True, timeout=300)


def test_a_refused_input_exits_2_through_torchrun(tmp_path, tiny_model_dir, pictures):
    process = pod(write_config(tmp_path, tiny_model_dir, pictures, world=1), environment(tmp_path))
    assert process.returncode == 2, process.stderr[-3000:]
    assert process.stderr.splitlines()[-1] == WRONG_WORLD
    assert "Traceback" not in process.stderr


def test_any_other_failure_exits_1_naming_the_rank(tmp_path, tiny_model_dir, pictures):
    (tmp_path / "scratch").write_text("a file where the scratch folder should be")
    process = pod(write_config(tmp_path, tiny_model_dir, pictures, world=2), environment(tmp_path))
    assert process.returncode == 1, process.stderr[-3000:]
    assert re.fullmatch(
        r"error: rank [01] exited with 1: NotADirectoryError: \[Errno 20\] Not a directory: '.*/scratch/.*'",
        process.stderr.splitlines()[-1],
    )


def test_a_train_yaml_with_problems_is_refused_before_any_process_starts(tmp_path, capsys):
    (tmp_path / "train.yaml").write_text("apiVersion: internvl.dev/v1alpha1\nkind: TrainConfig\n")
    assert main(["launch", "--config", str(tmp_path / "train.yaml")]) == 2
    problems = capsys.readouterr().err.splitlines()
    assert "model: required field is missing" in problems
    assert all(line.endswith(": required field is missing") for line in problems)  # nothing from torchrun


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="OpenMPI is not installed")
def test_a_refused_input_exits_2_through_mpirun(tmp_path, tiny_model_dir, pictures):
    """OpenMPI's mpirun returns the exit code of the first process it sees fail."""
    config = write_config(tmp_path, tiny_model_dir, pictures, world=1)
    env = environment(tmp_path, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    command = ["mpirun", "-np", "2", "--oversubscribe", "-x", "PATH", "-x", "PYTHONPATH", "-x", "INTERNVL_SCRATCH"]
    command += ["internvl-train", "run", "--config", str(config)]
    process = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 2, process.stderr[-3000:]
    assert WRONG_WORLD.replace("torchrun", "mpi") in process.stderr


def failure(tmp_path: Path, rank: int, exitcode: int, message: str | None = None) -> ProcessFailure:
    error_file = tmp_path / f"error-{rank}.json"
    if message is not None:
        error_file.write_text(json.dumps({"message": message, "timestamp": int(time.time())}))
    return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode, error_file=str(error_file))


def test_any_refusal_decides_over_the_processes_stopped_after_it(tmp_path):
    failures = {0: failure(tmp_path, 0, -15), 1: failure(tmp_path, 1, 2, "data.meta: no such file\n")}
    assert outcome(failures) == Outcome(2, "data.meta: no such file\n")


def test_other_failures_name_the_rank_and_why(tmp_path):
    assert outcome({3: failure(tmp_path, 3, 1, "RuntimeError: boom")}) == Outcome(
        1, "error: rank 3 exited with 1: RuntimeError: boom"
    )
    assert outcome({0: failure(tmp_path, 0, 1)}) == Outcome(
        1, "error: rank 0 exited with 1: it left no reason; its log above says why"
    )
    assert outcome({1: failure(tmp_path, 1, -9)}) == Outcome(1, "error: rank 1 was killed by SIGKILL")

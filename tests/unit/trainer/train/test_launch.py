"""Exit codes through the launchers a pod really runs. A PyTorchJob's pod runs the operator's
rendered command (``internvl-train launch``, torchrun inside) under the ``PET_*`` variables the
training operator sets, here with two CPU processes, and a TrainJob's ``node`` pod runs the same
under the ``PET_*`` variables of Trainer's torch plugin; an MPIJob's launcher runs mpirun (where
it is installed). A process that refuses its input makes the pod exit 2 with the problem as its last
line and no traceback; any other failure exits 1 naming the rank and why."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import certifi
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


class TrainerStatusServer(BaseHTTPRequestHandler):
    """Kubeflow Trainer's status server: records each POSTed body with its bearer token on the
    server's ``received``."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.received.append((self.headers["Authorization"], body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_):
        pass


def trainjob_node_environment(tmp_path: Path, status_url: str) -> dict[str, str]:
    """What a TrainJob's ``node`` container gets on node 0 of one: the trainer's env from the
    TrainJob, the torch plugin's PET_* variables (PET_MASTER_ADDR names node 0's pod, here this
    host; the port is a free one rather than 29500 so that tests may run side by side) and, with
    the TrainJobStatus feature on, the status server's address, CA and token; no other rendezvous
    variable."""
    inherited = environment(tmp_path, PET_MASTER_ADDR=socket.gethostname())
    rendezvous = ("MASTER_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_", "OMPI_", "KUBEFLOW_")
    env = {
        name: value for name, value in inherited.items() if name.startswith("PET_") or not name.startswith(rendezvous)
    }
    (tmp_path / "token").write_text("projected-token\n")
    return env | {
        "KUBEFLOW_TRAINER_SERVER_URL": status_url,
        "KUBEFLOW_TRAINER_SERVER_CA_CERT": certifi.where(),
        "KUBEFLOW_TRAINER_SERVER_TOKEN": str(tmp_path / "token"),
    }


def test_a_trainjob_node_pod_trains_and_reports_its_progress(tmp_path, tiny_model_dir, pictures):
    """The TrainJob's pod runs the same command as the PyTorchJob's, torchrun reading the torch
    plugin's PET_* variables; transformers' Kubeflow callback sends rank 0's progress to Trainer's
    status server (status.trainerStatus of the TrainJob) with the projected token."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), TrainerStatusServer)
    server.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = (
        f"http://127.0.0.1:{server.server_port}/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs/ft-a1/status"
    )
    try:
        process = pod(
            write_config(tmp_path, tiny_model_dir, pictures, world=2), trainjob_node_environment(tmp_path, url)
        )
    finally:
        server.shutdown()
    assert process.returncode == 0, process.stderr[-3000:]
    assert (tmp_path / "out/manifest.json").is_file()
    tokens = {token for token, _ in server.received}
    assert tokens == {"Bearer projected-token"}
    first, last = (body["trainerStatus"] for _, body in (server.received[0], server.received[-1]))
    assert (first["progressPercentage"], first["metrics"]) == (0, [{"name": "total_steps", "value": "2"}])
    assert (last["progressPercentage"], last["estimatedRemainingSeconds"]) == (100, 0)
    assert {"loss", "train_loss"} <= {metric["name"] for metric in last["metrics"]}
    assert "lastUpdatedTime" in last

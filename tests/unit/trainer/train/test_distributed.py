"""The process environment under torchrun, OpenMPI and alone, and the planned world."""

import pytest

from internvl_trainer.config import load_train_config
from internvl_trainer.problems import BadInput
from internvl_trainer.train.distributed import ProcessEnvironment, check_world, detect, export_for_torch
from tests.conftest import EXAMPLES


def test_torchrun():
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "29500"}
    assert detect(env) == ProcessEnvironment("torchrun", 3, 1, 8, "job-master-0", 29500)


def test_openmpi_with_the_launchers_forwarded_master():
    env = {
        "OMPI_COMM_WORLD_RANK": "9",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_SIZE": "16",
        "MASTER_ADDR": "job-a1-worker-0.job-a1",
        "MASTER_PORT": "29500",
    }
    environment = detect(env)
    assert environment == ProcessEnvironment("mpi", 9, 1, 16, "job-a1-worker-0.job-a1", 29500)
    exported: dict[str, str] = {}
    export_for_torch(environment, exported)
    assert exported == {
        "RANK": "9",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "16",
        "MASTER_ADDR": "job-a1-worker-0.job-a1",
        "MASTER_PORT": "29500",
    }


def test_a_single_process_is_the_main_one():
    environment = detect({})
    assert (environment.launcher, environment.world_size, environment.is_main) == ("single", 1, True)


def test_a_malformed_variable_is_named():
    with pytest.raises(BadInput, match="WORLD_SIZE: must be an integer, got 'eight'"):
        detect({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "eight"})


def test_the_world_must_be_the_planned_one():
    config = load_train_config((EXAMPLES / "train.yaml").read_text())
    check_world(detect({}), config)
    with pytest.raises(BadInput) as error:
        check_world(detect({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}), config)
    assert str(error.value.problems[0]) == (
        "batch.worldSize: train.yaml was planned for 1 processes, but the torchrun launcher started 2"
    )

"""The experiment trackers' credentials in the rendered children: in the trainer's environment by
reference to their Secrets only, forwarded by mpirun by name, valid against the real schemas under
every launcher."""

import copy

import pytest

from internvl_operator.api import is_reserved_env_name
from internvl_operator.render import render
from tests.unit.operator.render.conftest import context_for, plan_for, schema_errors

TRACKING = {
    "mlflow": {"trackingUri": "https://mlflow.ml:5000", "experiment": "internvl", "credentialsSecret": "mlflow"},
    "wandb": {"project": "vlm", "entity": "vision-team", "apiKeySecret": "wandb"},
}


def children_of(cr: dict, launcher: str, tracking: dict = TRACKING) -> list[dict]:
    cr = copy.deepcopy(cr)
    cr["spec"]["launcher"] = launcher
    cr["spec"]["tracking"] = tracking
    return render(context_for(cr, plan_for(nodes=2)))


def trainer_envs(job: dict) -> list[list[dict]]:
    """The env of every container that runs the trainer (an MPIJob's launcher runs mpirun)."""
    if job["kind"] == "TrainJob":
        return [job["spec"]["trainer"]["env"]]
    replicas = job["spec"].get("pytorchReplicaSpecs") or job["spec"]["mpiReplicaSpecs"]
    return [
        container["env"] for replica in replicas.values() for container in replica["template"]["spec"]["containers"]
    ]


def secret_ref(secret: str, key: str, optional: bool) -> dict:
    return {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}


@pytest.mark.parametrize("launcher", ["pytorchjob", "mpijob", "trainjob"])
def test_the_trackers_credentials_come_from_their_secrets(lora_cr, launcher):
    children = children_of(lora_cr, launcher)
    *_, job = children
    envs = trainer_envs(job)
    assert envs
    for env in envs:
        assert [variable for variable in env if variable["name"].startswith(("MLFLOW_", "WANDB_"))] == [
            secret_ref("mlflow", "MLFLOW_TRACKING_USERNAME", True),
            secret_ref("mlflow", "MLFLOW_TRACKING_PASSWORD", True),
            secret_ref("mlflow", "MLFLOW_TRACKING_TOKEN", True),
            secret_ref("wandb", "WANDB_API_KEY", False),
        ]
        assert all(is_reserved_env_name(variable["name"]) for variable in env)
    if launcher == "mpijob":
        command = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["command"]
        forwarded = [arg for flag, arg in zip(command, command[1:], strict=False) if flag == "-x"]
        assert {"MLFLOW_TRACKING_TOKEN", "WANDB_API_KEY"} <= set(forwarded)
    for child in children:
        assert schema_errors(child) == [], child["kind"]


def test_no_tracker_no_variables(lora_cr):
    cr = copy.deepcopy(lora_cr)
    cr["spec"]["launcher"] = "pytorchjob"
    *_, job = render(context_for(cr, plan_for(nodes=1)))
    [env] = trainer_envs(job)
    assert not [variable for variable in env if variable["name"].startswith(("MLFLOW_", "WANDB_"))]


def test_mlflow_without_a_secret_sets_no_credentials(lora_cr):
    tracking = {"mlflow": {"trackingUri": "http://mlflow.ml:5000", "experiment": "internvl"}}
    *_, job = children_of(lora_cr, "pytorchjob", tracking)
    for env in trainer_envs(job):
        assert not [variable for variable in env if variable["name"].startswith("MLFLOW_")]

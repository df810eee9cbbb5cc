"""The PyTorchJob (kubeflow.org/v1) of an attempt: one Master and a Worker per further node, each
running torchrun over the node's GPUs through the trainer's launcher (docs/contract.md §2)."""

from __future__ import annotations

from typing import Any

from internvl_operator.render.context import TRAIN_CONFIG_PATH, RenderContext
from internvl_operator.render.pod import (
    COMPONENT,
    container,
    gpu_resources,
    job_metadata,
    pod_template,
    run_policy,
    trainer_env,
)

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
# The training operator passes only containers with this name the rendezvous settings.
CONTAINER_NAME = "pytorch"
PORT_NAME = "pytorchjob-port"


def trainer_command() -> list[str]:
    """``internvl-train launch`` runs torchrun, which reads nodes, node rank, processes per node
    and the master's address from the PET_* variables the training operator sets and starts one
    trainer per GPU. Plain torchrun would exit 1 whatever its processes exited with; the launcher
    exits 2 when one refused its input, so the operator does not retry bad input."""
    return ["internvl-train", "launch", "--config", TRAIN_CONFIG_PATH]


def replica(context: RenderContext, replicas: int) -> dict[str, Any]:
    trainer = container(
        context,
        CONTAINER_NAME,
        command=trainer_command(),
        resources=gpu_resources(context),
        env=[{"name": "LAUNCHER", "value": "pytorch"}, *trainer_env(context)],
        ports=[{"name": PORT_NAME, "containerPort": context.settings.master_port}],
    )
    # Never restart in place: the job fails, and the operator resumes a new attempt from the
    # latest checkpoint with every process restarted together.
    return {"replicas": replicas, "restartPolicy": "Never", "template": pod_template(context, [trainer], COMPONENT)}


def pytorchjob(context: RenderContext) -> dict[str, Any]:
    nodes = context.plan.nodes
    replica_specs = {"Master": replica(context, 1)}
    if nodes > 1:
        replica_specs["Worker"] = replica(context, nodes - 1)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": job_metadata(context),
        "spec": {
            "nprocPerNode": str(context.plan.gpus_per_node),
            "pytorchReplicaSpecs": replica_specs,
            "runPolicy": run_policy(context),
        },
    }

"""The MPIJob (kubeflow.org/v2beta1) of an attempt: a small launcher pod runs mpirun, which
starts one trainer per GPU on the worker pods over SSH (docs/contract.md §2)."""

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

API_VERSION = "kubeflow.org/v2beta1"
KIND = "MPIJob"
HOSTFILE = "/etc/mpi/hostfile"


def rendezvous(context: RenderContext) -> dict[str, str]:
    """What the operator sets for torch.distributed's rendezvous: the first worker's address and
    the installation's port."""
    job = context.job_name
    return {"MASTER_ADDR": f"{job}-worker-0.{job}", "MASTER_PORT": str(context.settings.master_port)}


def launcher_command(context: RenderContext, env: list[dict[str, Any]]) -> list[str]:
    """mpirun with one slot per GPU. Processes started over SSH do not see the worker pod's
    environment, so mpirun forwards the launcher's variables by name (``-x NAME``: values such
    as credentials never appear on the command line).

    The rendezvous variables are the operator's, whatever ``env`` holds: a variable of the same
    name is not forwarded, and the operator's ``-x NAME=VALUE`` come last, since OpenMPI applies
    repeated ``-x`` in order, each overwriting the one before."""
    operator_values = rendezvous(context)
    command = [
        "mpirun",
        "--hostfile",
        HOSTFILE,
        "-np",
        str(context.plan.gpus),
        "--npernode",
        str(context.plan.gpus_per_node),
        "--bind-to",
        "none",
    ]
    for variable in env:
        if variable["name"] not in operator_values:
            command += ["-x", variable["name"]]
    for name, value in operator_values.items():
        command += ["-x", f"{name}={value}"]
    return [*command, "internvl-train", "run", "--config", TRAIN_CONFIG_PATH]


def mpijob(context: RenderContext) -> dict[str, Any]:
    env = trainer_env(context)
    settings = context.settings
    launcher = container(
        context,
        "launcher",
        command=launcher_command(context, env),
        resources={"requests": {"cpu": settings.launcher_cpu, "memory": settings.launcher_memory}},
        env=env,
        mounts=[],
    )
    # Workers keep the image's default command: the MPI operator starts sshd in them.
    worker = container(context, "trainer", command=None, resources=gpu_resources(context), env=env)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": job_metadata(context),
        "spec": {
            "slotsPerWorker": context.plan.gpus_per_node,
            "runLauncherAsWorker": False,
            "sshAuthMountPath": settings.ssh_auth_mount_path,
            "mpiImplementation": "OpenMPI",
            "launcherCreationPolicy": "WaitForWorkersReady",
            "runPolicy": run_policy(context),
            "mpiReplicaSpecs": {
                "Launcher": {
                    "replicas": 1,
                    "restartPolicy": "Never",
                    "template": pod_template(context, [launcher], "launcher", volumes=False),
                },
                "Worker": {
                    "replicas": context.plan.nodes,
                    "restartPolicy": "Never",
                    "template": pod_template(context, [worker], COMPONENT),
                },
            },
        },
    }

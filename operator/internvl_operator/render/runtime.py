"""The ClusterTrainingRuntime ``internvl-torch`` (Kubeflow Trainer v2.3) that every TrainJob of
the operator runs on: the blueprint Trainer turns into a JobSet, which the chart installs once per
cluster (value ``trainJob.runtime.install``).

It holds what is the same for every attempt: Trainer's torch ML policy (the ``PET_*`` variables
torchrun reads, kubeflow-jobs §3.4), one replicated job ``node`` whose container ``node`` is the
trainer image, the "restricted" security context, and the scratch and ``/dev/shm`` volumes sized
by the installation's settings. Each TrainJob sets the rest (render.trainjob). No initializers:
the trainer streams the base model and the data from S3 itself.
"""

from __future__ import annotations

from typing import Any

from internvl_operator.render.pod import (
    TRAINER_MOUNTS,
    container_security_context,
    pod_security_context,
    shm_volume,
)
from internvl_operator.render.pytorchjob import trainer_command
from internvl_operator.render.trainjob import API_VERSION, NODE, RUNTIME_KIND, RUNTIME_NAME
from internvl_operator.settings import OperatorSettings

ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
FRAMEWORK_LABEL = "trainer.kubeflow.org/framework"


def runtime_volumes(settings: OperatorSettings) -> list[dict[str, Any]]:
    """Scratch on the node's disk, of the installation's size, and the shared-memory volume."""
    return [{"name": "scratch", "emptyDir": {"sizeLimit": settings.scratch_size_limit}}, shm_volume(settings)]


# The trainer's mounts but train.yaml's, whose ConfigMap is each attempt's own.
RUNTIME_MOUNTS = [mount for mount in TRAINER_MOUNTS if mount["name"] != "train-config"]


def cluster_training_runtime(settings: OperatorSettings) -> dict[str, Any]:
    node = {
        "name": NODE,
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": trainer_command(),
        "volumeMounts": RUNTIME_MOUNTS,
        "securityContext": container_security_context(),
    }
    # A failed pod fails its Job, and the Job the JobSet, at once (no in-place retries, no JobSet
    # restarts): the operator then starts a new attempt from the latest checkpoint, every process
    # restarted together, as it does for the other launchers.
    job = {
        "name": NODE,
        "replicas": 1,
        "template": {
            "metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "securityContext": pod_security_context(),
                        "containers": [node],
                        "volumes": runtime_volumes(settings),
                    }
                },
            },
        },
    }
    return {
        "apiVersion": API_VERSION,
        "kind": RUNTIME_KIND,
        "metadata": {"name": RUNTIME_NAME, "labels": {FRAMEWORK_LABEL: "torch"}},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {"spec": {"failurePolicy": {"maxRestarts": 0}, "replicatedJobs": [job]}},
        },
    }

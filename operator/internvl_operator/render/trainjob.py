"""The TrainJob (trainer.kubeflow.org/v1alpha1, Kubeflow Trainer v2.3) of an attempt: the
``internvl-torch`` runtime (render.runtime) with this attempt's trainer and pods.

``spec.trainer`` sets what Trainer lets a TrainJob set on the trainer container (image, command,
environment, nodes, processes and resources per node); Trainer's torch plugin adds the ``PET_*``
variables torchrun reads, so the environment must not hold them (kubeflow-jobs §3.4). Everything
else a pod of the attempt needs (train.yaml's ConfigMap, labels, ServiceAccount, placement, pull
secrets, security context) goes through the operator's own entry of ``spec.runtimePatches``,
which allows only some pod fields; spec fields it cannot carry are named by
``unsupported_fields`` so the operator can refuse the object instead of dropping them.
"""

from __future__ import annotations

from typing import Any

from internvl_operator import naming
from internvl_operator.api import InternVLFinetuneSpec
from internvl_operator.render.context import RenderContext
from internvl_operator.render.pod import (
    COMPONENT,
    TRAINER_MOUNTS,
    container_security_context,
    created_suspended,
    gpu_resources,
    job_metadata,
    pod_template,
    trainer_env,
)
from internvl_operator.render.pytorchjob import trainer_command

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
# The runtime every TrainJob of the operator names (render.runtime builds it), and its job and
# container ``node``: Trainer's torch plugin configures the container "node" of the job labelled
# as the trainer ancestor; TrainJob.spec.trainer overrides that container (kubeflow-jobs §3.3).
RUNTIME_KIND = "ClusterTrainingRuntime"
RUNTIME_NAME = "internvl-torch"
NODE = naming.TRAINJOB_NODE
RUNTIME_REF = {"apiGroup": API_VERSION.split("/")[0], "kind": RUNTIME_KIND, "name": RUNTIME_NAME}
# The manager of the operator's runtime patch: a domain-prefixed path, as Trainer requires, and
# not Kueue's (kueue.x-k8s.io/manager), which Kueue writes on admission.
PATCH_MANAGER = "internvl.dev/operator"
# The lists of a rendered TrainJob that the v2.3 CRD declares map lists (x-kubernetes-list-type:
# map), by path ("*" for each item of a list), with their keys (x-kubernetes-list-map-keys).
# Others add items to them: Kueue its own entry of runtimePatches when it admits the job.
_PATCHED_JOBS = ("spec", "runtimePatches", "*", "trainingRuntimeSpec", "template", "spec", "replicatedJobs")
_PATCHED_POD = (*_PATCHED_JOBS, "*", "template", "spec", "template", "spec")
LIST_MAP_KEYS = {
    ("spec", "trainer", "env"): ("name",),
    ("spec", "runtimePatches"): ("manager",),
    _PATCHED_JOBS: ("name",),
    (*_PATCHED_POD, "containers"): ("name",),
    (*_PATCHED_POD, "containers", "*", "volumeMounts"): ("name",),
    (*_PATCHED_POD, "volumes"): ("name",),
    (*_PATCHED_POD, "imagePullSecrets"): ("name",),
}


def unsupported_fields(spec: InternVLFinetuneSpec) -> list[str]:
    """The spec fields set that a TrainJob cannot carry, each with why: Trainer v2.3 patches only
    some pod fields per job (no priority class, scheduler or host network) and a TrainJob has no
    time-to-live of its own (kubeflow-jobs §3.2)."""
    pod_fields = {
        "spec.pod.priorityClassName": spec.pod.priority_class_name,
        "spec.pod.schedulerName": spec.pod.scheduler_name,
        "spec.pod.hostNetwork": spec.pod.host_network,
    }
    problems = [
        f"{field}: a TrainJob of Kubeflow Trainer v2.3 cannot set it on its pods (runtimePatches have no such field)"
        for field, value in pod_fields.items()
        if value
    ]
    if spec.ttl_seconds_after_finished is not None:
        problems.append("spec.ttlSecondsAfterFinished: a TrainJob of Kubeflow Trainer v2.3 has no time-to-live")
    return problems


# The pod fields Trainer v2.3 lets runtimePatches set (kubeflow-jobs §3.2).
PATCHABLE_POD_FIELDS = {
    "serviceAccountName",
    "securityContext",
    "containers",
    "initContainers",
    "volumes",
    "imagePullSecrets",
    "nodeSelector",
    "affinity",
    "tolerations",
    "schedulingGates",
    "terminationGracePeriodSeconds",
}


def pod_patch(context: RenderContext) -> dict[str, Any]:
    """The pod template patch of the ``node`` job: the other launchers' pod template
    (pod.pod_template) with the container ``node`` reduced to what a patch may set on it, its
    mounts and security context (its environment is spec.trainer.env). The security context is
    patched too, so the pods are restricted whatever runtime of that name a cluster holds."""
    node = {"name": NODE, "volumeMounts": TRAINER_MOUNTS, "securityContext": container_security_context()}
    template = pod_template(context, [node], COMPONENT)
    refused = sorted(set(template["spec"]) - PATCHABLE_POD_FIELDS)
    if refused:
        raise ValueError(f"runtimePatches cannot set the pod fields {refused}")
    return template


def trainjob(context: RenderContext) -> dict[str, Any]:
    spec = context.resource.spec
    unsupported = unsupported_fields(spec)
    if unsupported:
        raise ValueError("; ".join(unsupported))
    node_patch = {"name": NODE, "template": {"spec": {"template": pod_patch(context)}}}
    body: dict[str, Any] = {
        "runtimeRef": dict(RUNTIME_REF),
        "trainer": {
            "image": context.image,
            "command": trainer_command(),
            "env": [{"name": "LAUNCHER", "value": "pytorch"}, *trainer_env(context)],
            "numNodes": context.plan.nodes,
            "numProcPerNode": context.plan.gpus_per_node,
            "resourcesPerNode": gpu_resources(context),
        },
        "runtimePatches": [
            {
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [node_patch]}}},
            }
        ],
        "suspend": created_suspended(spec),
    }
    if spec.active_deadline_seconds is not None:
        body["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": job_metadata(context), "spec": body}

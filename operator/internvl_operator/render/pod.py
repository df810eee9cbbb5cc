"""The training pod: the trainer container, its environment and volumes, and the pod's placement
(docs/contract.md §2). Both job kinds build their replicas from these pieces."""

from __future__ import annotations

from typing import Any

from internvl_operator import naming
from internvl_operator.api import MLFLOW_SECRET_KEYS, WANDB_SECRET_KEY, InternVLFinetuneSpec
from internvl_operator.render.context import (
    QUEUE_LABEL,
    SCRATCH_PATH,
    TRAIN_CONFIG_DIR,
    TRAIN_CONFIG_KEY,
    RenderContext,
)
from internvl_operator.settings import OperatorSettings

COMPONENT = "trainer"
SECRET_KEYS = (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False), ("AWS_SESSION_TOKEN", True))


# Every pod meets the "restricted" Pod Security Standard. The trainer image runs as its non-root
# user 10001 (images/trainer/Dockerfile) and an MPIJob worker's sshd listens on 2222 as that user,
# so no pod needs root, a capability, privilege escalation or an unconfined seccomp profile.
def pod_security_context() -> dict[str, Any]:
    """The pod's securityContext: the image's user must not be root, and the runtime's default
    seccomp profile applies."""
    return {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    """Each container's securityContext: no privilege escalation (setuid binaries) and no Linux
    capability at all."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def trainer_env(context: RenderContext) -> list[dict[str, Any]]:
    """The contract's environment (the trackers' credentials included), then the user's extra
    variables (last, so they may refer to the ones before with $(NAME))."""
    env: list[dict[str, Any]] = [
        {"name": "INTERNVL_NAME", "value": context.name},
        {"name": "INTERNVL_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "INTERNVL_UID", "value": context.uid},
        {"name": "INTERNVL_ATTEMPT", "value": str(context.attempt)},
        {"name": "INTERNVL_SCRATCH", "value": SCRATCH_PATH},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
    ]
    secret = context.resource.spec.storage.credentials_secret or context.settings.default_credentials_secret
    if secret:
        env += [secret_env(secret, key, optional=optional) for key, optional in SECRET_KEYS]
    env += tracking_env(context.resource.spec)
    return env + [variable.to_wire() for variable in context.resource.spec.pod.env]


def secret_env(secret: str, key: str, *, optional: bool) -> dict[str, Any]:
    """The variable ``key`` from the key of the same name of ``secret``."""
    return {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}


def tracking_env(spec: InternVLFinetuneSpec) -> list[dict[str, Any]]:
    """The experiment trackers' credentials, by reference to their Secrets: MLflow's optional
    keys, W&B's API key (required: without it W&B refuses every request)."""
    tracking = spec.tracking
    env: list[dict[str, Any]] = []
    if tracking and tracking.mlflow and tracking.mlflow.credentials_secret:
        env += [secret_env(tracking.mlflow.credentials_secret, key, optional=True) for key in MLFLOW_SECRET_KEYS]
    if tracking and tracking.wandb:
        env.append(secret_env(tracking.wandb.api_key_secret, WANDB_SECRET_KEY, optional=False))
    return env


def shm_volume(settings: OperatorSettings) -> dict[str, Any]:
    """A memory-backed /dev/shm, which data-loader workers pass tensors through (a container's
    default one is 64 MiB)."""
    return {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size_limit}}


def trainer_volumes(context: RenderContext) -> list[dict[str, Any]]:
    scratch = context.resource.spec.resources.scratch
    if scratch.claim_name:
        scratch_source: dict[str, Any] = {"persistentVolumeClaim": {"claimName": scratch.claim_name}}
    else:
        scratch_source = {"emptyDir": {"sizeLimit": scratch.size_limit or context.settings.scratch_size_limit}}
    return [
        {
            "name": "train-config",
            "configMap": {
                "name": naming.train_config_name(context.name, context.attempt),
                "items": [{"key": TRAIN_CONFIG_KEY, "path": TRAIN_CONFIG_KEY}],
            },
        },
        {"name": "scratch", **scratch_source},
        shm_volume(context.settings),
    ]


TRAINER_MOUNTS = [
    {"name": "train-config", "mountPath": TRAIN_CONFIG_DIR, "readOnly": True},
    {"name": "scratch", "mountPath": SCRATCH_PATH},
    {"name": "dshm", "mountPath": "/dev/shm"},
]


def gpu_resources(context: RenderContext) -> dict[str, Any]:
    """Requests and limits of a GPU pod: all GPUs of its node, the CPU, memory and
    ephemeral storage the spec asks for (CPU defaults to a share per GPU)."""
    resources = context.resource.spec.resources
    gpus = {resources.gpu_resource_name: str(context.plan.gpus_per_node)}
    requests = {"cpu": resources.cpu or str(context.settings.cpu_per_gpu * context.plan.gpus_per_node)}
    if resources.memory:
        requests["memory"] = resources.memory
    if resources.ephemeral_storage:
        requests["ephemeral-storage"] = resources.ephemeral_storage
    return {"requests": {**requests, **gpus}, "limits": gpus}


def container(
    context: RenderContext,
    name: str,
    *,
    command: list[str] | None,
    resources: dict[str, Any],
    env: list[dict[str, Any]],
    ports: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] = TRAINER_MOUNTS,
) -> dict[str, Any]:
    """The trainer image as a container; command is a list (never a shell line) or None for the
    image's own entrypoint."""
    spec: dict[str, Any] = {
        "name": name,
        "image": context.image,
        "imagePullPolicy": context.settings.image_pull_policy,
    }
    if command is not None:
        spec["command"] = command
    spec["env"] = env
    if ports:
        spec["ports"] = ports
    spec["resources"] = resources
    if mounts:
        spec["volumeMounts"] = mounts
    spec["securityContext"] = container_security_context()
    return spec


def pod_template(
    context: RenderContext, containers: list[dict[str, Any]], component: str, *, volumes: bool = True
) -> dict[str, Any]:
    """A pod template with the spec's placement, the trainer's ServiceAccount and (for pods that
    train) the trainer's volumes."""
    pod = context.resource.spec.pod
    metadata: dict[str, Any] = {"labels": context.labels(component)}
    if pod.annotations:
        metadata["annotations"] = dict(pod.annotations)
    spec: dict[str, Any] = {
        "serviceAccountName": naming.trainer_account_name(context.name),
        "securityContext": pod_security_context(),
        "containers": containers,
    }
    if volumes:
        spec["volumes"] = trainer_volumes(context)
    if pod.node_selector:
        spec["nodeSelector"] = dict(pod.node_selector)
    if pod.tolerations:
        spec["tolerations"] = [toleration.to_wire() for toleration in pod.tolerations]
    if pod.affinity:
        spec["affinity"] = pod.affinity.to_wire()
    if pod.priority_class_name:
        spec["priorityClassName"] = pod.priority_class_name
    if pod.scheduler_name:
        spec["schedulerName"] = pod.scheduler_name
    if pod.image_pull_secrets:
        spec["imagePullSecrets"] = [secret.to_wire() for secret in pod.image_pull_secrets]
    if pod.host_network:
        # Only where the installation allows it (OperatorSettings.allow_host_network; the operator
        # refuses the object otherwise); such a pod cannot meet the "restricted" standard.
        spec["hostNetwork"] = True
        spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    return {"metadata": metadata, "spec": spec}


def job_metadata(context: RenderContext) -> dict[str, Any]:
    """Metadata of the Kubeflow job: Kueue's queue label when the spec names a queue."""
    queue = context.resource.spec.queue_name
    labels = {QUEUE_LABEL: queue} if queue else None
    return context.metadata(context.job_name, COMPONENT, labels=labels)


def created_suspended(spec: InternVLFinetuneSpec) -> bool:
    """Whether the job is created suspended: when the spec says so, and when it is queued (Kueue
    admits it by unsuspending)."""
    return spec.suspend or spec.queue_name is not None


def run_policy(context: RenderContext) -> dict[str, Any]:
    """Kubeflow's runPolicy. No in-place retries (backoffLimit 0): a failure surfaces as the
    job's Failed condition and the operator starts a new attempt from the latest checkpoint.
    Pods still running when the job ends are deleted so they free their GPUs; finished pods stay
    for their logs."""
    spec = context.resource.spec
    policy: dict[str, Any] = {"cleanPodPolicy": "Running", "backoffLimit": 0, "suspend": created_suspended(spec)}
    if spec.active_deadline_seconds is not None:
        policy["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        policy["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return policy

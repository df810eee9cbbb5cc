"""The InternVLFinetune API (internvl.dev/v1alpha1): spec and status as pydantic models.

The parts the trainer also needs (model, method, data, training, storage, output) are the
trainer's own config sections, reused here unchanged; this module adds what only the cluster
needs: resources and pod placement, the launcher, DeepSpeed choices, run policy, and the status.
The CRD (crds/) and docs/api.md are generated from these classes by ``internvl_operator.crd``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from internvl_trainer.config import (
    API_GROUP,
    API_VERSION,
    FREE_FORM,
    DataConfig,
    MethodConfig,
    ModelConfig,
    Name,
    OutputConfig,
    Section,
    StorageConfig,
    TrainingConfig,
)
from internvl_trainer.problems import described_pattern

KIND = "InternVLFinetune"
PLURAL = "internvlfinetunes"
SINGULAR = "internvlfinetune"
SHORT_NAMES = ("ivft",)
CATEGORIES = ("ml",)

Quantity = Annotated[
    str,
    StringConstraints(
        max_length=64,
        pattern=described_pattern(
            r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$", "a quantity such as 8, 500m or 64Gi"
        ),
    ),
]
"""A Kubernetes resource quantity such as 8, 500m, 64Gi."""

Label = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=63,
        pattern=described_pattern(
            r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "a DNS label: lower-case letters, digits and '-', at most 63"
        ),
    ),
]
"""A DNS-1123 label: the name of a Secret, PVC, priority class or queue."""

Text = Annotated[str, StringConstraints(max_length=4096)]
LabelMap = Annotated[dict[Annotated[str, StringConstraints(max_length=317)], Text], Field(max_length=64)]


# ---------------------------------------------------------------------------------------------
# spec: cluster-only sections


class ScratchVolume(Section):
    """Node-local space for model shards and the data cache: an emptyDir of a size, or a PVC."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.sizeLimit) && has(self.claimName))",
                    "message": "set either sizeLimit (an emptyDir) or claimName (a PVC), not both",
                    "reason": "FieldValueForbidden",
                }
            ]
        }
    )

    size_limit: Quantity | None = None
    """Size of an emptyDir scratch volume. Default (neither field set): 200Gi."""

    claim_name: Label | None = None
    """Name of an existing PersistentVolumeClaim to use instead of an emptyDir."""

    @model_validator(mode="after")
    def _one_kind(self) -> ScratchVolume:
        if self.size_limit is not None and self.claim_name is not None:
            raise ValueError("set either sizeLimit (an emptyDir) or claimName (a PVC), not both")
        return self


class ResourcesSpec(Section):
    """GPUs and the other resources of each training pod. Unset GPU settings are planned."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.gpus) || self.gpus <= self.gpusPerNode || self.gpus % self.gpusPerNode == 0",
                    "message": "gpus must fit on one node or be a multiple of gpusPerNode",
                    "fieldPath": ".gpus",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    )

    gpus: int | None = Field(None, ge=1, le=4096)
    """Total GPUs. Unset: planned from the model size, the method and gpuMemoryGiB under the
    planning policy."""

    gpus_per_node: int = Field(8, ge=1, le=16)
    """GPUs on each node, and so per pod; a run spanning several nodes fills each one."""

    gpu_memory_gib: int = Field(80, ge=8, le=1024, alias="gpuMemoryGiB")
    """Memory of one GPU in GiB, for planning (80 for A100/H100 80GB, 141 for H200)."""

    gpu_resource_name: Annotated[
        str,
        StringConstraints(
            max_length=253,
            pattern=described_pattern(
                r"^[a-z0-9.\-]+/[a-z0-9.\-_]+$", "an extended resource name such as nvidia.com/gpu"
            ),
        ),
    ] = "nvidia.com/gpu"
    """Extended resource name of the GPUs in the pod's limits."""

    policy: Literal["recipe", "minimal"] = "recipe"
    """Planning policy: recipe reproduces InternVL's official fine-tuning scripts; minimal uses
    the fewest GPUs that fit, keeping the global batch."""

    cpu: Quantity | None = None
    """CPU request per pod. Default: 8 per GPU."""

    memory: Quantity | None = None
    """Memory request per pod. Unset: no request, so the scheduler reserves none; set it for runs
    that offload to CPU memory or load large weights."""

    ephemeral_storage: Quantity | None = None
    """Ephemeral-storage request per pod."""

    scratch: ScratchVolume = Field(default_factory=ScratchVolume)
    """Scratch volume for model shards and the data cache."""

    @model_validator(mode="after")
    def _gpus_fill_nodes(self) -> ResourcesSpec:
        if self.gpus is not None and self.gpus > self.gpus_per_node and self.gpus % self.gpus_per_node:
            raise ValueError(
                f"gpus ({self.gpus}) must fit on one node or be a multiple of gpusPerNode ({self.gpus_per_node})"
            )
        return self


class Toleration(Section):
    """A pod toleration, as in core/v1."""

    key: Annotated[str, StringConstraints(max_length=317)] | None = None
    """Taint key; empty with operator Exists matches every taint."""

    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (default Equal)."""

    value: Annotated[str, StringConstraints(max_length=63)] | None = None
    """Taint value for operator Equal."""

    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all."""

    toleration_seconds: int | None = Field(None, ge=0)
    """How long a NoExecute taint is tolerated."""


class LocalObjectReference(Section):
    """A reference to an object in the same namespace."""

    name: Label
    """Name of the object."""


class EnvVar(Section):
    """An extra environment variable of the trainer container (core/v1 EnvVar)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")]
    """Variable name."""

    value: Annotated[str, StringConstraints(max_length=32768)] | None = None
    """Literal value."""

    value_from: dict[str, Any] | None = Field(None, json_schema_extra=FREE_FORM)
    """Source of the value (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef), as in
    core/v1."""


class PodSpec(Section):
    """Placement and extras of the training pods."""

    node_selector: LabelMap = Field(default_factory=dict)
    """Node labels the pods must match."""

    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)
    """Taints the pods tolerate (GPU nodes are often tainted)."""

    affinity: dict[str, Any] | None = Field(None, json_schema_extra=FREE_FORM)
    """Pod affinity, as in core/v1 (nodeAffinity, podAffinity, podAntiAffinity)."""

    priority_class_name: Label | None = None
    """PriorityClass of the pods."""

    scheduler_name: Label | None = None
    """Scheduler of the pods, for gang schedulers such as volcano or scheduler-plugins."""

    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=16)
    """Secrets for pulling the trainer image."""

    annotations: LabelMap = Field(default_factory=dict)
    """Extra annotations of the pods."""

    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    """Extra environment of the trainer container."""

    host_network: bool = False
    """Run the pods in the host's network namespace (some RDMA setups need it)."""


class DeepSpeedSpec(Section):
    """DeepSpeed ZeRO choices. Unset ones are planned."""

    stage: Literal[1, 2, 3] | None = None
    """ZeRO stage. Unset: the recipe's, or under policy minimal the lowest stage that fits."""

    offload: Literal["auto", "none", "cpu"] = "auto"
    """Offload optimizer states and parameters to CPU memory (ZeRO 3 only); auto offloads only
    when nothing else fits."""


class StorageSpec(StorageConfig):
    """The S3-compatible object store and the Secret with its credentials."""

    credentials_secret: Label | None = None
    """Secret with keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally
    AWS_SESSION_TOKEN, passed to the trainer by reference. Unset: the pod's own identity (IRSA,
    workload identity) or the operator's default Secret."""


# Fields that decide what is trained and where it goes; changing them would silently change a
# running job, so only suspend and the run policy stay mutable.
IMMUTABLE_FIELDS = (
    "model",
    "method",
    "data",
    "training",
    "resources",
    "pod",
    "launcher",
    "deepspeed",
    "storage",
    "output",
    "trainerImage",
    "queueName",
)


def _immutability_rule(field: str) -> dict[str, str]:
    return {
        "rule": (
            f"has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})"
        ),
        "message": f"{field} is immutable; create a new InternVLFinetune to change it",
        "fieldPath": f".{field}",
        "reason": "FieldValueForbidden",
    }


class InternVLFinetuneSpec(Section):
    """Desired fine-tuning run."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [_immutability_rule(f) for f in IMMUTABLE_FIELDS]}
    )

    model: ModelConfig
    """The base model."""

    method: MethodConfig = Field(default_factory=MethodConfig)
    """Full fine-tuning or LoRA, and what is frozen."""

    data: DataConfig
    """The training data."""

    training: TrainingConfig = Field(default_factory=TrainingConfig)
    """Hyperparameters and checkpointing; unset recipe values are planned."""

    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """GPUs and other resources."""

    pod: PodSpec = Field(default_factory=PodSpec)
    """Placement and extras of the training pods."""

    launcher: Literal["pytorchjob", "mpijob"] = "pytorchjob"
    """Job kind: pytorchjob (Kubeflow PyTorchJob, torchrun) or mpijob (Kubeflow MPIJob v2beta1,
    DeepSpeed over MPI)."""

    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    """DeepSpeed ZeRO stage and offload."""

    storage: StorageSpec = Field(default_factory=StorageSpec)
    """Object store and credentials."""

    output: OutputConfig
    """Where the merged model, checkpoints and reports go."""

    trainer_image: Annotated[str, StringConstraints(max_length=512, pattern=r"^[^\s]+$")] | None = None
    """Trainer container image. Unset: the operator's default."""

    suspend: bool = False
    """Suspend the run: the job is suspended (pods deleted) and resumes from the latest
    checkpoint when set back to false."""

    queue_name: Label | None = None
    """Kueue LocalQueue; the job is created suspended and Kueue admits it."""

    max_restarts: int = Field(3, ge=0, le=100)
    """Whole-job restarts after a failure; each new attempt resumes from the latest checkpoint."""

    active_deadline_seconds: int | None = Field(None, ge=1)
    """End an attempt that has been active longer than this; like any failure, it is retried
    from the latest checkpoint while restarts are left."""

    ttl_seconds_after_finished: int | None = Field(None, ge=0)
    """Delete the finished job (not this object nor the outputs) after this many seconds."""


# ---------------------------------------------------------------------------------------------
# status


class Condition(Section):
    """A condition, in the shape of metav1.Condition."""

    type: Annotated[
        str,
        StringConstraints(
            min_length=1,
            max_length=316,
            pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        ),
    ]
    """Type of condition: Valid, JobCreated, Running, Suspended, Succeeded or Failed."""

    status: Literal["True", "False", "Unknown"]
    """Status of the condition."""

    observed_generation: int | None = Field(None, ge=0)
    """The metadata.generation the condition was set for."""

    last_transition_time: datetime
    """When the condition last changed status."""

    reason: Annotated[
        str,
        StringConstraints(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
    ]
    """One CamelCase word saying why."""

    message: Annotated[str, StringConstraints(max_length=32768)]
    """Human-readable details."""


class PlanStatus(Section):
    """The plan the operator applied."""

    nodes: int = Field(ge=1)
    """Nodes (pods) of the job."""

    gpus_per_node: int = Field(ge=1)
    """GPUs per node."""

    gpus: int = Field(ge=1)
    """Total GPUs."""

    zero_stage: int = Field(ge=0, le=3)
    """DeepSpeed ZeRO stage (0: plain data parallel)."""

    offload: bool = False
    """Whether optimizer states and parameters are offloaded to CPU."""

    per_device_batch_size: int = Field(ge=1)
    """Samples per GPU per micro-step."""

    gradient_accumulation_steps: int = Field(ge=1)
    """Micro-steps per optimizer step."""

    estimated_memory_gib: float | None = Field(None, ge=0, alias="estimatedMemoryGiB")
    """Estimated peak memory per GPU."""

    policy: Literal["recipe", "minimal", "explicit"]
    """Policy that produced the plan; explicit when the spec fixed GPUs and stage."""

    notes: list[Annotated[str, StringConstraints(max_length=1024)]] = Field(default_factory=list, max_length=32)
    """Why the plan is what it is."""


class JobReference(Section):
    """The child job."""

    api_version: Annotated[str, StringConstraints(max_length=128)] = Field(alias="apiVersion")
    """API version of the job."""

    kind: Literal["PyTorchJob", "MPIJob"]
    """Kind of the job."""

    name: Name
    """Name of the job."""

    uid: Annotated[str, StringConstraints(max_length=64)] | None = None
    """uid of the job."""


class ProgressStatus(Section):
    """Live training progress, patched by the trainer's rank 0 (rate-limited)."""

    step: int = Field(0, ge=0)
    """Optimizer steps done."""

    total_steps: int | None = Field(None, ge=0)
    """Optimizer steps planned."""

    percent: int = Field(0, ge=0, le=100)
    """step / totalSteps, in percent."""

    epoch: float | None = Field(None, ge=0)
    """Fractional epoch."""

    loss: float | None = None
    """Latest training loss."""

    samples_per_second: float | None = Field(None, ge=0)
    """Training throughput over all GPUs."""

    eta_seconds: int | None = Field(None, ge=0)
    """Estimated seconds to the end of training."""

    updated_at: datetime | None = None
    """When the trainer last reported."""


class OutputStatus(Section):
    """Where the results are, patched by the trainer."""

    model_uri: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """The merged model (complete once manifestUri exists)."""

    manifest_uri: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """manifest.json of the published model, written last."""

    latest_checkpoint_uri: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """The newest complete checkpoint."""

    eval_loss: float | None = None
    """Final loss on the held-out split."""


class InternVLFinetuneStatus(Section):
    """Observed state. The operator owns conditions, plan, job and attempt; the trainer writes
    progress and output."""

    observed_generation: int | None = Field(None, ge=0)
    """The metadata.generation last acted on."""

    phase: Literal["Pending", "Invalid", "Starting", "Running", "Suspended", "Succeeded", "Failed"] | None = None
    """A summary of the conditions for people (``kubectl get``): Failed or Succeeded when the run
    ended, Invalid when the spec was refused, Suspended, Running, Starting once the job exists,
    else Pending. Automation should read the conditions."""

    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    """Valid, JobCreated, Running, Suspended, Succeeded and Failed."""

    plan: PlanStatus | None = None
    """The applied plan."""

    job: JobReference | None = None
    """The child job of the current attempt."""

    attempt: int = Field(0, ge=0)
    """Attempt number of the current job (1 for the first)."""

    last_failure_reason: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """Reason of the latest failed attempt."""

    progress: ProgressStatus | None = None
    """Live training progress."""

    output: OutputStatus | None = None
    """Where the results are."""

    start_time: datetime | None = None
    """When the first job started."""

    completion_time: datetime | None = None
    """When the run succeeded or finally failed."""


class ObjectMeta(Section):
    """The part of metadata the validator checks; the API server owns the rest."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[
        str,
        StringConstraints(
            min_length=1,
            max_length=253,
            pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        ),
    ]
    """Object name."""

    namespace: Label | None = None
    """Object namespace."""


class InternVLFinetune(Section):
    """Fine-tunes an InternVL vision-language model on a Kubeflow training job and publishes the
    merged model to S3."""

    api_version: Literal["internvl.dev/v1alpha1"] = Field(f"{API_GROUP}/{API_VERSION}", alias="apiVersion")
    """internvl.dev/v1alpha1"""

    kind: Literal["InternVLFinetune"] = KIND
    """InternVLFinetune"""

    metadata: ObjectMeta
    """Standard object metadata."""

    spec: InternVLFinetuneSpec
    """Desired fine-tuning run."""

    status: InternVLFinetuneStatus | None = None
    """Observed state."""

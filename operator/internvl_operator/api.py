"""The InternVLFinetune API (internvl.dev/v1alpha1): spec and status as pydantic models.

The parts the trainer also needs (model, method, data, training, storage, output, tracking) are
the trainer's own config sections, reused here unchanged or extended with the Secrets that hold
their credentials; this module adds what only the cluster needs: resources and pod placement, the
launcher, DeepSpeed choices, run policy, and the status.
The pod pieces are core/v1's (``corev1``), the value formats Kubernetes' (``kubeformats``) and
the metadata metav1's (``objectmeta``), each with Kubernetes' own rules, so that what the models
accept the API server and the pods accept too. The CRD (crds/) and docs/api.md are generated from
these classes by ``internvl_operator.crd``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from internvl_operator.corev1 import LIST_MAP_BY_NAME, Affinity, EnvVar, LocalObjectReference, Toleration
from internvl_operator.kubeformats import (
    INT32_MAX,
    INT64_MAX,
    ExtendedResourceName,
    Label,
    Quantity,
    SpecAnnotations,
    SpecLabels,
    Timestamp,
)
from internvl_operator.objectmeta import ObjectMeta
from internvl_operator.rules import Rule, RuledSection
from internvl_trainer.config import (
    API_GROUP,
    API_VERSION,
    NOT_SPACE,
    DataConfig,
    Int,
    MethodConfig,
    MlflowConfig,
    ModelConfig,
    Name,
    OptionalInt,
    OutputConfig,
    Section,
    StorageConfig,
    TrackingConfig,
    TrainingConfig,
    WandbConfig,
    json_integer,
)

KIND = "InternVLFinetune"
PLURAL = "internvlfinetunes"
SINGULAR = "internvlfinetune"
SHORT_NAMES = ("ivft",)
CATEGORIES = ("ml",)

# ---------------------------------------------------------------------------------------------
# spec: cluster-only sections


class ScratchVolume(RuledSection):
    """Node-local space for model shards and the data cache: an emptyDir of a size, or a PVC."""

    rules = (
        Rule(
            "!(has(self.sizeLimit) && has(self.claimName))",
            "set either sizeLimit (an emptyDir) or claimName (a PVC), not both",
            reason="FieldValueForbidden",
        ),
    )

    size_limit: Quantity | None = None
    """Size of an emptyDir scratch volume. Default (neither field set): 200Gi."""

    claim_name: Label | None = None
    """Name of an existing PersistentVolumeClaim to use instead of an emptyDir. Privileged: the
    pods mount this claim of the namespace read-write."""


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

    gpus: OptionalInt = Field(None, ge=1, le=4096)
    """Total GPUs. Unset: planned from the model size, the method and gpuMemoryGiB under the
    planning policy."""

    gpus_per_node: Int = Field(8, ge=1, le=16)
    """GPUs on each node, and so per pod; a run spanning several nodes fills each one."""

    gpu_memory_gib: Int = Field(80, ge=8, le=1024, alias="gpuMemoryGiB")
    """Memory of one GPU in GiB, for planning (80 for A100/H100 80GB, 141 for H200)."""

    gpu_resource_name: ExtendedResourceName = "nvidia.com/gpu"
    """Extended resource name of the GPUs in the pod's limits: a vendor's domain outside
    kubernetes.io, '/' and a name."""

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


MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
"""The keys of tracking.mlflow.credentialsSecret the trainer gets as variables: the credentials
MLflow's client reads from its environment."""

WANDB_SECRET_KEY = "WANDB_API_KEY"
"""The key of tracking.wandb.apiKeySecret the trainer gets as a variable of the same name."""


# Variables the operator sets in the trainer container (render/pod.py, the job renderers) or the
# Kubeflow controllers inject into it (PyTorchJob: MASTER_*, WORLD_SIZE, RANK, PYTHONUNBUFFERED,
# PET_*; MPIJob: K_MPI_JOB_ROLE, OMPI_MCA_*, NVIDIA_* on the launcher). A user variable of the same
# name makes the job be refused for a duplicate env name, or would override the operator's (an
# MPIJob's mpirun forwards -x MASTER_ADDR=... and every variable by name).
RESERVED_ENV_NAMES = (
    "INTERNVL_NAME",
    "INTERNVL_NAMESPACE",
    "INTERNVL_UID",
    "INTERNVL_ATTEMPT",
    "INTERNVL_SCRATCH",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    *MLFLOW_SECRET_KEYS,
    WANDB_SECRET_KEY,
    "LAUNCHER",
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "PYTHONUNBUFFERED",
    "K_MPI_JOB_ROLE",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
)
RESERVED_ENV_PREFIXES = ("PET_", "OMPI_")


def is_reserved_env_name(name: str) -> bool:
    """Whether the operator or Kubeflow sets a variable of this name in the trainer container."""
    return name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES)


class TrainerEnvVar(EnvVar):
    """An extra environment variable of the trainer container (core/v1 EnvVar), other than the
    ones the operator and Kubeflow set."""

    rules = (
        *EnvVar.rules,
        Rule(
            f"!(self.name in [{', '.join(repr(name) for name in RESERVED_ENV_NAMES)}])"
            + "".join(f" && !self.name.startsWith({prefix!r})" for prefix in RESERVED_ENV_PREFIXES),
            f"is reserved: the operator or Kubeflow sets {', '.join(RESERVED_ENV_NAMES)} and every variable "
            f"starting with {' or '.join(RESERVED_ENV_PREFIXES)}",
            field="name",
            reason="FieldValueForbidden",
        ),
    )


class PodSpec(Section):
    """Placement and extras of the training pods."""

    node_selector: SpecLabels = Field(default_factory=dict)
    """Node labels the pods must match: qualified-name keys and label values."""

    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)
    """Taints the pods tolerate (GPU nodes are often tainted)."""

    affinity: Affinity | None = None
    """Pod affinity, as in core/v1 (nodeAffinity, podAffinity, podAntiAffinity)."""

    priority_class_name: Label | None = None
    """PriorityClass of the pods. Privileged: a high priority lets the pods preempt others."""

    scheduler_name: Label | None = None
    """Scheduler of the pods, for gang schedulers such as volcano or scheduler-plugins.
    Privileged: that scheduler, not the default one, places the pods."""

    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16, json_schema_extra=LIST_MAP_BY_NAME
    )
    """Secrets for pulling the trainer image, each named once. Privileged: the kubelet uses these
    Secrets of the namespace."""

    annotations: SpecAnnotations = Field(default_factory=dict)
    """Extra annotations of the pods: qualified-name keys, at most 256 KiB in all."""

    env: list[TrainerEnvVar] = Field(default_factory=list, max_length=128, json_schema_extra=LIST_MAP_BY_NAME)
    """Extra environment of the trainer container, each name once. Names the operator or Kubeflow
    set (MASTER_ADDR, RANK, AWS_ACCESS_KEY_ID, PET_*, OMPI_*, ...) are refused."""

    host_network: bool = False
    """Run the pods in the host's network namespace (some RDMA setups need it). Privileged: the
    pods share their node's network; refused unless the installation allows it (operator setting
    allowHostNetwork, off by default)."""


class DeepSpeedSpec(Section):
    """DeepSpeed ZeRO choices. Unset ones are planned."""

    stage: Annotated[Literal[1, 2, 3], BeforeValidator(json_integer)] | None = None
    """ZeRO stage. Unset: the recipe's, or under policy minimal the lowest stage that fits."""

    offload: Literal["auto", "none", "cpu"] = "auto"
    """Offload optimizer states and parameters to CPU memory (ZeRO 3 only); auto offloads only
    when nothing else fits."""


class StorageSpec(StorageConfig):
    """The S3-compatible object store and the Secret with its credentials."""

    credentials_secret: Label | None = None
    """Secret with keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally
    AWS_SESSION_TOKEN, passed to the trainer by reference. Unset: the pod's own identity (IRSA,
    workload identity) or the operator's default Secret. Privileged: the trainer pods read this
    Secret of the namespace."""


class MlflowSpec(MlflowConfig):
    """An MLflow tracking server and the Secret with its credentials."""

    credentials_secret: Label | None = None
    """Secret with the keys MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (HTTP basic
    authentication) or MLFLOW_TRACKING_TOKEN (a bearer token), each optional, passed to the
    trainer by reference as the variables of the same names. Unset: the server takes requests
    without credentials. Privileged: the trainer pods read this Secret of the namespace."""


class WandbSpec(WandbConfig):
    """Weights & Biases and the Secret with the API key."""

    api_key_secret: Label
    """Secret with the key WANDB_API_KEY, passed to the trainer by reference as the variable of
    the same name. Privileged: the trainer pods read this Secret of the namespace."""


class TrackingSpec(TrackingConfig):
    """Experiment trackers the run reports to besides metrics.jsonl and TensorBoard, and the
    Secrets with their credentials."""

    mlflow: MlflowSpec | None = None
    """Report to an MLflow tracking server."""

    wandb: WandbSpec | None = None
    """Report to Weights & Biases."""


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
    "tracking",
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

    launcher: Literal["auto", "trainjob", "pytorchjob", "mpijob"] = "auto"
    """Job kind: trainjob (Kubeflow Trainer v2 TrainJob, torchrun), pytorchjob (Kubeflow
    PyTorchJob, torchrun), mpijob (Kubeflow MPIJob v2beta1, DeepSpeed over MPI), or auto: at the
    first job, the first of trainjob, pytorchjob and mpijob whose CRD the cluster serves and that
    can carry the spec; status.plan.launcher shows the choice, which never changes."""

    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    """DeepSpeed ZeRO stage and offload."""

    storage: StorageSpec = Field(default_factory=StorageSpec)
    """Object store and credentials."""

    output: OutputConfig
    """Where the merged model, checkpoints and reports go."""

    tracking: TrackingSpec | None = None
    """Experiment trackers the run reports to (MLflow, Weights & Biases) and their credentials.
    Unset: metrics.jsonl and TensorBoard under the output URI only."""

    trainer_image: Annotated[str, StringConstraints(max_length=512, pattern=rf"^{NOT_SPACE}+$")] | None = None
    """Trainer container image. Unset: the operator's default."""

    suspend: bool = False
    """Suspend the run: the job is suspended (pods deleted) and resumes from the latest
    checkpoint when set back to false."""

    queue_name: Label | None = None
    """Kueue LocalQueue; the job is created suspended and Kueue admits it."""

    max_restarts: Int = Field(3, ge=0, le=100)
    """Whole-job restarts after a failure; each new attempt resumes from the latest checkpoint."""

    active_deadline_seconds: OptionalInt = Field(None, ge=1, le=INT64_MAX)
    """End an attempt that has been active longer than this; like any failure, it is retried
    from the latest checkpoint while restarts are left."""

    ttl_seconds_after_finished: OptionalInt = Field(None, ge=0, le=INT32_MAX)
    """Delete the finished job (not this object nor the outputs) after this many seconds (an
    int32, as the job's runPolicy.ttlSecondsAfterFinished)."""


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

    observed_generation: OptionalInt = Field(None, ge=0, le=INT64_MAX)
    """The metadata.generation the condition was set for."""

    last_transition_time: Timestamp
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

    nodes: Int = Field(ge=1, le=65536)
    """Nodes (pods) of the job."""

    gpus_per_node: Int = Field(ge=1, le=16)
    """GPUs per node."""

    gpus: Int = Field(ge=1, le=65536)
    """Total GPUs."""

    zero_stage: Int = Field(ge=0, le=3)
    """DeepSpeed ZeRO stage (0: plain data parallel)."""

    offload: bool = False
    """Whether optimizer states and parameters are offloaded to CPU."""

    per_device_batch_size: Int = Field(ge=1, le=4096)
    """Samples per GPU per micro-step."""

    gradient_accumulation_steps: Int = Field(ge=1, le=65536)
    """Micro-steps per optimizer step."""

    estimated_memory_gib: float | None = Field(None, ge=0, alias="estimatedMemoryGiB")
    """Estimated peak memory per GPU."""

    policy: Literal["recipe", "minimal", "explicit"]
    """Policy that produced the plan; explicit when the spec fixed GPUs and stage."""

    launcher: Literal["trainjob", "pytorchjob", "mpijob"] | None = None
    """The job kind the run uses: spec.launcher, or what auto chose at the first job (kept for
    the object's life); unset while auto has not chosen."""

    notes: list[Annotated[str, StringConstraints(max_length=1024)]] = Field(default_factory=list, max_length=32)
    """Why the plan is what it is."""


class JobReference(Section):
    """The child job."""

    api_version: Annotated[str, StringConstraints(max_length=128)] = Field(alias="apiVersion")
    """API version of the job."""

    kind: Literal["PyTorchJob", "MPIJob", "TrainJob"]
    """Kind of the job."""

    name: Name
    """Name of the job."""

    uid: Annotated[str, StringConstraints(max_length=64)] | None = None
    """uid of the job."""


class ProgressStatus(Section):
    """Live training progress, patched by the trainer's rank 0 (rate-limited)."""

    step: Int = Field(0, ge=0, le=INT64_MAX)
    """Optimizer steps done."""

    total_steps: OptionalInt = Field(None, ge=0, le=INT64_MAX)
    """Optimizer steps planned."""

    percent: Int = Field(0, ge=0, le=100)
    """step / totalSteps, in percent."""

    epoch: float | None = Field(None, ge=0)
    """Fractional epoch."""

    loss: float | None = None
    """Latest training loss."""

    samples_per_second: float | None = Field(None, ge=0)
    """Training throughput over all GPUs."""

    eta_seconds: OptionalInt = Field(None, ge=0, le=INT64_MAX)
    """Estimated seconds to the end of training."""

    updated_at: Timestamp | None = None
    """When the trainer last reported."""

    latest_checkpoint_uri: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """The newest complete checkpoint, as the trainer reported it."""

    eval_loss: float | None = None
    """Latest loss on the held-out split, as the trainer reported it."""


class OutputStatus(Section):
    """Where the results are: set by the operator from spec.output once the run succeeded."""

    model_uri: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """The merged model (complete once manifestUri exists)."""

    manifest_uri: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """manifest.json of the published model, written last."""


class InternVLFinetuneStatus(Section):
    """Observed state. The operator owns all of it but progress, which the trainer reports, and
    reverts what anyone else writes there."""

    observed_generation: OptionalInt = Field(None, ge=0, le=INT64_MAX)
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

    attempt: Int = Field(0, ge=0, le=INT32_MAX)
    """Attempt number of the current job (1 for the first)."""

    last_failure_reason: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """Reason of the latest failed attempt."""

    progress: ProgressStatus | None = None
    """Live training progress, reported by the trainer."""

    output: OutputStatus | None = None
    """Where the results are, once the run succeeded."""

    start_time: Timestamp | None = None
    """When the first job started."""

    completion_time: Timestamp | None = None
    """When the run succeeded or finally failed."""


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

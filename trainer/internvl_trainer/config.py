"""The trainer's configuration: the contract between the operator and the trainer.

These pydantic models are the single source of truth for every setting the trainer needs. The
operator's ``InternVLFinetune`` spec reuses them field for field, so the CRD schema, the API
reference (docs/api.md) and the trainer's ``train.yaml`` all come from the classes below. Each
field's docstring is its description in ``kubectl explain``.

``TrainConfig`` is what ``internvl-train run --config train.yaml`` reads. The operator renders it
fully resolved (batch layout, DeepSpeed JSON, every URI); a person can write one by hand as well.
Settings whose InternVL recipe value depends on the model size (learning rate, weight decay, tile
and sequence limits, drop path, global batch) are optional in the CR, where the planner fills
them, and required in ``TrainConfig``, whose ``Resolved*Config`` sections declare them so.

This module must not import torch: the operator image has none.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError, PydanticUndefined

from internvl_trainer.problems import BadInput, Problem, described_pattern, parse_yaml_documents

API_GROUP = "internvl.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

# Every string and list carries a bound: Kubernetes estimates the cost of CEL rules from them.
# Patterns spell character classes out in ASCII: the API server matches them with Go's regexp, whose
# \s, \d and \w are ASCII only, pydantic with Rust's, whose are Unicode. NOT_SPACE is Go's [^\s].
NOT_SPACE = r"[^\t\n\f\r ]"
HTTP_URL = rf"https?://[^/?#@\t\n\f\r ]+([/?#]{NOT_SPACE}*)?"
"""An http:// or https:// URL without credentials (no ``user:password@`` before the host)."""
PLAIN_NAME = described_pattern(r"^[A-Za-z0-9._-]+$", "letters, digits, '.', '_' and '-'")
Name = Annotated[str, StringConstraints(min_length=1, max_length=253)]
Uri = Annotated[
    str,
    StringConstraints(
        max_length=1024,
        pattern=described_pattern(
            rf"^(s3://[a-z0-9][a-z0-9.\-]{{1,61}}[a-z0-9](/{NOT_SPACE}*)?|file:///{NOT_SPACE}*|/{NOT_SPACE}*)$",
            "an s3://bucket/key URI (bucket names have 3 to 63 characters) or an absolute path",
        ),
    ),
]
"""An object-store URI (``s3://bucket/prefix``) or a local path (absolute, or ``file:///``)."""

FREE_FORM = {"x-kubernetes-preserve-unknown-fields": True}
"""Schema marker of a free-form object, such as a DeepSpeed config or a pod affinity."""

MODEL_NAMES = (
    "InternVL2_5-1B",
    "InternVL2_5-2B",
    "InternVL2_5-4B",
    "InternVL2_5-8B",
    "InternVL2_5-26B",
    "InternVL2_5-38B",
    "InternVL2_5-78B",
    "InternVL3-1B",
    "InternVL3-2B",
    "InternVL3-8B",
    "InternVL3-9B",
    "InternVL3-14B",
    "InternVL3-38B",
    "InternVL3-78B",
    "InternVL3_5-1B",
    "InternVL3_5-2B",
    "InternVL3_5-4B",
    "InternVL3_5-8B",
    "InternVL3_5-14B",
    "InternVL3_5-38B",
    "InternVL3_5-30B-A3B",
    "InternVL3_5-241B-A28B",
    "InternVL3_5-GPT-OSS-20B-A4B-Preview",
)
ModelName = Literal[MODEL_NAMES]  # type: ignore[valid-type]


JSON_INTEGER_MAX = 2**53 - 1


def json_integer(value: Any) -> Any:
    """JSON has one kind of number: the API server takes 8.0 for an integer field (and kubectl
    sends YAML's 8.0 as 8), but neither a boolean nor a string."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    if isinstance(value, float) and value.is_integer() and abs(value) <= JSON_INTEGER_MAX:
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(json_integer)]
"""An integer field: an int, or a float without a fraction."""
OptionalInt = Annotated[int | None, BeforeValidator(json_integer)]
"""An optional integer field. (Bounds given to ``Int | None`` would not reach the JSON schema.)"""


class Section(BaseModel):
    """Base of every config section: camelCase on the wire, unknown keys refused, and types
    strict as the API server's are: no string for a number or a boolean, no boolean for a number,
    and no NaN or infinity (JSON has none). A number field takes an integer."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        use_attribute_docstrings=True,
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The section as it is written in YAML: camelCase keys, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---------------------------------------------------------------------------------------------
# model


class ModelConfig(Section):
    """The base model to fine-tune."""

    name: ModelName
    """Catalog name of the base model, such as InternVL3-8B or InternVL2_5-26B. It selects the
    sizes the planner uses and the recipe defaults."""

    weights: Uri
    """Where the base weights are: an S3 URI (s3://bucket/prefix) or an absolute path on a volume
    of the trainer's image. Nothing is downloaded from a model hub."""

    layout: Literal["auto", "original", "hf"] = "auto"
    """Checkpoint layout of the weights: hf (transformers-native InternVLForConditionalGeneration),
    original (OpenGVLab's InternVLChatModel, converted on load), or auto (detected from
    config.json)."""


# ---------------------------------------------------------------------------------------------
# method


LORA_RANK = 16
"""InternVL's LoRA rank (its 2nd-finetune LoRA scripts' ``use_llm_lora 16``)."""


LoraTarget = Literal["llm", "vision", "experts"]
LORA_TARGET_TOWERS: dict[str, str] = {"llm": "llm", "vision": "vision", "experts": "llm"}
"""The tower whose weights each LoRA target adapts (a mixture-of-experts LLM holds the experts)."""


EXPERT_ADAPTERS_WITHOUT_DROPOUT = (
    "must be 0 with target experts: PEFT adapts the experts' stacked tensors without dropout"
)


class LoraConfig(Section):
    """LoRA adapter settings (method lora only)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.targets) || !('experts' in self.targets)"
                    " || (has(self.dropout) && self.dropout == 0.0)",
                    "message": EXPERT_ADAPTERS_WITHOUT_DROPOUT,
                    "fieldPath": ".dropout",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    )

    rank: Int = Field(LORA_RANK, ge=1, le=1024)
    """LoRA rank r."""

    alpha: Int = Field(32, ge=1, le=4096)
    """LoRA scaling alpha; InternVL uses 2 x rank."""

    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""

    targets: list[LoraTarget] = Field(default_factory=lambda: ["llm"], min_length=1, max_length=3)
    """Which parts get adapters: llm (the language model's q/k/v/o projections, and gate/up/down
    where its MLP is dense), optionally vision (the vision tower's attention and MLP) and experts (a
    mixture-of-experts LLM's expert projections, a pair per expert; dropout must then be 0)."""

    @model_validator(mode="after")
    def _expert_adapters_without_dropout(self) -> LoraConfig:
        if "experts" in self.targets and self.dropout != 0:
            problem = InitErrorDetails(
                type=PydanticCustomError("lora_dropout", EXPERT_ADAPTERS_WITHOUT_DROPOUT),
                loc=("dropout",),
                input=self.dropout,
            )
            raise ValidationError.from_exception_data(type(self).__name__, [problem])
        return self


class FreezeConfig(Section):
    """Which parts of the base model stay frozen. Unset flags take the recipe's default for the
    method: full trains the projector and the LLM with the vision tower frozen; lora freezes all
    three and trains only the adapters."""

    vision: bool | None = None
    """Freeze the vision tower (InternViT)."""

    projector: bool | None = None
    """Freeze the projector (mlp1) between the vision tower and the LLM."""

    llm: bool | None = None
    """Freeze the language model's own weights."""


METHOD_FREEZE_DEFAULTS = {
    "full": {"vision": True, "projector": False, "llm": False},
    "lora": {"vision": True, "projector": True, "llm": True},
}


def lora_on_a_trained_tower(tower: str, target: str | None = None) -> str:
    """Why LoRA cannot target (``target``, by default the tower itself) a tower that
    ``method.freeze.<tower>: false`` trains in full: PEFT keeps adapters out of modules that train
    in full, which would leave that target without any."""
    return (
        f"false trains the whole {tower} tower in full, so LoRA target {target or tower} has nothing to adapt;"
        " keep the tower frozen or drop the target"
    )


def vision_layers_beyond_depth(unfreeze_vision_layers: int, depth: int) -> str | None:
    """Why ``method.unfreezeVisionLayers`` cannot be met by a vision tower ``depth`` layers deep
    (None when it can): a rule on the model, checked by the planner from the catalog's depth and by
    the trainer on the loaded model."""
    if unfreeze_vision_layers <= depth:
        return None
    return f"{unfreeze_vision_layers} exceeds the vision tower's {depth} layers"


class MethodConfig(Section):
    """How the model is trained: full fine-tuning or LoRA, and what is frozen."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.type == 'lora' || !has(self.lora)",
                    "message": "lora settings are only allowed with method type lora",
                    "fieldPath": ".lora",
                    "reason": "FieldValueForbidden",
                },
                # llm is a default target: unset targets (or unset lora settings) include it.
                {
                    "rule": "self.type != 'lora' || !has(self.freeze) || !has(self.freeze.llm) || self.freeze.llm"
                    " || (has(self.lora) && has(self.lora.targets) && !('llm' in self.lora.targets))",
                    "message": lora_on_a_trained_tower("llm"),
                    "fieldPath": ".freeze.llm",
                    "reason": "FieldValueInvalid",
                },
                {
                    "rule": "self.type != 'lora' || !has(self.freeze) || !has(self.freeze.vision) || self.freeze.vision"
                    " || !has(self.lora) || !has(self.lora.targets) || !('vision' in self.lora.targets)",
                    "message": lora_on_a_trained_tower("vision"),
                    "fieldPath": ".freeze.vision",
                    "reason": "FieldValueInvalid",
                },
                {
                    "rule": "self.type != 'lora' || !has(self.freeze) || !has(self.freeze.llm) || self.freeze.llm"
                    " || !has(self.lora) || !has(self.lora.targets) || !('experts' in self.lora.targets)",
                    "message": lora_on_a_trained_tower("llm", "experts"),
                    "fieldPath": ".freeze.llm",
                    "reason": "FieldValueInvalid",
                },
            ]
        }
    )

    type: Literal["full", "lora"] = "lora"
    """full fine-tunes the unfrozen weights; lora trains low-rank adapters and merges them at the
    end."""

    lora: LoraConfig | None = None
    """LoRA settings; only with type lora. Defaults: rank 16, alpha 32, dropout 0.05, LLM only."""

    freeze: FreezeConfig = Field(default_factory=FreezeConfig)
    """Freeze flags; unset ones follow the method's recipe."""

    unfreeze_vision_layers: Int = Field(0, ge=0, le=128)
    """Train the last N layers of the vision tower even when the tower is frozen."""

    drop_path_rate: float | None = Field(None, ge=0.0, le=1.0)
    """Stochastic depth rate of the vision tower. Unset: the recipe's value for the model size.
    A frozen vision tower runs in eval mode, so this only acts on trained vision layers."""

    @model_validator(mode="after")
    def _lora_only_with_lora(self) -> MethodConfig:
        if self.lora is not None and self.type != "lora":
            raise ValueError("lora settings are only allowed with method type lora")
        return self

    @model_validator(mode="after")
    def _adapters_on_frozen_towers(self) -> MethodConfig:
        lora, freeze = self.resolved_lora(), self.resolved_freeze()
        if lora is None:
            return self
        problems = [
            InitErrorDetails(
                type=PydanticCustomError("lora_target", lora_on_a_trained_tower(tower, target)),
                loc=("freeze", tower),
                input=False,
            )
            for target in lora.targets
            if getattr(freeze, tower := LORA_TARGET_TOWERS[target]) is False
        ]
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    def resolved_lora(self) -> LoraConfig | None:
        """The LoRA settings in force: None for full, the defaults when lora is not spelled out."""
        if self.type != "lora":
            return None
        return self.lora or LoraConfig()

    def resolved_freeze(self) -> FreezeConfig:
        """The freeze flags in force, the method's recipe filling the unset ones."""
        defaults = METHOD_FREEZE_DEFAULTS[self.type]
        given = self.freeze.model_dump(exclude_none=True)
        return FreezeConfig(**{**defaults, **given})


# ---------------------------------------------------------------------------------------------
# data


class VideoConfig(Section):
    """How frames are taken from videos."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.minFrames) || !has(self.maxFrames) || self.minFrames <= self.maxFrames",
                    "message": "minFrames must not exceed maxFrames",
                    "fieldPath": ".minFrames",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    )

    sampling: Annotated[
        str,
        StringConstraints(
            max_length=16,
            pattern=described_pattern(
                r"^(rand|middle|fps[0-9]+(\.[0-9]+)?)$", "rand, middle or fpsN (such as fps1 or fps0.5)"
            ),
        ),
    ] = "rand"
    """Frame sampling: rand (a random frame in each of N equal segments), middle (the middle frame
    of each segment), or fpsN such as fps1 or fps0.5 (N frames per second, clamped to the limits)."""

    min_frames: Int = Field(8, ge=1, le=512)
    """Fewest frames taken from a video."""

    max_frames: Int = Field(32, ge=1, le=512)
    """Most frames taken from a video."""

    frame_label: Annotated[str, StringConstraints(max_length=64)] = "Frame{i}: "
    """Text placed before each frame's image tokens; {i} is the 1-based frame number. The default
    matches InternVL's inference code."""

    @model_validator(mode="after")
    def _frame_bounds(self) -> VideoConfig:
        if self.min_frames > self.max_frames:
            raise ValueError(f"minFrames ({self.min_frames}) exceeds maxFrames ({self.max_frames})")
        return self


MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
"""Pillow's default decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``: a quarter GiB of
24-bit pixels), the default of ``data.maxImagePixels``."""


class RecipeLimits(NamedTuple):
    """The sequence and tile limits of one family's 2nd-finetune recipes."""

    max_seq_length: int
    max_tiles: int


RECIPE_LIMITS = {
    "InternVL2_5": RecipeLimits(8192, 6),
    "InternVL3": RecipeLimits(16384, 12),
    "InternVL3_5": RecipeLimits(32768, 12),
}
"""What unset ``data.maxSeqLength`` and ``data.maxTiles`` become, by model family, the part of the
model name before the first hyphen (reference/internvl-recipe.md §8.2, §8.3; InternVL3.5: the
``--max_seq_length 32768`` and ``--max_dynamic_patch 12`` of every SFT script under InternVL's
internvl_chat_gpt_oss/shell/)."""

DEFAULT_MAX_TILES = RECIPE_LIMITS["InternVL3"].max_tiles
"""InternVL's ``max_dynamic_patch`` where nothing else sets one: its chat model's config default,
and InternVL3's recipe."""


def recipe_limits(model_name: str) -> RecipeLimits:
    """The recipe limits of a catalog model's family."""
    return RECIPE_LIMITS[model_name.split("-", 1)[0]]


class DataConfig(Section):
    """The training data: an InternVL meta.json and how samples become sequences."""

    meta: Uri
    """The InternVL meta.json (or meta.yaml) that lists the datasets: their root, annotation
    JSONL, repeat_time and data_augment."""

    max_seq_length: OptionalInt = Field(None, ge=128, le=1048576)
    """Longest token sequence. Unset: the recipe's (8192 for InternVL 2.5, 16384 for InternVL3, 32768
    for InternVL3.5)."""

    max_tiles: OptionalInt = Field(None, ge=1, le=64)
    """Most 448-pixel tiles per image (max_dynamic_patch). Unset: the recipe's (6 for InternVL 2.5,
    12 for InternVL3 and 3.5). A dataset in meta.json may override it."""

    min_tiles: Int = Field(1, ge=1, le=64)
    """Fewest tiles per image (min_dynamic_patch)."""

    packing: bool = True
    """Pack several samples into one sequence up to the token and tile budgets; attention stays
    within each sample."""

    overlong: Literal["skip", "truncate", "reduce-tiles"] = "skip"
    """What happens to a sample longer than maxSeqLength: skip it, truncate its text after the last
    image, or reduce-tiles (the largest smaller tile budget that fits; fewer frames for a video, not
    below minFrames). A sample that cannot be made to fit is skipped. Each outcome is counted in the
    data report."""

    video: VideoConfig = Field(default_factory=VideoConfig)
    """Video frame sampling."""

    max_image_pixels: Int = Field(MAX_IMAGE_PIXELS, ge=1048576, le=2 * MAX_IMAGE_PIXELS)
    """Most pixels (width × height) an image may have; a larger one is a bad sample of kind
    image, refused from its header before any pixel is decoded (a decompression bomb: a 20000 ×
    20000 PNG of one colour takes under 100 KB on disk and 1.2 GB as RGB pixels). Default:
    Pillow's own limit. At most twice that, past which Pillow refuses to open an image whatever
    this setting says."""

    strict: bool = False
    """Fail on the first bad sample instead of skipping and counting it (an over-long sample the
    overlong policy drops included)."""

    eval_split: float = Field(0.0, ge=0.0, le=0.5)
    """Fraction of samples held out for evaluation (chosen with the seed)."""

    workers: Int = Field(4, ge=0, le=64)
    """Data-loader worker processes per GPU."""


# ---------------------------------------------------------------------------------------------
# training


class TrainingConfig(Section):
    """Optimisation hyperparameters and checkpointing."""

    epochs: float = Field(1.0, gt=0.0, le=1000.0)
    """Passes over the data; ignored when maxSteps is set."""

    max_steps: OptionalInt = Field(None, ge=1, le=100000000)
    """Optimizer steps to run; overrides epochs."""

    global_batch_size: OptionalInt = Field(None, ge=1, le=1048576)
    """Samples per optimizer step over all GPUs. Unset: the recipe's (128 full, 16 LoRA)."""

    learning_rate: float | None = Field(None, gt=0.0, le=1.0)
    """Peak learning rate. Unset: the recipe's for the model size and method."""

    warmup_ratio: float = Field(0.03, ge=0.0, le=1.0)
    """Fraction of steps spent warming the learning rate up."""

    weight_decay: float | None = Field(None, ge=0.0, le=1.0)
    """AdamW weight decay (not applied to norms, biases and embeddings). Unset: the recipe's."""

    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warmup."""

    max_grad_norm: float = Field(1.0, gt=0.0, le=1000.0)
    """Gradient clipping norm."""

    loss_reduction: Literal["token", "sample", "square"] = "token"
    """How token losses are averaged: token (every supervised token weighs the same), sample
    (every sample weighs the same) or square (weight 1/sqrt(tokens), InternVL's pretraining
    choice). The normaliser is global across GPUs and accumulation steps."""

    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass to save memory."""

    save_steps: Int = Field(200, ge=1, le=10000000)
    """Write a checkpoint every N optimizer steps."""

    eval_steps: OptionalInt = Field(None, ge=1, le=10000000)
    """Evaluate on the held-out split every N steps; unset evaluates once at the end."""

    checkpoints_kept: Int = Field(2, ge=1, le=100)
    """How many of the newest complete checkpoints are kept."""

    logging_steps: Int = Field(1, ge=1, le=100000)
    """Log metrics every N steps."""

    seed: Int = Field(42, ge=0, le=2147483647)
    """Seed for sampling, shuffling, the eval split and initialisation."""


# ---------------------------------------------------------------------------------------------
# storage and output


class StorageConfig(Section):
    """The S3-compatible object store. Credentials come from the standard AWS environment
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), never from this file."""

    endpoint: (
        Annotated[
            str,
            StringConstraints(
                max_length=512,
                pattern=described_pattern(
                    rf"^{HTTP_URL}$",
                    "an http:// or https:// URL without credentials (user:password@): they come from the Secret",
                ),
            ),
        ]
        | None
    ) = None
    """Endpoint URL of an S3-compatible server (MinIO, SeaweedFS, Ceph); unset uses AWS S3. It
    may not carry credentials (user:password@host): they come from the environment (the
    credentials Secret) only."""

    region: Annotated[
        str,
        StringConstraints(max_length=64, pattern=described_pattern(r"^[a-z0-9-]+$", "a region name such as us-east-1")),
    ] = "us-east-1"
    """Region of the bucket."""

    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    """Bucket addressing: path (endpoint/bucket/key, what most self-hosted servers need),
    virtual (bucket.endpoint/key) or auto."""


class OutputConfig(Section):
    """Where results go and in which form."""

    uri: Uri
    """Output root. The merged model, its manifest.json (written last), checkpoints scoped by the
    run's uid, metrics and TensorBoard logs go under it (see docs/contract.md)."""

    merge_lora: bool = True
    """Merge the LoRA adapters into the base weights before export (method lora)."""

    layouts: list[Literal["hf", "original"]] = Field(default_factory=lambda: ["hf"], min_length=1, max_length=2)
    """Checkpoint layouts to export: hf (transformers-native) and/or original (InternVLChatModel)."""


MODEL_FOLDERS = {"hf": "model", "original": "model-original"}
"""The folder under the output root that each exported layout is published in."""


class OutputLayout(BaseModel):
    """The URIs under an output root, as docs/contract.md lays them out."""

    model_config = ConfigDict(frozen=True)

    root: str
    run: str
    checkpoints: str
    metrics: str
    tensorboard: str
    plots: str
    data_report: str
    model: str
    model_original: str
    manifest: str

    @classmethod
    def under(cls, output_uri: str, run_uid: str) -> OutputLayout:
        root = output_uri.rstrip("/")
        run = f"{root}/runs/{run_uid}"
        return cls(
            root=root,
            run=run,
            checkpoints=f"{run}/checkpoints",
            metrics=f"{run}/metrics.jsonl",
            tensorboard=f"{run}/tensorboard",
            plots=f"{run}/plots",
            data_report=f"{run}/data-report.json",
            model=f"{root}/{MODEL_FOLDERS['hf']}",
            model_original=f"{root}/{MODEL_FOLDERS['original']}",
            manifest=f"{root}/manifest.json",
        )

    def models(self) -> dict[str, str]:
        """Where each exported layout is published."""
        return {"hf": self.model, "original": self.model_original}


# ---------------------------------------------------------------------------------------------
# experiment tracking


class MlflowConfig(Section):
    """An MLflow tracking server: each attempt is one MLflow run, named after the run and the
    attempt, with train.yaml as its parameters and the training and evaluation metrics by step."""

    tracking_uri: Annotated[
        str,
        StringConstraints(
            max_length=1024,
            pattern=described_pattern(
                rf"^({HTTP_URL}|databricks(://[A-Za-z0-9._-]+)?|sqlite:///{NOT_SPACE}+)$",
                "an http:// or https:// URL without credentials (user:password@: they come from the Secret),"
                " databricks, databricks://PROFILE or sqlite:///path",
            ),
        ),
    ]
    """URL of the MLflow tracking server, such as http://mlflow.mlflow:5000 (databricks for a
    Databricks workspace; sqlite:///path for a database file, on a laptop). It may not carry credentials
    (user:password@host): they come from the environment (the credentials Secret) only. The run
    checks before training that the server answers and takes the credentials."""

    experiment: Annotated[
        str,
        StringConstraints(
            min_length=1,
            max_length=500,
            pattern=described_pattern(r"^[^\t\n\f\r]+$", "a name on one line"),
        ),
    ]
    """Name of the MLflow experiment the runs go to; created when it does not exist (Databricks
    wants a workspace path such as /Users/me@example.com/internvl)."""

    log_artifacts: bool = False
    """Copy the published model and its manifest.json into the run's artifacts. Off: the run
    carries their URIs as the tags internvl.modelUri and internvl.manifestUri and nothing is
    copied."""


class WandbConfig(Section):
    """Weights & Biases: each attempt is one W&B run, named after the run and the attempt and
    grouped by the run's uid, with train.yaml in its config and the training and evaluation
    metrics by step."""

    project: Annotated[
        str,
        StringConstraints(
            min_length=1,
            max_length=128,
            pattern=described_pattern(r"^[^/\\#?%:\t\n\f\r]+$", "a project name without / \\ # ? % :"),
        ),
    ]
    """W&B project the runs go to."""

    entity: (
        Annotated[
            str,
            StringConstraints(max_length=128, pattern=PLAIN_NAME),
        ]
        | None
    ) = None
    """W&B team or user that owns the project. Unset: the API key's default entity."""


class TrackingConfig(Section):
    """Experiment trackers the run reports to besides metrics.jsonl and TensorBoard, from the
    main process only. Their credentials come from the environment, never from this file."""

    mlflow: MlflowConfig | None = None
    """Report to an MLflow tracking server."""

    wandb: WandbConfig | None = None
    """Report to Weights & Biases."""


# ---------------------------------------------------------------------------------------------
# the resolved run


class BatchLayout(Section):
    """How the global batch is split; global = perDevice x accumulation x world size."""

    per_device_batch_size: Int = Field(ge=1, le=4096)
    """Samples (or packed sequences) per GPU per micro-step."""

    gradient_accumulation_steps: Int = Field(ge=1, le=65536)
    """Micro-steps per optimizer step."""

    world_size: Int = Field(1, ge=1, le=65536)
    """Training processes over all nodes; the launcher's WORLD_SIZE must agree."""


class RunConfig(Section):
    """Identity of the run; checkpoints are scoped by uid, so a re-created object never resumes
    from a stale run."""

    name: Name = "local"
    """Name of the InternVLFinetune (or of a local run)."""

    uid: Annotated[
        str,
        StringConstraints(
            min_length=1,
            max_length=64,
            pattern=PLAIN_NAME,
        ),
    ] = "local"
    """uid of the InternVLFinetune; names the run's folder under the output root."""

    resume: Literal["latest", "never"] = "latest"
    """Resume from the newest complete checkpoint of this run, if there is one."""


TRAIN_CONFIG_KIND = "TrainConfig"


def required_in_train_yaml(section: type[Section], name: str) -> Any:
    """The field ``name`` of ``section`` with its bounds and description, required: a recipe value
    the CR may leave unset (the planner fills it) and train.yaml always holds."""
    field = copy.copy(section.model_fields[name])
    field.default = PydanticUndefined
    field.description = f"{field.description} In train.yaml it is required (the operator writes the value it resolved)."
    return field


class ResolvedMethodConfig(MethodConfig):
    """``method`` of train.yaml: the drop-path rate resolved."""

    drop_path_rate: float = required_in_train_yaml(MethodConfig, "drop_path_rate")


class ResolvedDataConfig(DataConfig):
    """``data`` of train.yaml: the sequence and tile limits resolved."""

    max_seq_length: int = required_in_train_yaml(DataConfig, "max_seq_length")
    max_tiles: int = required_in_train_yaml(DataConfig, "max_tiles")


class ResolvedTrainingConfig(TrainingConfig):
    """``training`` of train.yaml: the global batch, learning rate and weight decay resolved."""

    global_batch_size: int = required_in_train_yaml(TrainingConfig, "global_batch_size")
    learning_rate: float = required_in_train_yaml(TrainingConfig, "learning_rate")
    weight_decay: float = required_in_train_yaml(TrainingConfig, "weight_decay")


class TrainConfig(Section):
    """train.yaml: everything one training run needs besides its environment."""

    api_version: Literal["internvl.dev/v1alpha1"] = Field(GROUP_VERSION, alias="apiVersion")
    """Version of this file's format."""

    kind: Literal["TrainConfig"] = TRAIN_CONFIG_KIND
    """Always TrainConfig."""

    run: RunConfig = Field(default_factory=RunConfig)
    """Identity of the run."""

    model: ModelConfig
    """The base model."""

    method: ResolvedMethodConfig
    """Full fine-tuning or LoRA, and what is frozen."""

    data: ResolvedDataConfig
    """The training data."""

    training: ResolvedTrainingConfig
    """Hyperparameters and checkpointing."""

    batch: BatchLayout
    """The batch layout over the processes."""

    deepspeed: dict[str, Any] | None = Field(None, json_schema_extra=FREE_FORM)
    """DeepSpeed config, inline. Unset: plain data parallel (or one process)."""

    storage: StorageConfig = Field(default_factory=StorageConfig)
    """The object store."""

    output: OutputConfig
    """Where results go."""

    tracking: TrackingConfig | None = None
    """Experiment trackers (MLflow, Weights & Biases). Unset: metrics.jsonl and TensorBoard only."""

    @model_validator(mode="after")
    def _batch_layout(self) -> TrainConfig:
        batch = self.batch
        product = batch.per_device_batch_size * batch.gradient_accumulation_steps * batch.world_size
        if product != self.training.global_batch_size:
            message = (
                f"{batch.per_device_batch_size} per device x {batch.gradient_accumulation_steps} accumulation x "
                f"{batch.world_size} processes = {product}, but training.globalBatchSize is "
                f"{self.training.global_batch_size}"
            )
            error = InitErrorDetails(type=PydanticCustomError("batch_layout", message), loc=("batch",), input=None)
            raise ValidationError.from_exception_data(type(self).__name__, [error])
        return self

    @property
    def layout(self) -> OutputLayout:
        """The URIs this run reads and writes under the output root."""
        return OutputLayout.under(self.output.uri, self.run.uid)


def load_train_config(text: str, source: str = "train.yaml") -> TrainConfig:
    """Parse and validate train.yaml text, read as kubectl reads YAML. Raises BadInput naming
    ``source`` and the line of YAML that cannot be read, or when it is not one document;
    pydantic.ValidationError on bad content."""
    documents = parse_yaml_documents(text, source)
    if len(documents) != 1:
        raise BadInput([Problem(source, f"expected one YAML document, found {len(documents)}")])
    return TrainConfig.model_validate(documents[0])


def dump_train_config(config: TrainConfig) -> str:
    """train.yaml text for a config, in the order of the model's fields."""
    return yaml.safe_dump(config.to_wire(), sort_keys=False)

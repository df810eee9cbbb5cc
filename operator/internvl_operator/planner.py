"""The sizing planner: nodes, GPUs, ZeRO stage, offload and batch layout for one InternVLFinetune.

``plan(spec)`` is a pure function of the spec: the catalog gives the model's sizes, the recipes
give InternVL's numbers, the memory model gives the estimate per GPU. Two policies:

- ``recipe`` reproduces InternVL's 2nd-finetune script for the model and method exactly (GPUs,
  per-device batch, accumulation, ZeRO config, learning rate, weight decay, drop path, limits).
  Its layout stands even when the estimate exceeds the GPU (offload ``auto`` does not change it):
  the plan then says so with numbers (verdict ``exceeds``), because InternVL's scripts count on
  most batches being shorter than the sequence limit, while the estimate assumes full-length ones.
- ``minimal`` keeps the global batch and picks the fewest GPUs (whole nodes beyond one node),
  then the lowest ZeRO stage, then the largest per-device batch whose estimate fits within
  ``memory.GPU_BUDGET_FRACTION`` of the GPU; CPU offload only when nothing fits without it.
  When nothing fits at all, the verdict is ``nothing-fits`` and the notes give the numbers.

GPUs or a ZeRO stage given in the spec win over both policies (the plan's policy is then
``explicit`` when both are given). Values the spec sets (learning rate, limits, global batch)
win over the recipe's.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import isqrt
from typing import Any, Literal

from annotated_types import Le
from kubernetes.utils.quantity import parse_quantity
from pydantic import BaseModel, Field

from internvl_operator.api import InternVLFinetuneSpec, PlanStatus, ResourcesSpec
from internvl_operator.catalog import CATALOG, LLM_TOKENS_PER_TILE, ModelSpec
from internvl_operator.deepspeed import ZeroVariant, deepspeed_config, variant_for
from internvl_operator.memory import (
    GIB,
    GPU_BUDGET_FRACTION,
    MemoryEstimate,
    Trainable,
    budget_gib,
    estimate,
    expert_placement,
    offload_host_gib,
)
from internvl_operator.recipes import Recipe, recipe_for
from internvl_trainer.config import BatchLayout, DataConfig, MethodConfig, Section, vision_layers_beyond_depth
from internvl_trainer.problems import BadInput, Problem

Verdict = Literal["fits", "exceeds", "nothing-fits"]


def _maximum(model: type[BaseModel], field: str) -> int:
    """The upper bound (``le``) a model puts on one of its fields."""
    return next(bound.le for bound in model.model_fields[field].metadata if isinstance(bound, Le))


# The bounds train.yaml puts on a batch layout: a plan outside them could never be rendered.
MAX_PER_DEVICE_BATCH = _maximum(BatchLayout, "per_device_batch_size")
MAX_ACCUMULATION = _maximum(BatchLayout, "gradient_accumulation_steps")
MAX_GPUS = min(_maximum(BatchLayout, "world_size"), _maximum(ResourcesSpec, "gpus"))
MAX_NOTES = 32
MAX_NOTE_LENGTH = 1024
# Parts of an estimate that more GPUs do not shrink.
_PER_GPU_FLOOR = (
    "gathered weights (ZeRO-3)",
    "communication buckets",
    "framework",
    "layer checkpoints",
    "layer activations",
    "logits",
    "layer recompute",
    "vision activations",
    "vision forward",
)


class Plan(Section):
    """The planned run: where it goes, how the batch splits, and what one GPU is expected to hold."""

    model: str
    method: Literal["full", "lora"]
    policy: Literal["recipe", "minimal", "explicit"]
    verdict: Verdict
    """fits: the estimate is within the budget; exceeds: the layout is fixed (recipe or spec) but
    its estimate is over the budget; nothing-fits: policy minimal found no layout that fits."""
    nodes: int
    gpus_per_node: int
    gpus: int
    zero_stage: int
    offload: bool
    deepspeed_variant: str
    per_device_batch_size: int
    gradient_accumulation_steps: int
    global_batch_size: int
    learning_rate: float
    weight_decay: float
    drop_path_rate: float
    max_seq_length: int
    max_tiles: int
    gpu_memory_gib: float = Field(alias="gpuMemoryGiB")
    budget_gib: float = Field(alias="budgetGiB")
    memory: MemoryEstimate
    recipe: str | None = None
    """The InternVL script the recipe values come from."""
    notes: list[str] = Field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.verdict == "fits"

    def to_status(self) -> PlanStatus:
        """The plan as the object's status shows it."""
        return PlanStatus(
            nodes=self.nodes,
            gpus_per_node=self.gpus_per_node,
            gpus=self.gpus,
            zero_stage=self.zero_stage,
            offload=self.offload,
            per_device_batch_size=self.per_device_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            estimated_memory_gib=self.memory.total_gib,
            policy=self.policy,
            notes=[note[:MAX_NOTE_LENGTH] for note in self.notes[:MAX_NOTES]],
        )

    def batch_layout(self) -> BatchLayout:
        """The batch layout for train.yaml."""
        return BatchLayout(
            per_device_batch_size=self.per_device_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            world_size=self.gpus,
        )

    def deepspeed_config(self) -> dict[str, Any]:
        """The DeepSpeed JSON for train.yaml."""
        return deepspeed_config(self.deepspeed_variant)


def trainable_of(method: MethodConfig, model: ModelSpec) -> Trainable:
    """What a method trains, the freeze flags and LoRA targets resolved. Raises BadInput when the
    method unfreezes more vision layers than the model's tower has, or puts LoRA on the experts of
    a model without any (the trainer would refuse both)."""
    freeze = method.resolved_freeze()
    lora = method.resolved_lora()
    depth = model.vision.layers
    beyond = vision_layers_beyond_depth(method.unfreeze_vision_layers, depth)
    if beyond:
        raise BadInput([Problem("spec.method.unfreezeVisionLayers", beyond)])
    if lora and "experts" in lora.targets and not model.is_moe:
        raise BadInput(
            [Problem("spec.method.lora.targets", f"experts, but {model.name}'s language model has no experts")]
        )
    return Trainable(
        vision_layers=depth if not freeze.vision else method.unfreeze_vision_layers,
        projector=not freeze.projector,
        llm=not freeze.llm,
        lora_rank=lora.rank if lora else None,
        lora_llm=bool(lora and "llm" in lora.targets),
        lora_vision=bool(lora and "vision" in lora.targets),
        lora_experts=bool(lora and "experts" in lora.targets),
        lora_dropout=bool(lora and lora.dropout > 0),
    )


def tiles_per_sequence(data: DataConfig, max_tiles: int, max_seq_length: int) -> int:
    """The most tiles one sequence can send through the vision tower. Packed, every token could be
    an image token, so a sequence carries up to maxSeqLength / 256 tiles; unpacked, one sample
    brings its image's grid plus the thumbnail, or one tile per video frame."""
    if data.packing:
        return max(1, max_seq_length // LLM_TOKENS_PER_TILE)
    return max(max_tiles + 1 if max_tiles > 1 else 1, data.video.max_frames)


class _Context:
    """What every candidate layout of one spec shares, the global batch settled once. Nothing
    changes it after construction."""

    def __init__(self, spec: InternVLFinetuneSpec):
        self.spec = spec
        self.model = CATALOG[spec.model.name]
        self.recipe, recipe_notes = recipe_for(self.model.name, spec.method.type)
        self.recipe_notes = tuple(recipe_notes)
        recipe = self.recipe
        training, data = spec.training, spec.data
        self.learning_rate = _given(training.learning_rate, recipe.learning_rate)
        self.weight_decay = _given(training.weight_decay, recipe.weight_decay)
        self.drop_path_rate = _given(spec.method.drop_path_rate, recipe.drop_path_rate)
        self.max_seq_length = _given(data.max_seq_length, recipe.max_seq_length)
        self.max_tiles = _given(data.max_tiles, recipe.max_tiles)
        self.trainable = trainable_of(spec.method, self.model)
        self.gpus_per_node = spec.resources.gpus_per_node
        self.gpu_memory_gib = float(spec.resources.gpu_memory_gib)
        self.budget = budget_gib(self.gpu_memory_gib)
        self.host_limit_gib = host_memory_gib(spec)
        _check_offload(spec)
        self.global_batch_size, self.batch_note = _settled_global_batch(spec, recipe)

    def host_gib_per_node(self, gpus: int) -> float:
        return offload_host_gib(self.model, self.trainable) / _node_layout(gpus, self.gpus_per_node)[0]

    def host_fits(self, gpus: int, offload: bool) -> bool:
        """Whether an offloading layout's host memory fits the pod memory the spec sets."""
        return not offload or self.host_limit_gib is None or self.host_gib_per_node(gpus) <= self.host_limit_gib

    def host_note(self, gpus: int) -> str:
        return (
            f"CPU offload needs about {self.host_gib_per_node(gpus):.0f} GiB of host memory per node, more than "
            f"the {self.host_limit_gib:g} GiB spec.resources.memory sets"
        )

    def estimate(self, gpus: int, zero: ZeroVariant, per_device: int) -> MemoryEstimate:
        return estimate(
            self.model,
            self.trainable,
            gpus=gpus,
            deepspeed=zero.config(),
            per_device_batch_size=per_device,
            max_seq_length=self.max_seq_length,
            tiles_per_sequence=tiles_per_sequence(self.spec.data, self.max_tiles, self.max_seq_length),
            gradient_checkpointing=self.spec.training.gradient_checkpointing,
        )

    def per_device_batches(self, gpus: int) -> list[int]:
        """The per-device batches that lay the global batch out over ``gpus`` GPUs within the
        bounds of train.yaml, smallest first; BadInput when there is none."""
        total = self.global_batch_size
        choices = _per_device_batches(total // gpus)
        if not choices:
            raise BadInput([Problem("spec.training.globalBatchSize", _no_layout(total, gpus))])
        return choices


def _check_offload(spec: InternVLFinetuneSpec) -> None:
    deepspeed = spec.deepspeed
    if deepspeed.offload == "cpu" and deepspeed.stage in (1, 2):
        raise BadInput(
            [Problem("spec.deepspeed.offload", f"cpu offload needs ZeRO stage 3, got stage {deepspeed.stage}")]
        )


def _settled_global_batch(spec: InternVLFinetuneSpec, recipe: Recipe) -> tuple[int, str | None]:
    """The global batch of the plan, and why it differs from the recipe's (None when it does not).
    Over a GPU count the layout cannot change (the spec's, or the recipe's under policy recipe),
    a recipe batch that does not split is rounded to the nearest multiple; one the spec sets is
    refused. Policy minimal otherwise only picks GPU counts that divide it."""
    total = _given(spec.training.global_batch_size, recipe.global_batch_size)
    gpus = spec.resources.gpus
    if gpus is None and spec.resources.policy == "recipe":
        gpus = recipe.gpus
    if gpus is None or total % gpus == 0:
        return total, None
    if spec.training.global_batch_size is not None:
        raise BadInput(
            [
                Problem(
                    "spec.training.globalBatchSize",
                    f"{total} does not split over {gpus} GPUs; use a multiple of {gpus}",
                )
            ]
        )
    adjusted = max(gpus, round(total / gpus) * gpus)
    return adjusted, f"global batch {adjusted} instead of the recipe's {total}: {total} does not split over {gpus} GPUs"


def host_memory_gib(spec: InternVLFinetuneSpec) -> float | None:
    """The pod memory spec.resources.memory requests, in GiB (None when it requests none). Read
    with the Kubernetes client's quantity parser: every suffix and exponent the API server takes."""
    memory = spec.resources.memory
    if memory is None:
        return None
    try:
        return float(parse_quantity(memory)) / GIB
    except (ValueError, ArithmeticError):  # an exponent beyond what a decimal can hold
        raise BadInput(
            [Problem("spec.resources.memory", f"{memory!r} is not a quantity Kubernetes can read")]
        ) from None


def _per_device_batches(share: int) -> list[int]:
    """Divisors of a GPU's share of the global batch that are a per-device batch within bounds
    and leave an accumulation within bounds, smallest first."""
    return [d for d in _divisors(share) if d <= MAX_PER_DEVICE_BATCH and share // d <= MAX_ACCUMULATION]


def _no_layout(total: int, gpus: int) -> str:
    return (
        f"{total} samples over {gpus} GPU{'s' if gpus > 1 else ''} cannot be laid out: {total // gpus} per GPU must "
        f"be a per-device batch of at most {MAX_PER_DEVICE_BATCH} times at most {MAX_ACCUMULATION} accumulation "
        f"steps; use a global batch whose share per GPU is such a product"
    )


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def _divisors(number: int) -> list[int]:
    """The divisors of a positive number, in ascending order (O(sqrt(number)))."""
    low = [d for d in range(1, isqrt(number) + 1) if number % d == 0]
    return low + [number // d for d in reversed(low) if d * d != number]


def _node_layout(gpus: int, gpus_per_node: int) -> tuple[int, int]:
    return (1, gpus) if gpus <= gpus_per_node else (gpus // gpus_per_node, gpus_per_node)


def _gpu_counts(gpus_per_node: int, global_batch: int) -> list[int]:
    """GPU counts policy minimal may use: up to one node, then whole nodes up to the most GPUs a
    spec may name, each dividing the global batch."""
    most = min(global_batch, MAX_GPUS)
    counts = list(range(1, gpus_per_node + 1)) + list(range(2 * gpus_per_node, most + 1, gpus_per_node))
    return [n for n in counts if global_batch % n == 0]


def _describe(memory: MemoryEstimate, count: int = 3) -> str:
    return ", ".join(f"{part.name} {part.gib:.1f}" for part in memory.largest(count))


def _over_budget(context: _Context, memory: MemoryEstimate, per_device: int) -> str:
    return (
        f"estimated {memory.total_gib:.1f} GiB per GPU exceeds the {context.budget:.1f} GiB budget "
        f"({GPU_BUDGET_FRACTION:.0%} of {context.gpu_memory_gib:g} GiB) with full-length sequences "
        f"({per_device} x {context.max_seq_length} tokens per GPU); largest parts: {_describe(memory)} GiB"
    )


def plan(spec: InternVLFinetuneSpec) -> Plan:
    """The plan for a spec. Raises BadInput when the spec's own choices contradict each other."""
    context = _Context(spec)
    resources = spec.resources
    explicit = resources.gpus is not None and spec.deepspeed.stage is not None
    layout = _recipe_layout(context) if resources.policy == "recipe" else _minimal_layout(context)
    zero = layout.zero

    notes = [layout.lead, *context.recipe_notes, *layout.notes]
    if context.recipe.trains_vision and context.trainable.vision_layers < context.model.vision.layers:
        notes.append(
            f"InternVL's {context.recipe.script} trains the vision tower too (--freeze_backbone False); "
            "spec.method.freeze.vision: false does the same"
        )
    placement = expert_placement(
        context.model, context.trainable, gpus=layout.gpus, stage=zero.stage, offload=zero.offload
    )
    if placement:
        notes.append(placement)
    if spec.method.type == "lora" and zero.stage == 3:
        notes.append(
            "LoRA under ZeRO-3: InternVL issue #905 reports adapters that never change with InternVL's own code; "
            "check that the LoRA weights move in the first steps"
        )
    if zero.offload:
        notes.append(
            f"CPU offload keeps weights and optimizer states in host memory: about "
            f"{context.host_gib_per_node(layout.gpus):.0f} GiB per node"
        )
    nodes, per_node = _node_layout(layout.gpus, context.gpus_per_node)
    return Plan(
        model=context.model.name,
        method=spec.method.type,
        policy="explicit" if explicit else resources.policy,
        verdict=layout.verdict,
        nodes=nodes,
        gpus_per_node=per_node,
        gpus=layout.gpus,
        zero_stage=zero.stage,
        offload=zero.offload,
        deepspeed_variant=zero.name,
        per_device_batch_size=layout.per_device_batch_size,
        gradient_accumulation_steps=layout.gradient_accumulation_steps,
        global_batch_size=context.global_batch_size,
        learning_rate=context.learning_rate,
        weight_decay=context.weight_decay,
        drop_path_rate=context.drop_path_rate,
        max_seq_length=context.max_seq_length,
        max_tiles=context.max_tiles,
        gpu_memory_gib=context.gpu_memory_gib,
        budget_gib=round(context.budget, 2),
        memory=layout.memory,
        recipe=context.recipe.script,
        notes=notes,
    )


@dataclass(frozen=True)
class Layout:
    """One way to run the spec: GPUs, ZeRO config, batch split, the estimate per GPU and its
    verdict, with the note that explains the choice and the notes that follow the recipe's."""

    gpus: int
    zero: ZeroVariant
    per_device_batch_size: int
    memory: MemoryEstimate
    verdict: Verdict
    global_batch_size: int
    lead: str
    notes: tuple[str, ...] = ()

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.global_batch_size // self.gpus // self.per_device_batch_size


def _recipe_layout(context: _Context) -> Layout:
    recipe: Recipe = context.recipe
    spec = context.spec
    notes: list[str] = []
    gpus = spec.resources.gpus or recipe.gpus
    if spec.resources.gpus is not None and gpus != recipe.gpus:
        notes.append(f"{gpus} GPUs as the spec sets (the recipe uses {recipe.gpus})")
    stage = spec.deepspeed.stage or recipe.zero.stage
    offload = spec.deepspeed.offload == "cpu"
    if offload and stage != 3:
        stage = 3
        notes.append("ZeRO-3 instead of the recipe's ZeRO-1: CPU offload needs stage 3")
    elif stage != recipe.zero.stage:
        notes.append(f"ZeRO-{stage} as the spec sets (the recipe uses ZeRO-{recipe.zero.stage})")
    zero = (
        recipe.zero
        if stage == recipe.zero.stage and not offload
        else variant_for(stage, offload, context.model.total_params)
    )
    if context.batch_note:
        notes.append(context.batch_note)
    choices = context.per_device_batches(gpus)
    per_device = max((d for d in choices if d <= recipe.per_device_batch_size), default=choices[0])
    if per_device != recipe.per_device_batch_size:
        why = (
            f"{context.global_batch_size} splits over {gpus} GPUs"
            if per_device < recipe.per_device_batch_size
            else f"the accumulation stays within {MAX_ACCUMULATION} steps"
        )
        notes.append(f"{per_device} per device instead of the recipe's {recipe.per_device_batch_size}, so that {why}")
    memory = context.estimate(gpus, zero, per_device)
    verdict: Verdict = "exceeds"
    if not context.host_fits(gpus, offload):
        notes.append(context.host_note(gpus))
    elif memory.total_gib <= context.budget:
        verdict = "fits"
    if memory.total_gib > context.budget:
        notes.append(
            _over_budget(context, memory, per_device)
            + "; InternVL's scripts rely on most batches being shorter. Policy minimal sizes for full-length sequences"
        )
    return Layout(
        gpus=gpus,
        zero=zero,
        per_device_batch_size=per_device,
        memory=memory,
        verdict=verdict,
        global_batch_size=context.global_batch_size,
        lead=f"recipe: InternVL's {recipe.script}",
        notes=tuple(notes),
    )


def _minimal_layout(context: _Context) -> Layout:
    spec = context.spec
    fixed_gpus, fixed_stage = spec.resources.gpus, spec.deepspeed.stage
    counts = [fixed_gpus] if fixed_gpus is not None else _gpu_counts(context.gpus_per_node, context.global_batch_size)
    stages = [fixed_stage] if fixed_stage is not None else [1, 2, 3]
    offloads = {"none": [False], "cpu": [True], "auto": [False, True]}[spec.deepspeed.offload]
    total_params = context.model.total_params
    batch_notes = (context.batch_note,) if context.batch_note else ()

    for offload in offloads:
        for gpus in counts:
            for stage in stages:
                if (offload and stage != 3) or not context.host_fits(gpus, offload):
                    continue
                zero = variant_for(stage, offload, total_params)
                choices = context.per_device_batches(gpus)
                # The estimate grows with the per-device batch: when the smallest does not fit, none does.
                if context.estimate(gpus, zero, choices[0]).total_gib > context.budget:
                    continue
                for per_device in reversed(choices):
                    memory = context.estimate(gpus, zero, per_device)
                    if memory.total_gib <= context.budget:
                        return Layout(
                            gpus=gpus,
                            zero=zero,
                            per_device_batch_size=per_device,
                            memory=memory,
                            verdict="fits",
                            global_batch_size=context.global_batch_size,
                            lead=(
                                f"policy minimal: the fewest GPUs ({gpus}), then the lowest ZeRO stage ({stage}), "
                                f"then the largest per-device batch ({per_device}) that fit {GPU_BUDGET_FRACTION:.0%} "
                                f"of {context.gpu_memory_gib:g} GiB, keeping the global batch of "
                                f"{context.global_batch_size}"
                            ),
                            notes=batch_notes + (("CPU offload: nothing fits without it",) if offload else ()),
                        )
    return _smallest_layout(context, counts[-1], stages[-1], offloads[-1] and stages[-1] == 3, batch_notes)


def _smallest_layout(context: _Context, gpus: int, stage: int, offload: bool, batch_notes: tuple[str, ...]) -> Layout:
    """Nothing fits: the layout with the smallest estimate there is, and why it does not fit."""
    zero = variant_for(stage, offload, context.model.total_params)
    per_device = context.per_device_batches(gpus)[0]
    memory = context.estimate(gpus, zero, per_device)
    floor = sum(part.gib for part in memory.parts if part.name in _PER_GPU_FLOOR)
    if context.spec.resources.gpus is not None:
        why_gpus = f"the {gpus} GPUs the spec sets"
    else:
        why_gpus = f"{gpus} GPUs (the most that split the global batch of {context.global_batch_size})"
    setup = f"ZeRO-{stage}" + (" + CPU offload" if offload else "")
    host = "" if context.host_fits(gpus, offload) else context.host_note(gpus)
    notes = batch_notes
    if memory.total_gib <= context.budget:
        reason = f"nothing fits: with {why_gpus} and {setup} a GPU would hold {memory.total_gib:.1f} GiB, but {host}"
    else:
        reason = (
            f"nothing fits the {context.budget:.1f} GiB budget ({GPU_BUDGET_FRACTION:.0%} of "
            f"{context.gpu_memory_gib:g} GiB): the smallest estimate is {memory.total_gib:.1f} GiB, with {why_gpus}, "
            f"{setup} and {per_device} {'sample' if per_device == 1 else 'samples'} of {context.max_seq_length} tokens "
            f"per GPU; {floor:.1f} GiB of it does not shrink with more GPUs ({_describe(memory)} GiB). Lower "
            f"data.maxSeqLength or data.maxTiles, or use GPUs with more memory"
        )
        if host:
            notes += (host,)
    return Layout(
        gpus=gpus,
        zero=zero,
        per_device_batch_size=per_device,
        memory=memory,
        verdict="nothing-fits",
        global_batch_size=context.global_batch_size,
        lead=reason,
        notes=notes,
    )

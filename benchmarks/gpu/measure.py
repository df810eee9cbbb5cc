"""Training each model in each layout on one device: time, model FLOPs, peak memory against the
estimate, and the check that both layouts give the same loss on the same batch.

Each layout trains a fresh model (same seed). Warm-up: its first micro-batches and an optimizer
step, untimed (kernel choice, allocator growth, optimizer state). Then one timed pass over every
micro-batch, so both layouts time exactly the same samples, with an optimizer step whenever the
samples since the last one reach the global batch, and at the end. A micro-batch is collated
before its clock starts (a data-loader worker's job in training); the clock covers the copy to the
device, forward, loss, backward and the optimizer step, and waits for the device to finish.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.gpu import estimate, models
from benchmarks.gpu.environment import Environment
from benchmarks.gpu.flops import ModelSize
from benchmarks.gpu.layouts import BASELINE, PACKED, Layout, Recipe, layouts
from benchmarks.gpu.mix import load
from benchmarks.gpu.samples import Sample, synthetic
from benchmarks.gpu.zero import Zero1, zero1
from internvl_trainer.data.collate import collate_packed, collate_padded, model_inputs
from internvl_trainer.loss import IGNORE_INDEX, loss_normaliser, model_loss
from internvl_trainer.model.original_config import native_config

GIB = 2**30
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
"""Largest relative difference of the two losses that counts as the same: float32 rounding, or
bf16 rounding through two different attention paths."""


@dataclass(frozen=True)
class Mode:
    """What one invocation runs. ``full`` trains two global batches of samples per model and layout
    (two optimizer steps), which keeps all four models within one 10-minute run on an H100."""

    name: str
    models: tuple[str, ...]
    samples: int
    warmup: int
    device: str
    recipe: Recipe = field(default_factory=Recipe)


GPU_MODELS = ("InternVL3-1B", "InternVL3-2B", "InternVL3_5-2B", models.MOE)
MODES = {
    "full": Mode("full", GPU_MODELS, samples=256, warmup=3, device="cuda"),
    "quick": Mode("quick", GPU_MODELS, samples=32, warmup=1, device="cuda"),
    "smoke": Mode(
        "smoke",
        (models.SMOKE, models.SMOKE_MOE),
        samples=12,
        warmup=1,
        device="cpu",
        recipe=Recipe(max_seq_length=1024, global_batch_size=8),
    ),
}


@dataclass
class Result:
    """One model trained in one layout."""

    model: str
    layout: str
    samples: int
    micro_batches: int
    optimizer_steps: int
    tokens: int
    """Real tokens (padding left out)."""
    positions: int
    """Positions computed: rows x padded length, summed over micro-batches."""
    tiles: int
    seconds: float
    flops: float
    largest: tuple[int, int, int]
    """Rows, padded length and tiles of the micro-batch with the most positions."""
    estimate_gib: float | None
    peak_allocated_gib: float | None = None
    peak_reserved_gib: float | None = None
    error: str | None = None

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.seconds and not self.error else None


@dataclass
class LossCheck:
    """InternVL's loss of a padded micro-batch against the trainer's loss of the same samples packed."""

    model: str
    samples: int
    tokens: int
    internvl: float
    packed: float
    tolerance: float

    @property
    def relative(self) -> float:
        return abs(self.internvl - self.packed) / abs(self.internvl)

    @property
    def agree(self) -> bool:
        return self.relative <= self.tolerance


def _to_device(batch: dict[str, Any], env: Environment) -> dict[str, Any]:
    moved = {}
    for key, value in batch.items():
        if key == "pixel_values":
            value = value.to(env.device, env.dtype, non_blocking=True)
        elif isinstance(value, torch.Tensor):
            value = value.to(env.device, non_blocking=True)
        moved[key] = value
    return moved


def _synchronise(env: Environment) -> None:
    if env.device == "cuda":
        torch.cuda.synchronize()


def _loss(forward: Any, head: torch.nn.Module, batch: dict[str, Any], layout: str) -> torch.Tensor:
    """The baseline's loss as InternVL computes it (logits of every position), or the trainer's
    (``model_loss``: the LM head on supervised positions, a chunk at a time)."""
    if layout == BASELINE:
        return internvl_loss(forward(**model_inputs(batch)).logits, batch["labels"])
    normaliser = loss_normaliser([batch], all_reduce=False)
    return model_loss(forward, head, model_inputs(batch), batch["labels"], batch["loss_weight"], normaliser)


def _step(
    optimizer: Zero1, head: torch.nn.Module, batch: dict[str, Any], layout: str, env: Environment, boundary: bool
) -> float:
    _synchronise(env)
    start = time.perf_counter()
    optimizer.update(_loss(optimizer.forward, head, _to_device(batch, env), layout), boundary)
    _synchronise(env)
    return time.perf_counter() - start


def boundaries(groups: Sequence[Sequence[Sample]], global_batch: int) -> list[bool]:
    """Whether an optimizer step follows each micro-batch: once the samples since the last step
    reach the global batch, and after the last micro-batch."""
    flags, since = [], 0
    for index, group in enumerate(groups):
        since += len(group)
        flags.append(since >= global_batch or index == len(groups) - 1)
        since = 0 if flags[-1] else since
    return flags


def _shape(group: Sequence[Sample], packed: bool) -> tuple[int, int, int]:
    lengths = [sample.tokens for sample in group]
    tiles = sum(sample.tile_count for sample in group)
    return (1, sum(lengths), tiles) if packed else (len(group), max(lengths), tiles)


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _peaks(env: Environment) -> tuple[float, float]:
    """Allocated and reserved bytes now, or their peaks since the last reset, on a GPU."""
    if env.device != "cuda":
        return 0.0, 0.0
    return float(torch.cuda.max_memory_allocated()), float(torch.cuda.max_memory_reserved())


def train(name: str, layout: Layout, env: Environment, mode: Mode) -> Result:
    """``name`` trained on ``layout`` (see the module docstring). Peak memory is what the run added
    to what the process held before it (nothing, unless an earlier run left something behind)."""
    shapes = [_shape(group, layout.name != BASELINE) for group in layout.groups]
    samples = [sample for group in layout.groups for sample in group]
    tiles = sum(sample.tile_count for sample in samples)
    largest = max(shapes, key=lambda shape: shape[0] * shape[1])
    estimate_gib = None
    if env.estimate:
        rows, length, largest_tiles = largest
        estimate_gib = estimate.allocator_gib(
            name,
            models.MODELS[name],
            rows=rows,
            length=length,
            tiles=largest_tiles,
            deepspeed=env.deepspeed,
            full_logits=layout.name == BASELINE,
        )
    flags = boundaries(layout.groups, mode.recipe.global_batch_size)
    if env.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = _peaks(env)
    model = models.build(name, attention=env.attention, dtype=env.dtype, device=env.device)
    result = Result(
        model=name,
        layout=layout.name,
        samples=len(samples),
        micro_batches=len(layout.groups),
        optimizer_steps=sum(flags),
        tokens=sum(sample.tokens for sample in samples),
        positions=sum(rows * length for rows, length, _ in shapes),
        tiles=tiles,
        seconds=0.0,
        flops=ModelSize.of(model).flops([sample.tokens for sample in samples], tiles),
        largest=largest,
        estimate_gib=estimate_gib,
    )
    optimizer = None
    try:
        optimizer = zero1(model, mode.recipe, deepspeed=env.deepspeed)
        head = model.get_output_embeddings()
        warmup = layout.groups[: mode.warmup]
        for index, group in enumerate(warmup):
            _step(optimizer, head, layout.collate(group), layout.name, env, boundary=index == len(warmup) - 1)
        for group, boundary in zip(layout.groups, flags, strict=True):
            result.seconds += _step(optimizer, head, layout.collate(group), layout.name, env, boundary)
        if env.device == "cuda":
            allocated, reserved = _peaks(env)
            result.peak_allocated_gib = (allocated - before[0]) / GIB
            result.peak_reserved_gib = (reserved - before[1]) / GIB
    except torch.cuda.OutOfMemoryError:
        result.error = "out of memory"
        result.seconds = 0.0
    del optimizer, model
    _release()
    return result


def internvl_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """InternVL's non-packed loss: cross-entropy averaged over the micro-batch's supervised tokens."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=IGNORE_INDEX
    )


@torch.no_grad()
def check_loss(name: str, baseline: Layout, env: Environment, *, pad_id: int) -> LossCheck:
    """The baseline's shortest full micro-batch, padded with InternVL's loss and packed into one row
    with the trainer's, on one model."""
    full = max(len(group) for group in baseline.groups)
    group = min((g for g in baseline.groups if len(g) == full), key=lambda g: len(g) * max(s.tokens for s in g))
    model = models.build(name, attention=env.attention, dtype=env.dtype, device=env.device)
    padded = _to_device(collate_padded(group, pad_id=pad_id), env)
    packed = _to_device(collate_packed([group], pad_id=pad_id), env)
    check = LossCheck(
        model=name,
        samples=len(group),
        tokens=sum(sample.tokens for sample in group),
        internvl=float(internvl_loss(model(**model_inputs(padded)).logits, padded["labels"])),
        packed=float(_loss(model, model.get_output_embeddings(), packed, PACKED)),
        tolerance=TOLERANCE[env.dtype],
    )
    del model, padded, packed
    _release()
    return check


def run(mode: Mode, env: Environment, *, progress: Any = print) -> tuple[list[Result], list[LossCheck]]:
    """Every model of ``mode``: the loss check, then each layout trained."""
    results, checks = [], []
    mix = load()
    for name in mode.models:
        config = native_config(models.MODELS[name])
        pad_id = config.text_config.pad_token_id or 0
        samples = synthetic(mix, config, count=mode.samples, max_tokens=mode.recipe.max_seq_length)
        baseline, packed = layouts(samples, mode.recipe, pad_id=pad_id)
        progress(f"{name}: loss check on one micro-batch")
        checks.append(check_loss(name, baseline, env, pad_id=pad_id))
        for layout in (baseline, packed):
            progress(f"{name}: {layout.name}, {len(layout.groups)} micro-batches")
            results.append(train(name, layout, env, mode))
    return results, checks

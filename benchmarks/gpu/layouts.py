"""The two ways the same samples become micro-batches: InternVL's unpacked recipe (the baseline) and
this project's packing.

**Baseline**, as InternVL's 2nd-finetune scripts run on one GPU (reference: internvl-recipe.md
§1.6, §6, §8.2): ``group_by_length`` (a shuffled order cut into megabatches of the global batch,
each sorted longest first and cut into micro-batches), 4 samples per micro-batch, each padded to
the longest of its micro-batch. The attention mask comes from the lengths, not from InternVL's
``input_ids != 0`` (a defect that masks real tokens and changes no cost). The loss of a
micro-batch is its token mean over the logits of every position, InternVL's non-packed loss.

**Packed**, as the trainer packs: the same shuffled order streamed into the trainer's ``Packer``
(best fit, 4 open packs, the sequence length as token budget), one pack per micro-batch,
``collate_packed`` (per-sample positions, varlen boundaries). Its micro-batch loss is the
trainer's: the same normaliser, the batch's supervised tokens, with the LM head applied to the
supervised positions only, a chunk at a time (``internvl_trainer.loss.model_loss``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.gpu.samples import Sample
from internvl_trainer.data.collate import collate_packed, collate_padded
from internvl_trainer.data.packing import Packer, PackingBudget

BASELINE, PACKED = "baseline", "packed"


@dataclass(frozen=True)
class Recipe:
    """The settings of the InternVL3-1B and -2B full fine-tuning scripts that shape a run on one GPU."""

    max_seq_length: int = 16384
    per_device_batch_size: int = 4
    global_batch_size: int = 128
    """Samples per optimizer step (and per length-grouping megabatch)."""
    learning_rate: float = 1e-5
    weight_decay: float = 0.05
    max_grad_norm: float = 1.0
    open_packs: int = 4
    """The trainer's default number of packs its packer keeps open."""


@dataclass(frozen=True)
class Layout:
    """Micro-batches (groups of samples) and how one is collated."""

    name: str
    groups: list[list[Sample]]
    collate: Callable[[Sequence[Sample]], dict[str, Any]]


def shuffled(samples: Sequence[Sample], seed: int) -> list[Sample]:
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    return [samples[index] for index in order]


def length_grouped(samples: Sequence[Sample], *, per_device: int, megabatch: int) -> list[list[Sample]]:
    """InternVL's (LLaVA's) length-grouped micro-batches of ``samples`` in their given order, on
    one GPU: every ``megabatch`` samples sorted longest first, then cut ``per_device`` at a time."""
    groups = []
    for start in range(0, len(samples), megabatch):
        ordered = sorted(samples[start : start + megabatch], key=lambda sample: sample.tokens, reverse=True)
        groups += [ordered[first : first + per_device] for first in range(0, len(ordered), per_device)]
    return groups


def packs(samples: Sequence[Sample], *, max_tokens: int, open_packs: int) -> list[list[Sample]]:
    """``samples`` packed in their given order by the trainer's packer."""
    packer = Packer(
        PackingBudget(max_tokens=max_tokens), lambda sample: (sample.tokens, sample.tile_count), max_open=open_packs
    )
    done = [pack for sample in samples for pack in packer.add(sample)]
    return [pack.items for pack in done + packer.flush()]


def layouts(samples: Sequence[Sample], recipe: Recipe, *, pad_id: int, seed: int = 0) -> list[Layout]:
    """The baseline and the packed layout of the same samples, drawn in the same shuffled order."""
    order = shuffled(samples, seed)
    return [
        Layout(
            BASELINE,
            length_grouped(order, per_device=recipe.per_device_batch_size, megabatch=recipe.global_batch_size),
            lambda group: collate_padded(group, pad_id=pad_id),
        ),
        Layout(
            PACKED,
            packs(order, max_tokens=recipe.max_seq_length, open_packs=recipe.open_packs),
            lambda group: collate_packed([group], pad_id=pad_id),
        ),
    ]

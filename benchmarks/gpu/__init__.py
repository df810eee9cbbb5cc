"""Training on one GPU: this project's packing against InternVL's unpacked recipe, ``make bench-gpu``.

InternVL3-1B-, InternVL3-2B- and InternVL3_5-2B-sized models and a small InternVL3.5 mixture of
experts (``models.MOE``: InternVL3.5-30B-A3B's layers, cut to fit one GPU) with random weights
train in bf16 on synthetic samples of a realistic length mix, once laid out as InternVL's
2nd-finetune scripts do (length-grouped micro-batches of 4, padded to the longest) and once packed
by the trainer; the report gives
tokens per second per GPU, MFU and peak memory against the planner's estimate, and checks that
both layouts give the same loss on the same batch. ``--quick`` runs a few steps; ``--smoke`` runs
the same code on CPU with a tiny dense and a tiny MoE model (``tests/unit/test_bench_gpu.py``).

A GPU machine may have nothing but Python, torch and transformers, and no package index: the
benchmark needs only those (and numpy), imports this repository's source by path, and reports
every optional package it could not use and what it used instead.

Modules, one concept each:

- ``environment``: what is installed and what the run uses (attention, optimizer), the machine.
- ``models``: the benchmarked models' sizes and their random-weight builds.
- ``mix``: the length mix of the packing-fill benchmark, frozen into ``mix.json``.
- ``samples``: synthetic samples (tokens, labels, tiles) for a model.
- ``layouts``: InternVL's unpacked micro-batches (the baseline) and packed ones.
- ``zero``: the ZeRO-1 optimizer step, DeepSpeed's or an equivalent without it.
- ``flops``: training FLOPs, GPU peaks and MFU.
- ``estimate``: the operator's memory model for a micro-batch.
- ``measure``: one model and layout timed, its peak memory, and the loss check.
- ``report``: the markdown report and its JSON record; ``summary``: their section in docs/benchmarks.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.gpu.summary import run

REPOSITORY = Path(__file__).resolve().parents[2]

# The project's packages live one level down (operator/, trainer/); a machine without the
# project's environment imports them from the source tree.
for source in (REPOSITORY / "operator", REPOSITORY / "trainer"):
    if str(source) not in sys.path:
        sys.path.append(str(source))

__all__ = ["REPOSITORY", "run"]

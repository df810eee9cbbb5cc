"""The GPU benchmark's report: markdown for people (docs/benchmarks-gpu.md), and a JSON record
beside it that keeps the same run's machine, settings, results and headline (``summary`` reads it).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import Table
from benchmarks.gpu.environment import Environment
from benchmarks.gpu.flops import FORMULA, mfu, peak_tflops
from benchmarks.gpu.layouts import BASELINE, PACKED
from benchmarks.gpu.measure import LossCheck, Mode, Result
from benchmarks.gpu.models import DESCRIPTIONS

HEADLINE_COLUMNS = [
    "Model",
    "Tokens/s per GPU, packed ÷ baseline",
    "MFU, baseline → packed",
    "Peak memory, packed ÷ baseline",
    "Same loss on one batch",
]


def _number(value: float | None, pattern: str, missing: str = "—") -> str:
    return missing if value is None else format(value, pattern)


def _percent(value: float | None) -> str:
    return "unknown peak" if value is None else f"{100 * value:.1f}%"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or not denominator:
        return "—"
    return f"{numerator / denominator:.2f}x"


class Report:
    """One run's results, with the machine and the settings they hold for."""

    def __init__(
        self, mode: Mode, env: Environment, machine: str, results: Sequence[Result], checks: Sequence[LossCheck]
    ):
        self.mode, self.env, self.machine = mode, env, machine
        self.results, self.checks = list(results), list(checks)
        self.peak = peak_tflops(env.gpu)
        self.date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")

    def _mfu(self, result: Result) -> float | None:
        return None if result.error else mfu(result.flops, result.seconds, self.peak)

    def _pair(self, model: str) -> tuple[Result, Result]:
        found = {result.layout: result for result in self.results if result.model == model}
        return found[BASELINE], found[PACKED]

    def headline(self) -> list[list[str]]:
        rows = []
        for check in self.checks:
            baseline, packed = self._pair(check.model)
            rows.append(
                [
                    check.model,
                    _ratio(packed.tokens_per_second, baseline.tokens_per_second),
                    f"{_percent(self._mfu(baseline))} → {_percent(self._mfu(packed))}",
                    _ratio(packed.peak_allocated_gib, baseline.peak_allocated_gib),
                    f"{'yes' if check.agree else 'NO'} ({check.relative:.1e})",
                ]
            )
        return rows

    def _throughput(self) -> Table:
        rows = []
        for result in self.results:
            rows.append(
                [
                    result.model,
                    result.layout,
                    str(result.samples),
                    str(result.micro_batches),
                    str(result.optimizer_steps),
                    f"{result.tokens:,}",
                    f"{result.tokens / result.positions:.1%}",
                    result.error or f"{result.seconds:.2f} s",
                    _number(result.tokens_per_second, ",.0f"),
                    _number(None if result.error else result.flops / result.seconds / 1e12, ".1f"),
                    _percent(self._mfu(result)) if not result.error else "—",
                ]
            )
        return Table(
            "Throughput and MFU",
            f"One timed pass over the same samples per layout, after warm-up. {FORMULA} The GPU's peak: "
            + ("unknown, so no MFU." if self.peak is None else f"{self.peak:.0f} TFLOP/s."),
            [
                "Model",
                "Layout",
                "Samples",
                "Micro-batches",
                "Optimizer steps",
                "Real tokens",
                "Real share of computed positions",
                "Time",
                "Tokens/s per GPU",
                "Model TFLOP/s",
                "MFU",
            ],
            rows,
        )

    def _memory(self) -> Table:
        rows = []
        for result in self.results:
            rows.append(
                [
                    result.model,
                    result.layout,
                    "{} x {:,}, {} tiles".format(*result.largest),
                    _number(result.peak_allocated_gib, ".2f", "— (no CUDA)"),
                    _number(result.peak_reserved_gib, ".2f", "— (no CUDA)"),
                    _number(result.estimate_gib, ".2f", "— (pydantic not installed)"),
                    _ratio(result.peak_allocated_gib, result.estimate_gib),
                ]
            )
        return Table(
            "Peak memory against the planner's estimate (GiB)",
            "`torch.cuda.max_memory_allocated` and `max_memory_reserved` from building the model to the end of the"
            " timed pass (less what the process held before), against"
            " the operator's memory model for the layout's largest micro-batch (rows x padded length, tiles), ZeRO-1"
            " on one GPU, LLM and projector trained, gradient checkpointing; less its framework part (CUDA context"
            " and workspaces, which the allocator does not count), and less DeepSpeed's communication buckets"
            " when DeepSpeed was not used.",
            [
                "Model",
                "Layout",
                "Largest micro-batch",
                "Peak allocated",
                "Peak reserved",
                "Estimate",
                "Allocated ÷ estimate",
            ],
            rows,
        )

    def _losses(self) -> Table:
        rows = [
            [
                check.model,
                str(check.samples),
                f"{check.tokens:,}",
                f"{check.internvl:.5f}",
                f"{check.packed:.5f}",
                f"{check.relative:.1e}",
                f"{'yes' if check.agree else 'NO'} (within {check.tolerance:.0e})",
            ]
            for check in self.checks
        ]
        return Table(
            "Loss on the same batch",
            "The baseline's shortest full micro-batch, before training: padded, with InternVL's loss (cross-entropy"
            " averaged over the supervised tokens of the micro-batch), and packed into one row, with the trainer's"
            " loss (token reduction, normalised by the same supervised tokens).",
            [
                "Model",
                "Samples",
                "Tokens",
                "InternVL's loss, padded",
                "Trainer's loss, packed",
                "Relative difference",
                "Same",
            ],
            rows,
        )

    def _method(self) -> str:
        recipe = self.mode.recipe
        return "\n".join(
            [
                "## Method",
                "",
                "- Models: "
                + "; ".join(f"{name} ({DESCRIPTIONS[name]})" for name in self.mode.models)
                + "; with random weights, built from their config.json sizes by the trainer's conversion"
                " (`benchmarks/gpu/models.py`); the LLM and projector train, the vision tower is frozen, gradient"
                " checkpointing is on, as in InternVL's full fine-tuning scripts. A mixture of experts counts the"
                " model FLOPs of the experts a token is routed to.",
                f"- Data: the first {self.mode.samples} samples of the packing-fill benchmark's length mix (25 % text,"
                " 50 % one image, 10 % several images, 15 % video; `benchmarks/gpu/mix.json`) that fit"
                f" {recipe.max_seq_length:,} tokens, as random tokens and random tiles (seed 0); the second half of"
                " each sample's text is the supervised answer.",
                f"- Baseline, InternVL's unpacked recipe: group by length (megabatches of {recipe.global_batch_size}"
                f" samples sorted longest first), {recipe.per_device_batch_size} samples per micro-batch padded to"
                " the longest, the loss averaged over each micro-batch's supervised tokens from the logits of every"
                " position.",
                f"- Packed, this trainer: best-fit packing into {recipe.max_seq_length:,}-token sequences"
                f" ({recipe.open_packs} open packs), one per micro-batch, attention within each sample; the trainer's"
                " loss, the LM head on supervised positions only, a chunk at a time.",
                "- Both: the same samples in the same shuffled order, the same attention and optimizer; AdamW"
                f" (learning rate {recipe.learning_rate:g}, weight decay {recipe.weight_decay:g} without norms,"
                f" biases and embeddings, gradient clipping {recipe.max_grad_norm:g}), an optimizer step per"
                f" {recipe.global_batch_size} samples; an untimed warm-up (the first {self.mode.warmup} micro-batch(es)"
                " and an optimizer step), then one timed pass; collation is outside the clock, the copy to the"
                " device inside.",
            ]
        )

    def markdown(self) -> str:
        smoke = self.mode.device != "cuda"
        note = (
            "A smoke run on CPU with a tiny model: it checks the code; its numbers say nothing about speed."
            if smoke
            else "Ratios compare layouts within this run; absolute numbers hold for this machine only."
        )
        headline = Table(
            "Headline: packed against InternVL's unpacked recipe",
            "Ratios from this run, the same samples in both layouts.",
            HEADLINE_COLUMNS,
            self.headline(),
        )
        return "\n".join(
            [
                "# GPU training benchmark",
                "",
                f"Written by `python -m benchmarks.gpu` (mode `{self.mode.name}`; `make bench-gpu` runs the full"
                f" mode). {note}",
                "",
                self.machine,
                *self.env.lines(),
                "- GPU's dense bf16 peak: "
                + ("unknown, so no MFU" if self.peak is None else f"{self.peak:.0f} TFLOP/s (NVIDIA's datasheet)"),
                "",
                headline.markdown(),
                self._throughput().markdown(),
                self._memory().markdown(),
                self._losses().markdown(),
                self._method(),
                "",
            ]
        )

    def record(self) -> dict[str, Any]:
        """The JSON record: everything the markdown shows, as data."""
        return {
            "mode": self.mode.name,
            "date": self.date,
            "machine": self.machine.splitlines(),
            "environment": self.env.lines(),
            "gpu": self.env.gpu,
            "peak_tflops": self.peak,
            "attention": self.env.attention,
            "deepspeed": self.env.deepspeed,
            "missing": [missing.package for missing in self.env.missing],
            "headline": {"columns": HEADLINE_COLUMNS, "rows": self.headline()},
            "results": [
                {**dataclasses.asdict(r), "tokens_per_second": r.tokens_per_second, "mfu": self._mfu(r)}
                for r in self.results
            ],
            "checks": [{**dataclasses.asdict(c), "relative": c.relative, "agree": c.agree} for c in self.checks],
        }

    def write(self, path: Path) -> Path:
        """The markdown at ``path`` and the record beside it (same name, .json); returns the record's path."""
        path.write_text(self.markdown())
        record = path.with_suffix(".json")
        record.write_text(json.dumps(self.record(), indent=2) + "\n")
        return record

"""The GPU benchmark's section of docs/benchmarks.md: the headline of the recorded GPU run
(docs/benchmarks-gpu.json, written by ``make bench-gpu``) with its machine and date, or, when none
is recorded, how to record one. ``make bench`` runs on any machine, so it only reads the record.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import Table

RECORD = Path(__file__).resolve().parents[2] / "docs" / "benchmarks-gpu.json"
TITLE = "GPU training: packing against InternVL's unpacked recipe"
HOW = (
    "`make bench-gpu` on a machine with a CUDA GPU trains InternVL3-1B-, InternVL3-2B- and InternVL3_5-2B-sized"
    " models and a small Qwen3-MoE one (random weights, bf16,"
    " ZeRO-1) on the same samples laid out as InternVL's scripts do and packed, and writes docs/benchmarks-gpu.md"
    " (tokens per second per GPU, MFU, peak memory against the planner's estimate, the loss check) with"
    " docs/benchmarks-gpu.json beside it, whose headline `make bench` copies here."
    " It needs only Python with torch and transformers (`BENCH_PYTHON=python3`); `--quick` runs a few steps."
)


def run(record: Path = RECORD) -> list[Table]:
    if not record.exists():
        return [
            Table(
                TITLE,
                f"No GPU result is recorded yet. {HOW}",
                ["Model", "Recorded"],
                [["InternVL3-1B, InternVL3-2B", "none yet: run `make bench-gpu` on a GPU machine"]],
            )
        ]
    data = json.loads(record.read_text())
    machine = " ".join(line.removeprefix("- ") + ";" for line in data["machine"][:2])
    return [
        Table(
            TITLE,
            f"From the GPU run recorded in [benchmarks-gpu.md](benchmarks-gpu.md) (mode `{data['mode']}`):"
            f" {machine} GPU {data['gpu']}, attention `{data['attention']}`. {HOW}",
            data["headline"]["columns"],
            data["headline"]["rows"],
        )
    ]

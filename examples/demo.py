"""``make demo``: what the project does today, end to end on the examples, with no cluster.

Each step runs a real command line of the project on the files in examples/ and stops the demo
if it fails. Later issues extend it to the full run: local S3, tiny model, training, merge, upload.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from internvl_operator import cli as operator_cli
from internvl_trainer import cli as train_cli
from internvl_trainer import data_cli

PROGRAMS: dict[str, Callable[[list[str]], int]] = {
    "internvl-operator": operator_cli.main,
    "internvl-train": train_cli.main,
    "internvl-data": data_cli.main,
}

# (what the step shows, program, arguments, the exit code it must give)
STEPS = [
    (
        "Validate the example InternVLFinetune objects offline (schema and CEL rules)",
        "internvl-operator",
        ["validate", "examples/lora-internvl3-8b.yaml", "examples/full-internvl2_5-26b.yaml"],
        0,
    ),
    (
        "Refuse an update that changes immutable fields",
        "internvl-operator",
        ["validate", "--old", "examples/lora-internvl3-8b.yaml", "examples/full-internvl2_5-26b.yaml"],
        2,
    ),
    ("Validate a hand-written train.yaml", "internvl-train", ["validate", "--config", "examples/train.yaml"], 0),
    ("Validate an InternVL meta file", "internvl-data", ["validate", "examples/meta.json"], 0),
]


def main() -> int:
    for title, program, argv, expected in STEPS:
        print(f"\n== {title}\n$ {program} {' '.join(argv)}", flush=True)
        code = PROGRAMS[program](argv)
        sys.stderr.flush()
        if code != expected:
            print(f"demo failed: exit code {code}, expected {expected}")
            return 1
    print("\ndemo finished: every step gave the expected result")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks.gpu [--quick | --smoke] [--output docs/benchmarks-gpu.md]``: train on one GPU
(or, with ``--smoke``, tiny models on CPU) and write the report and its JSON record."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.__main__ import machine
from benchmarks.gpu.environment import ATTENTIONS, probe
from benchmarks.gpu.measure import MODES, run
from benchmarks.gpu.report import Report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="a few steps per model and layout: a smoke check on a GPU")
    speed.add_argument("--smoke", action="store_true", help="the same code on CPU with tiny models, in seconds")
    parser.add_argument("--output", type=Path, help="write the report here (and its JSON record beside it)")
    parser.add_argument("--attention", choices=ATTENTIONS, default="auto", help="default: flash-attention, else sdpa")
    parser.add_argument("--no-deepspeed", action="store_true", help="the ZeRO-1 layout without DeepSpeed")
    args = parser.parse_args(argv)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    env = probe(device=mode.device, attention=args.attention, use_deepspeed=not args.no_deepspeed)
    for line in env.lines():
        print(line, flush=True)
    results, checks = run(mode, env, progress=lambda line: print(line, flush=True))
    report = Report(mode, env, machine(), results, checks)
    if args.output:
        record = report.write(args.output)
        print(f"wrote {args.output} and {record}")
    else:
        print(report.markdown())
    return 0 if all(check.agree for check in checks) and not any(result.error for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())

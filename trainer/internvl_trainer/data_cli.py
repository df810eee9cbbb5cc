"""``internvl-data``: check training data before a run spends GPU hours on it.

    internvl-data validate META [--output json]    check a meta file's datasets

Exit codes: 0 success, 2 bad input (every problem printed as ``field.path: reason``), 1 failure.
"""

from __future__ import annotations

import argparse
import sys

from internvl_trainer.data.meta import read_meta
from internvl_trainer.problems import EXIT_OK, dumps_json, run_command


def _validate(args: argparse.Namespace) -> int:
    meta = read_meta(args.meta)
    datasets = {name: dataset.model_dump(exclude_none=True) for name, dataset in meta.root.items()}
    if args.output == "json":
        sys.stdout.write(dumps_json({"valid": True, "datasets": datasets}))
        return EXIT_OK
    print(f"{args.meta}: valid, {len(datasets)} dataset(s)")
    for name, dataset in meta.root.items():
        print(f"  {name}: {dataset.annotation} (images under {dataset.root}, repeat {dataset.repeat_time:g})")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="internvl-data", description=__doc__.split("\n")[0])
    commands = root.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="check a meta file")
    check.add_argument("meta", metavar="META", help="InternVL meta file (JSON)")
    check.add_argument("--output", choices=["text", "json"], default="text")
    check.set_defaults(handler=_validate)
    return root


def main(argv: list[str] | None = None) -> int:
    return run_command(parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

"""``internvl-train``: the trainer's command line.

    internvl-train validate --config train.yaml    check a train.yaml and print what the run uses

Exit codes: 0 success, 2 bad input (every problem printed as ``field.path: reason``), 1 failure.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from internvl_trainer.config import TrainConfig
from internvl_trainer.problems import (
    EXIT_OK,
    BadInput,
    Problem,
    dumps_json,
    load_yaml_documents,
    problems_from,
    run_command,
)


def read_config(source: str) -> TrainConfig:
    """The TrainConfig in a YAML file. Raises BadInput naming every problem."""
    documents = load_yaml_documents(source)
    if len(documents) != 1:
        raise BadInput([Problem(source, f"expected one YAML document, found {len(documents)}")])
    try:
        return TrainConfig.model_validate(documents[0])
    except ValidationError as error:
        raise BadInput(problems_from(error)) from error


def _validate(args: argparse.Namespace) -> int:
    config = read_config(args.config)
    layout = config.layout
    if args.output == "json":
        sys.stdout.write(dumps_json({"valid": True, "config": config.to_wire(), "layout": layout.model_dump()}))
        return EXIT_OK
    batch = config.batch
    print(f"{args.config}: valid")
    print(f"  model        {config.model.name} from {config.model.weights}")
    print(f"  method       {config.method.type}")
    print(f"  data         {config.data.meta}")
    print(
        f"  batch        {config.training.global_batch_size} = {batch.per_device_batch_size} per device"
        f" x {batch.gradient_accumulation_steps} accumulation x {batch.world_size} processes"
    )
    print(f"  checkpoints  {layout.checkpoints}")
    print(f"  model out    {layout.model}")
    print(f"  manifest     {layout.manifest}")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="internvl-train", description=__doc__.split("\n")[0])
    commands = root.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="check a train.yaml")
    check.add_argument("--config", required=True, metavar="FILE", help="train.yaml ('-' for standard input)")
    check.add_argument("--output", choices=["text", "json"], default="text")
    check.set_defaults(handler=_validate)
    return root


def main(argv: list[str] | None = None) -> int:
    return run_command(parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

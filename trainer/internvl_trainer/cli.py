"""``internvl-train``: the trainer's command line.

    internvl-train validate --config train.yaml    check a train.yaml and print what the run uses
    internvl-train run --config train.yaml         train, checkpoint, merge, export and publish
    internvl-train launch --config train.yaml      torchrun over this node's GPUs (PET_* variables),
                                                   each process running ``run``; exits as they did
    internvl-train evaluate --model DIR --data META [--output FILE]
                                                   predictions beside references: exact match, token F1, loss
    internvl-train merge --checkpoint DIR [--base DIR] --hf DIR [--original DIR]
                                                   merge a LoRA checkpoint into its base and export it
    internvl-train export --checkpoint DIR --hf DIR [--original DIR]
                                                   write a full model checkpoint in either layout
    internvl-train plot RUN_URI [--output DIR]     redraw a run's training curves from its metrics.jsonl

Folders may be local paths or s3:// prefixes; with ``--config train.yaml`` the object store, the
base model and the destinations (output.layouts under output.uri) come from the run's config.

Logs go to standard error, one line per event; ``INTERNVL_LOG_FORMAT=json`` makes them JSON lines
(``internvl_trainer.logs``).

Exit codes: 0 success, 2 bad input (every problem printed as ``field.path: reason``), 1 failure.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from internvl_trainer.config import MODEL_NAMES, StorageConfig, TrainConfig, load_train_config
from internvl_trainer.logs import configure as configure_logging
from internvl_trainer.problems import (
    EXIT_FAILED,
    EXIT_OK,
    BadInput,
    Problem,
    dumps_json,
    one_line,
    problems_from,
    read_text,
    run_command,
    tell_launcher,
)


def read_config(source: str) -> TrainConfig:
    """The TrainConfig in a YAML file. Raises BadInput naming every problem."""
    try:
        return load_train_config(read_text(source), source)
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


# internvl_trainer.model.original_config.LLM_ARCHITECTURES, spelled out here to keep torch out
ORIGINAL_LLMS = (
    "Qwen2ForCausalLM",
    "LlamaForCausalLM",
    "InternLM2ForCausalLM",
    "InternLM3ForCausalLM",
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
    "GptOssForCausalLM",
)


def _destinations(args: argparse.Namespace, config: TrainConfig | None) -> dict[str, str | None]:
    """--hf / --original, else the run's output layouts."""
    if args.hf or args.original:
        return {"hf": args.hf, "original": args.original}
    if config is not None:
        layout = config.layout
        chosen = set(config.output.layouts)
        return {
            "hf": layout.model if "hf" in chosen else None,
            "original": layout.model_original if "original" in chosen else None,
        }
    raise BadInput([Problem("--hf/--original", "give at least one destination (or --config with output.layouts)")])


def _model_command(args: argparse.Namespace) -> int:
    """merge and export: the torch-heavy work is imported only here."""
    configure_logging()
    config = read_config(args.config) if args.config else None
    destinations = _destinations(args, config)
    from internvl_trainer.model.checkpoint import (
        DestinationError,
        Destinations,
        export_checkpoint,
        merge_checkpoint,
    )
    from internvl_trainer.model.layouts import LayoutError
    from internvl_trainer.model.load import ModelFolderError
    from internvl_trainer.storage import Storage, StorageError
    from internvl_trainer.train.checkpoints import check_complete

    storage = Storage(config.storage) if config is not None else Storage()
    options = {
        "dtype": args.dtype,
        "llm_architecture": args.original_llm,
        "storage": storage,
        "producer": config.to_wire() if config is not None else None,
    }
    try:
        check_complete(storage, args.checkpoint)
        if args.command == "merge":
            fallback = config.model.weights if config is not None else None
            written = merge_checkpoint(
                args.checkpoint, Destinations(**destinations), base=args.base, fallback_base=fallback, **options
            )
        else:
            written = export_checkpoint(args.checkpoint, Destinations(**destinations), **options)
    except ModelFolderError as error:
        raise BadInput([Problem("", str(error))]) from error
    except DestinationError as error:
        raise BadInput([Problem(f"--{error.option}", str(error))]) from error
    except (LayoutError, StorageError, OSError, ValueError) as error:
        sys.stderr.write(f"{args.command} failed: {error}\n")
        return EXIT_FAILED
    for uri in written:
        print(uri)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    """run: the torch-heavy work is imported only here."""
    import logging

    configure_logging()
    config = read_config(args.config)
    from internvl_trainer.train.run import run

    try:
        result = run(config)
    except BadInput:
        raise
    except Exception as error:  # exit 1: the operator retries from the latest checkpoint
        logging.getLogger("internvl_trainer").exception("the run failed")
        tell_launcher(one_line(error))
        return EXIT_FAILED
    if result.manifest_uri:
        print(f"trained {result.steps} steps; model {result.model_uri}; manifest {result.manifest_uri}")
    return EXIT_OK


def _launch(args: argparse.Namespace) -> int:
    """launch: train.yaml and the log format are checked before any process starts; the processes
    set their logging up as ``run`` does, from the same environment."""
    configure_logging()
    read_config(args.config)
    from internvl_trainer.train.launch import launch

    outcome = launch(args.config)
    if outcome.message:
        sys.stderr.write(outcome.message.rstrip("\n") + "\n")
    return outcome.exit_code


def _absolute(uri: str) -> str:
    from pathlib import Path

    return uri if uri.startswith(("s3://", "file://")) else str(Path(uri).resolve())


def _evaluate(args: argparse.Namespace) -> int:
    """evaluate: the torch-heavy work is imported only here."""
    from pathlib import Path

    configure_logging()

    config = read_config(args.config) if args.config else None
    from internvl_trainer.model.layouts import LayoutError
    from internvl_trainer.model.load import ModelFolderError
    from internvl_trainer.storage import StorageError
    from internvl_trainer.train.evaluate import run_evaluation

    try:
        summary = run_evaluation(
            _absolute(args.model),
            _absolute(args.data),
            Path(args.output),
            config=config,
            model_name=args.model_name,
            max_new_tokens=args.max_new_tokens,
            limit=args.limit,
        )
    except ModelFolderError as error:
        raise BadInput([Problem("--model", str(error))]) from error
    except (LayoutError, StorageError, OSError, ValueError) as error:
        sys.stderr.write(f"evaluate failed: {error}\n")
        return EXIT_FAILED
    if args.format == "json":
        sys.stdout.write(dumps_json(summary))
    else:
        print(f"{args.output}: {summary['samples']} samples ({summary['skipped']} skipped)")
        for key in ("exactMatch", "tokenF1", "loss"):
            value = summary[key]
            print(f"  {key:<10} {'-' if value is None else f'{value:.4f}'}")
    return EXIT_OK


def _plot(args: argparse.Namespace) -> int:
    """plot: a run's curves, from its metrics.jsonl (local or S3)."""
    from pathlib import Path

    from internvl_trainer.storage import Storage, StorageError
    from internvl_trainer.train.curves import redraw

    configure_logging()
    config = read_config(args.config) if args.config else None
    if config is not None:
        storage = Storage(config.storage)
    elif args.s3_endpoint:
        storage = Storage(StorageConfig(endpoint=args.s3_endpoint, addressing_style="path"))
    else:
        storage = Storage()
    wire = config.to_wire() if config is not None else None
    try:
        png = redraw(storage, _absolute(args.run), Path(args.output), wire)
    except (StorageError, OSError) as error:
        sys.stderr.write(f"plot failed: {error}\n")
        return EXIT_FAILED
    print(png)
    return EXIT_OK


def _add_model_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder or s3:// prefix")
    command.add_argument("--hf", metavar="DIR", help="destination of the transformers-native layout")
    command.add_argument("--original", metavar="DIR", help="destination of the original InternVLChatModel layout")
    command.add_argument(
        "--original-llm",
        choices=ORIGINAL_LLMS,
        help="LLM architecture written in the original layout (default: the one the model came from)",
    )
    command.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    command.add_argument("--config", metavar="FILE", help="train.yaml: object store, base model and destinations")
    command.set_defaults(handler=_model_command)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="internvl-train", description=__doc__.split("\n")[0])
    commands = root.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="check a train.yaml")
    check.add_argument("--config", required=True, metavar="FILE", help="train.yaml ('-' for standard input)")
    check.add_argument("--output", choices=["text", "json"], default="text")
    check.set_defaults(handler=_validate)
    train = commands.add_parser("run", help="train, checkpoint, merge, export and publish a model")
    train.add_argument("--config", required=True, metavar="FILE", help="train.yaml")
    train.set_defaults(handler=_run)
    launcher = commands.add_parser("launch", help="run torchrun over this node's GPUs, keeping the exit codes")
    launcher.add_argument("--config", required=True, metavar="FILE", help="train.yaml")
    launcher.set_defaults(handler=_launch)
    evaluate = commands.add_parser("evaluate", help="score a model on a meta file's samples")
    evaluate.add_argument("--model", required=True, metavar="DIR", help="model folder or s3:// prefix (either layout)")
    evaluate.add_argument("--data", required=True, metavar="META", help="InternVL meta file (local or s3://)")
    evaluate.add_argument("--output", default="predictions.jsonl", metavar="FILE", help="predictions (JSON lines)")
    evaluate.add_argument("--config", metavar="FILE", help="train.yaml: object store, template, tile and length limits")
    evaluate.add_argument("--model-name", choices=MODEL_NAMES, help="catalog name (template); default from --config")
    evaluate.add_argument("--max-new-tokens", type=int, default=64)
    evaluate.add_argument("--limit", type=int, metavar="N", help="only the first N samples")
    evaluate.add_argument("--format", choices=["text", "json"], default="text", help="how the summary is printed")
    evaluate.set_defaults(handler=_evaluate)
    merge = commands.add_parser("merge", help="merge a LoRA checkpoint into its base and export it")
    _add_model_options(merge)
    merge.add_argument("--base", metavar="DIR", help="base model (default: the adapter's, else model.weights)")
    export = commands.add_parser("export", help="write a full model checkpoint in either layout")
    _add_model_options(export)
    plot = commands.add_parser("plot", help="redraw a run's training curves from its metrics.jsonl")
    plot.add_argument("run", metavar="RUN_URI", help="the run's folder, <output.uri>/runs/<uid> (local or s3://)")
    plot.add_argument("--output", default=".", metavar="DIR", help="folder of training-curves.png (default: here)")
    plot.add_argument("--config", metavar="FILE", help="train.yaml: object store, run name and model for the title")
    plot.add_argument("--s3-endpoint", metavar="URL", help="S3-compatible endpoint, path addressing (without --config)")
    plot.set_defaults(handler=_plot)
    return root


def main(argv: list[str] | None = None) -> int:
    return run_command(parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

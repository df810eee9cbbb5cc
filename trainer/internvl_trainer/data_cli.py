"""``internvl-data``: check training data before a run spends GPU hours on it.

    internvl-data validate META [--strict] [--tokenizer DIR] [--output json]
                                    check every sample: JSON, roles, placeholders, media files
                                    (inside the root, present, decodable) and, with a tokenizer,
                                    the token length with image tokens against the maximum
    internvl-data convert INPUT OUTPUT [--root DIR] [--tokenizer DIR]
                                    a JSON array (or JSON lines) of samples → JSON lines in
                                    InternVL's spelling, with each sample's token ``length``
    internvl-data stats META [--png FILE] [--tokenizer DIR]
                                    histograms of token lengths and tiles per sample, the
                                    samples of each dataset by kind and the bad samples by
                                    problem, as a PNG

META is an InternVL meta file, local or ``s3://`` (relative paths in it are relative to its folder).
Token lengths are counted by the training code itself (template, BOS, every tile's image tokens);
the model's template, tile size and limits come from ``--config train.yaml``, else from
``--model-name`` (default InternVL3-8B) and its recipe (16384 tokens and 12 tiles for InternVL3,
8192 and 6 for InternVL 2.5), each overridable. Annotation indexes and remote annotation files are
kept under ``--cache-dir`` (default ``$INTERNVL_DATA_CACHE``, else ``~/.cache/internvl-data``).

Exit codes: 0 success (``validate``: also with bad samples, unless ``--strict``), 1 bad samples in
``--strict`` mode or a failure such as lost storage, 2 unusable input (a missing or malformed meta
file, an annotation file that cannot be read or is a broken JSON array, a tokenizer that cannot be
loaded), every problem printed as ``where: reason``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from internvl_trainer.config import (
    MAX_IMAGE_PIXELS,
    MODEL_NAMES,
    StorageConfig,
    TrainConfig,
    VideoConfig,
    recipe_limits,
)
from internvl_trainer.data.meta import DatasetMeta, load_meta
from internvl_trainer.logs import configure as configure_logging
from internvl_trainer.problems import EXIT_FAILED, EXIT_OK, BadInput, Problem, dumps_json, run_command

DEFAULT_MODEL = "InternVL3-8B"


# ---------------------------------------------------------------------------------------------
# shared options


@dataclass
class Limits:
    """What a sample is measured with."""

    model_name: str
    max_length: int
    min_tiles: int
    max_tiles: int
    video: VideoConfig
    max_image_pixels: int


def _config(args: argparse.Namespace) -> TrainConfig | None:
    if not getattr(args, "config", None):
        return None
    from internvl_trainer.cli import read_config

    return read_config(args.config)


def _limits(args: argparse.Namespace, config: TrainConfig | None) -> Limits:
    model_name = args.model_name or (config.model.name if config else DEFAULT_MODEL)
    recipe = recipe_limits(model_name)
    data = config.data if config else None
    return Limits(
        model_name=model_name,
        max_length=args.max_seq_length or (data.max_seq_length if data else recipe.max_seq_length),
        min_tiles=args.min_tiles or (data.min_tiles if data else 1),
        max_tiles=args.max_tiles or (data.max_tiles if data else recipe.max_tiles),
        video=data.video if data else VideoConfig(),
        max_image_pixels=data.max_image_pixels if data else MAX_IMAGE_PIXELS,
    )


def _storage(args: argparse.Namespace, config: TrainConfig | None) -> Any:
    from internvl_trainer.storage import Storage

    if getattr(args, "s3_endpoint", None):
        return Storage(StorageConfig(endpoint=args.s3_endpoint, addressing_style="path"))
    return Storage(config.storage if config else StorageConfig())


def _cache_dir(args: argparse.Namespace) -> Path:
    if args.cache_dir:
        return Path(args.cache_dir)
    return Path(os.environ.get("INTERNVL_DATA_CACHE") or Path.home() / ".cache" / "internvl-data")


def _absolute(uri: str) -> str:
    return uri if uri.startswith(("s3://", "file:")) else str(Path(uri).resolve())


def _geometry(folder: Path) -> tuple[int, int, float]:
    """(tile size, patch size, pixel-shuffle ratio) from a model folder's config.json, in either
    layout; InternVL's 448, 14, 0.5 when there is none."""

    def first(value: Any) -> Any:
        return value[0] if isinstance(value, list | tuple) else value

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return 448, 14, 0.5
    vision = config.get("vision_config") or {}
    tile = first(vision.get("image_size")) or config.get("force_image_size") or 448
    patch = first(vision.get("patch_size")) or 14
    return int(tile), int(patch), float(config.get("downsample_ratio", 0.5))


def _builder_factory(args: argparse.Namespace, limits: Limits) -> Callable[[], Any] | None:
    """Makes sample builders that measure (nothing dropped), or None without a tokenizer."""
    if not args.tokenizer:
        return None
    import copy

    from internvl_trainer.data.sample import SampleBuilder
    from internvl_trainer.data.template import ConversationEncoder, tokens_per_tile
    from internvl_trainer.data.tiling import TilingConfig
    from internvl_trainer.data.validate import UNLIMITED, measuring_video
    from internvl_trainer.model.processor import load_tokenizer

    folder = Path(args.tokenizer)
    try:
        tokenizer = load_tokenizer(folder)
    except (OSError, ValueError, KeyError) as error:
        raise BadInput([Problem("--tokenizer", f"cannot load a tokenizer from {folder}: {error}")]) from error
    tile, patch, ratio = _geometry(folder)
    per_tile = tokens_per_tile(tile, patch, ratio)
    tiling = TilingConfig(tile_size=tile, min_tiles=min(limits.min_tiles, limits.max_tiles), max_tiles=limits.max_tiles)

    def make() -> SampleBuilder:
        encoder = ConversationEncoder.for_model(copy.deepcopy(tokenizer), limits.model_name, tokens_per_tile=per_tile)
        return SampleBuilder(
            encoder,
            max_length=UNLIMITED,
            tiling=tiling,
            video=measuring_video(limits.video),
            patch_size=patch,
            downsample_ratio=ratio,
            max_image_pixels=limits.max_image_pixels,
        )

    try:
        make()
    except ValueError as error:
        raise BadInput([Problem("--tokenizer", str(error))]) from error
    return make


def _checker(args: argparse.Namespace, limits: Limits, *, decode: bool) -> Any:
    from internvl_trainer.data.tiling import TilingConfig
    from internvl_trainer.data.validate import SampleChecker

    builder = _builder_factory(args, limits)
    return SampleChecker(
        tiling=TilingConfig(min_tiles=min(limits.min_tiles, limits.max_tiles), max_tiles=limits.max_tiles),
        video=limits.video,
        builder=builder,
        max_length=limits.max_length if builder is not None else None,
        decode=decode,
        max_image_pixels=limits.max_image_pixels,
    )


def _sources(meta_uri: str, storage: Any, cache_dir: Path) -> list[Any]:
    """The datasets of a meta file, annotations indexed, media read from storage each time (a
    check reads every file once). Raises BadInput."""
    from internvl_trainer.data.annotations import data_cache
    from internvl_trainer.data.dataset_source import open_sources

    return open_sources(load_meta(meta_uri, storage), storage, data_cache(cache_dir), media_cache=False)


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.output == "json" else None


# ---------------------------------------------------------------------------------------------
# validate


def _meta_only(args: argparse.Namespace, storage: Any) -> int:
    meta = load_meta(_absolute(args.meta), storage)
    datasets = {name: dataset.model_dump(exclude_none=True) for name, dataset in meta.root.items()}
    if args.output == "json":
        sys.stdout.write(dumps_json({"valid": True, "datasets": datasets}))
        return EXIT_OK
    print(f"{args.meta}: valid, {len(datasets)} dataset(s)")
    for name, dataset in meta.root.items():
        print(f"  {name}: {dataset.annotation} (images under {dataset.root}, repeat {dataset.repeat_time:g})")
    return EXIT_OK


def _counts(counter: Counter[str] | dict[str, int]) -> str:
    """``kind count`` pairs, most frequent first (ties in name order), zeros left out."""
    ranked = sorted((item for item in counter.items() if item[1]), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{kind} {count:,}" for kind, count in ranked)


def _print_validation(meta: str, validation: Any) -> None:
    summary = validation.bad.summary()
    print(f"{meta}: {len(validation.datasets)} dataset(s), {validation.samples:,} samples, {summary['skipped']:,} bad")
    for check in validation.datasets:
        line = f"  {check.name}: {check.samples:,} samples in {check.annotation}"
        if check.kinds:
            line += f"; {_counts(check.kinds)}"
        if check.bad:
            line += f"; bad {sum(check.bad.values()):,} ({_counts(check.bad)})"
        print(line)
        if check.tokens:
            over = sum(1 for tokens in check.tokens if tokens > validation.max_length)
            print(f"    tokens: longest {max(check.tokens):,}, {over:,} over the maximum of {validation.max_length:,}")
    if summary["skipped"]:
        print("bad samples by kind:")
        for kind, count in sorted(summary["byKind"].items(), key=lambda item: -item[1]):
            print(f"  {kind}: {count:,}")
            for example in summary["examples"].get(kind, []):
                print(f"    {example}")


def _validate(args: argparse.Namespace) -> int:
    configure_logging()
    from internvl_trainer.data.report import BadSamples, write_report
    from internvl_trainer.data.validate import validate_sources
    from internvl_trainer.storage import StorageError

    config = _config(args)
    storage = _storage(args, config)
    if args.meta_only:
        return _meta_only(args, storage)
    limits = _limits(args, config)
    checker = _checker(args, limits, decode=True)
    try:
        sources = _sources(_absolute(args.meta), storage, _cache_dir(args))
        validation = validate_sources(
            sources, checker, bad=BadSamples(examples=args.examples), workers=args.workers, progress=_progress(args)
        )
    except StorageError as error:
        sys.stderr.write(f"validate failed: {error}\n")
        return EXIT_FAILED
    report = {"valid": validation.bad.total == 0, "meta": args.meta, **validation.to_dict()}
    if args.report:
        write_report(report, _absolute(args.report), storage)
    if args.output == "json":
        sys.stdout.write(dumps_json(report))
    else:
        _print_validation(args.meta, validation)
    return EXIT_FAILED if args.strict and validation.bad.total else EXIT_OK


# ---------------------------------------------------------------------------------------------
# convert


def _convert(args: argparse.Namespace) -> int:
    configure_logging()
    from internvl_trainer.data.annotations import open_annotation
    from internvl_trainer.data.dataset_source import DatasetSource
    from internvl_trainer.data.errors import RecordJsonError, SampleError
    from internvl_trainer.data.index import AnnotationFormatError
    from internvl_trainer.data.records import parse_record
    from internvl_trainer.data.report import BadSamples
    from internvl_trainer.data.validate import ordered
    from internvl_trainer.storage import StorageError

    config = _config(args)
    storage = _storage(args, config)
    limits = _limits(args, config)
    checker = _checker(args, limits, decode=False) if args.tokenizer else None
    source_uri = _absolute(args.input)
    root = _absolute(args.root) if args.root else source_uri.rsplit("/", 1)[0]
    try:
        annotations = open_annotation(source_uri, storage, _cache_dir(args) / "convert")
    except (StorageError, OSError) as error:
        raise BadInput([Problem(args.input, f"cannot read: {error}")]) from error
    except AnnotationFormatError as error:
        raise BadInput([Problem(args.input, str(error))]) from error
    dataset = DatasetMeta.model_construct(
        root=root, annotation=source_uri, data_augment=False, repeat_time=1.0, max_dynamic_patch=args.max_dynamic_patch
    )
    source = DatasetSource("input", dataset, annotations, storage)
    bad = BadSamples(examples=args.examples)

    def convert(number: int) -> tuple[dict[str, Any] | None, SampleError | None]:
        raw = annotations.read(number)
        try:
            record = parse_record(raw)
        except RecordJsonError as error:
            return None, error
        except SampleError as error:
            return json.loads(raw), error  # written as it is, reported
        data = record.to_internvl()
        if checker is not None:
            try:
                data["length"] = checker.check(source, number).tokens
            except SampleError as error:
                return data, error
        return data, None

    written = with_length = 0
    output = Path(args.destination) if not args.destination.startswith("s3://") else None
    folder = output.parent if output is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", dir=folder, suffix=".partial", delete=False, encoding="utf-8")
    try:
        with handle:
            for number, (data, error) in enumerate(ordered(convert, range(len(annotations)), args.workers)):
                if error is not None:
                    bad.skip(error, annotations.where(number))
                if data is None:
                    continue
                handle.write(json.dumps(data, ensure_ascii=False) + "\n")
                written += 1
                if checker is not None and error is None:
                    with_length += 1
        if output is not None:
            os.replace(handle.name, output)
        else:
            storage.upload(handle.name, args.destination)
    except StorageError as error:
        sys.stderr.write(f"convert failed: {error}\n")
        return EXIT_FAILED
    finally:
        Path(handle.name).unlink(missing_ok=True)
    summary = bad.summary()
    result = {
        "input": args.input,
        "output": args.destination,
        "format": annotations.format,
        "samples": len(annotations),
        "written": written,
        "withLength": with_length,
        "badSamples": summary,
    }
    if args.output_format == "json":
        sys.stdout.write(dumps_json(result))
    else:
        print(
            f"{args.destination}: {written:,} of {len(annotations):,} samples from {args.input} ({annotations.format})"
        )
        if checker is None:
            print("  no length: pass --tokenizer to add each sample's token length")
        else:
            print(f"  {with_length:,} with their token length")
        if summary["skipped"]:
            print(
                f"  {summary['skipped']:,} with problems ({_counts(summary['byKind'])}); not JSON objects are left out:"
            )
            for examples in summary["examples"].values():
                for example in examples:
                    print(f"    {example}")
    return EXIT_FAILED if args.strict and summary["skipped"] else EXIT_OK


# ---------------------------------------------------------------------------------------------
# stats


def _stats(args: argparse.Namespace) -> int:
    configure_logging()
    from internvl_trainer.data.plots import stats_png
    from internvl_trainer.data.validate import validate_sources
    from internvl_trainer.storage import StorageError

    config = _config(args)
    storage = _storage(args, config)
    limits = _limits(args, config)
    checker = _checker(args, limits, decode=False)
    try:
        sources = _sources(_absolute(args.meta), storage, _cache_dir(args))
        validation = validate_sources(sources, checker, workers=args.workers, progress=_progress(args))
    except StorageError as error:
        sys.stderr.write(f"stats failed: {error}\n")
        return EXIT_FAILED
    tiles = [value for check in validation.datasets for value in check.tiles]
    tokens = [value for check in validation.datasets for value in check.tokens] if args.tokenizer else None
    # Over-long samples are readable: they count under their kind (the token histogram shows them).
    datasets = {
        check.name: {
            **{kind: check.kinds.get(kind, 0) for kind in _KINDS},
            "bad": sum(count for kind, count in check.bad.items() if kind != "overlong"),
        }
        for check in validation.datasets
    }
    title = f"{args.meta}: {validation.samples:,} samples in {len(datasets)} dataset(s)"
    png = stats_png(
        args.png,
        title=title,
        tiles=tiles,
        tokens=tokens,
        datasets=datasets,
        bad=validation.bad.summary()["byKind"],
        max_length=limits.max_length if tokens is not None else None,
    )
    result = {"png": str(png), **validation.to_dict()}
    if args.output == "json":
        sys.stdout.write(dumps_json(result))
        return EXIT_OK
    print(f"{png}: {title}")
    for check in validation.datasets:
        print(f"  {check.name}: {_counts(datasets[check.name]) or 'no samples'}")
    print(f"  tiles per sample: {_describe(tiles)}")
    if tokens is not None:
        print(f"  tokens per sample: {_describe(tokens)} (maximum {limits.max_length:,})")
    return EXIT_OK


_KINDS = ("text", "image", "multi-image", "video", "frames")


def _describe(values: list[int]) -> str:
    if not values:
        return "none"
    ordered_values = sorted(values)
    median = ordered_values[len(ordered_values) // 2]
    return f"min {ordered_values[0]:,}, median {median:,}, max {ordered_values[-1]:,}"


# ---------------------------------------------------------------------------------------------


def _add_measure_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", metavar="FILE", help="train.yaml: object store, model, length and tile limits")
    command.add_argument("--tokenizer", metavar="DIR", help="model or tokenizer folder: enables token lengths")
    command.add_argument("--model-name", choices=MODEL_NAMES, help=f"catalog model (template); default {DEFAULT_MODEL}")
    command.add_argument("--max-seq-length", type=int, metavar="N", help="longest sequence (default: the recipe's)")
    command.add_argument("--max-tiles", type=int, metavar="N", help="tile budget per sample (default: the recipe's)")
    command.add_argument("--min-tiles", type=int, metavar="N", help="fewest tiles per image (default 1)")
    command.add_argument("--workers", type=int, default=4, metavar="N", help="threads reading and checking samples")
    command.add_argument("--cache-dir", metavar="DIR", help="annotation indexes and cached annotation files")
    command.add_argument(
        "--s3-endpoint", metavar="URL", help="S3-compatible endpoint, path addressing (default: --config's, else AWS)"
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="internvl-data",
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = root.add_subparsers(dest="command", required=True)

    check = commands.add_parser("validate", help="check every sample of a meta file's datasets")
    check.add_argument("meta", metavar="META", help="InternVL meta file (JSON or YAML; local or s3://)")
    check.add_argument("--strict", action="store_true", help="exit 1 when any sample is bad")
    check.add_argument("--output", choices=["text", "json"], default="text")
    check.add_argument("--report", metavar="FILE", help="also write the JSON report here (local or s3://)")
    check.add_argument("--examples", type=int, default=5, metavar="N", help="examples shown per kind of problem")
    check.add_argument("--meta-only", action="store_true", help="check the meta file alone, not the samples")
    _add_measure_options(check)
    check.set_defaults(handler=_validate)

    convert = commands.add_parser("convert", help="JSON array (or JSON lines) → JSON lines with per-sample length")
    convert.add_argument("input", metavar="INPUT", help="annotation file: a JSON array or JSON lines (local or s3://)")
    convert.add_argument("destination", metavar="OUTPUT", help="JSON lines file to write (local or s3://)")
    convert.add_argument("--root", metavar="DIR", help="folder the media paths are relative to (default: INPUT's)")
    convert.add_argument("--max-dynamic-patch", type=int, metavar="N", help="the dataset's tile cap, as in meta.json")
    convert.add_argument("--strict", action="store_true", help="exit 1 when any sample has a problem")
    convert.add_argument("--examples", type=int, default=5, metavar="N", help="examples shown per kind of problem")
    convert.add_argument("--format", dest="output_format", choices=["text", "json"], default="text")
    _add_measure_options(convert)
    convert.set_defaults(handler=_convert)

    stats = commands.add_parser("stats", help="PNG histograms of token lengths and tiles, counts per dataset")
    stats.add_argument("meta", metavar="META", help="InternVL meta file (JSON or YAML; local or s3://)")
    stats.add_argument("--png", default="data-stats.png", metavar="FILE", help="the image to write")
    stats.add_argument("--output", choices=["text", "json"], default="text")
    _add_measure_options(stats)
    stats.set_defaults(handler=_stats)
    return root


def main(argv: list[str] | None = None) -> int:
    # Each bad sample is in the summary; the data modules' per-sample warnings would repeat them.
    logger = logging.getLogger("internvl_trainer")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return run_command(parser(), argv)
    finally:
        logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())

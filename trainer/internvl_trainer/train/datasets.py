"""The run's datasets: an InternVL meta file → the sampler's datasets, a held-out split, and the
``build`` function every data-loader worker calls.

This is the trainer's thin adapter over the data modules. It reads the meta file and each
annotation JSONL through the storage layer (S3 or local; remote annotation files are fetched once
into the node's cache), indexes every line by byte offset (8 bytes per line in memory), and
builds a drawn sample from its line with ``SampleBuilder`` (images and videos read through the
cache). The Data I work (a shared on-disk index, the JSON-array and ``image_folder`` variants) can
replace ``AnnotationFile`` without changing the interface the run uses: ``specs``, ``build``,
``eval_refs``, ``record`` and ``report``.

The held-out split takes ``round(evalSplit · N)`` lines of each dataset, chosen with the seed by a
permutation; training sample ``i`` of a dataset is line ``perm(k + i)``, held-out sample ``j`` is
line ``perm(j)``. A bad sample (broken JSON, missing or undecodable media, wrong placeholders) is
skipped and recorded with its ``file:line`` in a per-process JSON lines file, from which the data
report is made; in strict mode the first one stops the run (``StrictDataError``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from internvl_trainer.config import TrainConfig
from internvl_trainer.data.errors import SampleError
from internvl_trainer.data.meta import DatasetMeta, MetaFile, parse_meta
from internvl_trainer.data.sample import BuiltSample, SampleBuilder
from internvl_trainer.data.sampling import DatasetSpec, Permutation, SampleRef
from internvl_trainer.data.template import ConversationEncoder
from internvl_trainer.data.tiling import TilingConfig
from internvl_trainer.storage import Cache, DatasetRoot, Storage, StorageError, UnsafeKeyError, parse

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 50 * 1024**3
EXAMPLES_PER_KIND = 5


class StrictDataError(SampleError):
    """A bad sample in strict mode: the message starts with ``file:line``."""

    kind = "strict"


@dataclass(frozen=True)
class Where:
    """A sample's place: dataset number, line number (0-based) in its annotation file."""

    dataset: int
    line: int


class AnnotationFile:
    """A JSONL annotation file indexed by the byte offset of each non-empty line."""

    def __init__(self, path: Path, uri: str):
        self.path = path
        self.uri = uri
        self.offsets, self.line_numbers = _index_lines(path)
        self._handle: Any = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

    def read(self, number: int) -> bytes:
        """The raw text of record ``number`` (a forked worker reopens the file)."""
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.path, "rb")  # noqa: SIM115 - kept open for the process's life
            self._pid = os.getpid()
        self._handle.seek(int(self.offsets[number]))
        return self._handle.readline()

    def where(self, number: int) -> str:
        """``file:line`` (1-based, as editors count) of record ``number``."""
        return f"{self.uri}:{int(self.line_numbers[number]) + 1}"


def _index_lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    offsets: list[int] = []
    numbers: list[int] = []
    position = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle):
            if line.strip():
                offsets.append(position)
                numbers.append(number)
            position += len(line)
    return np.asarray(offsets, dtype=np.int64), np.asarray(numbers, dtype=np.int64)


def _key(*parts: Any) -> int:
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def media_of(record: dict[str, Any]) -> tuple[list[str], str | None]:
    """The image paths and the video path of an annotation record."""
    images = record.get("image") or []
    if isinstance(images, str):
        images = [images]
    video = record.get("video") or None
    return list(images), video


class BadSamples:
    """Bad samples of this process, appended to ``folder/bad-<pid>.jsonl`` (workers included)."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    def record(self, kind: str, where: str, message: str) -> None:
        log.warning("skipped a bad sample at %s (%s): %s", where, kind, message)
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"bad-{os.getpid()}.jsonl", "a") as handle:
            handle.write(json.dumps({"kind": kind, "where": where, "message": message}) + "\n")

    def summary(self) -> dict[str, Any]:
        """Counts by kind and the first examples of each, over every process's file."""
        counts: Counter[str] = Counter()
        examples: dict[str, list[str]] = {}
        seen: set[tuple[str, str]] = set()
        files = sorted(self.folder.glob("bad-*.jsonl")) if self.folder is not None and self.folder.is_dir() else []
        for path in files:
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                key = (entry["kind"], entry["where"])
                if key in seen:  # rebuilt on resume, or drawn again in a later epoch
                    continue
                seen.add(key)
                counts[entry["kind"]] += 1
                listed = examples.setdefault(entry["kind"], [])
                if len(listed) < EXAMPLES_PER_KIND:
                    listed.append(f"{entry['where']}: {entry['message']}")
        return {"skipped": sum(counts.values()), "byKind": dict(counts), "examples": examples}


class RunData:
    """The datasets of one run (see the module docstring)."""

    def __init__(
        self,
        meta: MetaFile,
        files: Sequence[AnnotationFile],
        builder: SampleBuilder,
        *,
        storage: Storage,
        cache: Cache,
        seed: int,
        eval_split: float = 0.0,
        strict: bool = False,
        bad: BadSamples | None = None,
    ):
        self.meta = meta
        self.names = list(meta.root)
        self.datasets: list[DatasetMeta] = list(meta.root.values())
        self.files = list(files)
        self.roots = [DatasetRoot(dataset.root) for dataset in self.datasets]
        self.builder = builder
        self.storage = storage
        self.cache = cache
        self.seed = seed
        self.strict = strict
        self.bad = bad or BadSamples(None)
        self.held_out = [round(eval_split * len(file)) for file in self.files]
        self._orders = [
            Permutation(len(file), _key("eval-split", seed, number)) if len(file) else None
            for number, file in enumerate(self.files)
        ]

    # -- what the sampler sees ------------------------------------------------------------------

    def specs(self) -> list[DatasetSpec]:
        """The training datasets (held-out lines removed) for ``MixtureSampler``."""
        return [
            DatasetSpec(name, len(file) - held, repeat_time=dataset.repeat_time)
            for name, dataset, file, held in zip(self.names, self.datasets, self.files, self.held_out, strict=True)
        ]

    def line(self, dataset: int, index: int, *, held_out: bool = False) -> int:
        """The record number of training (or held-out) sample ``index`` of ``dataset``."""
        order = self._orders[dataset]
        assert order is not None
        position = index if held_out else self.held_out[dataset] + index
        return int(order(np.asarray([position], dtype=np.int64))[0])

    def eval_refs(self) -> list[Where]:
        """Every held-out sample, dataset by dataset."""
        return [
            Where(dataset, self.line(dataset, index, held_out=True))
            for dataset, held in enumerate(self.held_out)
            for index in range(held)
        ]

    # -- records and samples ---------------------------------------------------------------------

    def record(self, where: Where) -> dict[str, Any]:
        """The parsed annotation record. Raises SampleError."""
        raw = self.files[where.dataset].read(where.line)
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SampleError(f"invalid JSON: {error}") from None
        if not isinstance(record, dict):
            raise SampleError("a record must be a JSON object")
        return record

    def where(self, where: Where) -> str:
        return self.files[where.dataset].where(where.line)

    def _media(self, dataset: int, key: str) -> bytes:
        try:
            return self.cache.read_bytes(self.storage, self.roots[dataset].resolve(key))
        except UnsafeKeyError as error:
            raise SampleError(str(error)) from None
        except (StorageError, OSError) as error:
            raise SampleError(f"cannot read {key}: {error}") from None

    def build_record(self, where: Where, record: dict[str, Any], rng: np.random.Generator) -> BuiltSample | None:
        """The sample of an annotation record. Raises SampleError; None when the over-long policy
        drops it."""
        dataset = self.datasets[where.dataset]
        conversations = record.get("conversations")
        if not isinstance(conversations, list) or not conversations:
            raise SampleError("the record has no conversations")
        images, video = media_of(record)
        if video is not None:
            return self.builder.build(
                conversations,
                video=self._media(where.dataset, video),
                clip=record.get("clip"),
                augment=dataset.data_augment,
                rng=rng,
            )
        return self.builder.build(
            conversations,
            images=[self._media(where.dataset, image) for image in images],
            augment=dataset.data_augment,
            max_tiles=dataset.max_dynamic_patch,
            rng=rng,
        )

    def build_at(self, where: Where, rng: np.random.Generator) -> BuiltSample | None:
        """The sample at ``where``; None when it is bad (recorded) or dropped as over-long."""
        try:
            return self.build_record(where, self.record(where), rng)
        except SampleError as error:
            place = self.where(where)
            if self.strict:
                raise StrictDataError(f"{place}: {error}") from None
            self.bad.record(getattr(error, "kind", "sample"), place, str(error))
            return None

    def build(self, ref: SampleRef) -> BuiltSample | None:
        """What ``PackedStream`` calls for a drawn training sample (its randomness from the draw)."""
        return self.build_at(Where(ref.dataset, self.line(ref.dataset, ref.index)), ref.rng(self.seed))

    def build_eval(self, where: Where) -> BuiltSample | None:
        return self.build_at(where, np.random.default_rng([self.seed, where.dataset, where.line]))

    def iter_eval(self) -> Iterator[tuple[Where, BuiltSample | None]]:
        for where in self.eval_refs():
            yield where, self.build_eval(where)

    def report(self) -> dict[str, Any]:
        """The data report's dataset part: lines, held-out lines, bad samples by kind."""
        counters = self.builder.counters
        return {
            "datasets": {
                name: {"annotation": file.uri, "lines": len(file), "heldOut": held}
                for name, file, held in zip(self.names, self.files, self.held_out, strict=True)
            },
            "badSamples": self.bad.summary(),
            "refusedKeys": sum(root.refused for root in self.roots),
            "overlongInMainProcess": vars(counters).copy(),
        }


# ---------------------------------------------------------------------------------------------


def builder_for(config: TrainConfig, tokenizer: Any, model_config: Any) -> SampleBuilder:
    """The sample builder of a run: the model's template, its tile size and tokens per tile."""
    vision = model_config.vision_config
    image_size = int(_first(vision.image_size))
    patch_size = int(_first(vision.patch_size))
    encoder = ConversationEncoder.for_model(
        tokenizer, config.model.name, tokens_per_tile=int(model_config.image_seq_length)
    )
    data = config.data
    return SampleBuilder(
        encoder,
        max_length=int(data.max_seq_length),
        tiling=TilingConfig(tile_size=image_size, min_tiles=data.min_tiles, max_tiles=int(data.max_tiles)),
        video=data.video,
        overlong=data.overlong,
        patch_size=patch_size,
        downsample_ratio=float(model_config.downsample_ratio),
    )


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list | tuple) else value


def read_meta_file(uri: str, storage: Storage) -> MetaFile:
    """The meta file at a URI. Raises BadInput naming it."""
    from internvl_trainer.problems import BadInput, Problem

    try:
        text = storage.read_bytes(uri).decode()
    except (StorageError, OSError, UnicodeDecodeError) as error:
        raise BadInput([Problem("data.meta", f"cannot read {uri}: {error}")]) from error
    return parse_meta(text, uri)


def open_annotations(meta: MetaFile, storage: Storage, cache: Cache) -> list[AnnotationFile]:
    """Every dataset's annotation file, fetched into the cache when remote, and indexed."""
    from internvl_trainer.problems import BadInput, Problem

    files = []
    problems = []
    for name, dataset in meta.root.items():
        uri = str(parse(dataset.annotation))
        try:
            path = cache.fetch(storage, uri)
        except (StorageError, OSError) as error:
            problems.append(Problem(f"{name}.annotation", f"cannot read {uri}: {error}"))
            continue
        files.append(AnnotationFile(path, uri))
    if problems:
        raise BadInput(problems)
    return files


def open_run_data(
    config: TrainConfig,
    tokenizer: Any,
    model_config: Any,
    *,
    storage: Storage,
    cache_dir: Path,
    bad_dir: Path | None = None,
    meta_uri: str | None = None,
    eval_split: float | None = None,
) -> RunData:
    """The datasets of ``config`` (or of another meta file, for ``evaluate``): remote files cached
    in ``cache_dir`` (capped by ``$INTERNVL_DATA_CACHE_BYTES``, 50 GiB by default), bad samples
    recorded under ``bad_dir``."""
    cache = Cache(cache_dir, int(os.environ.get("INTERNVL_DATA_CACHE_BYTES", DEFAULT_CACHE_BYTES)))
    meta = read_meta_file(meta_uri or config.data.meta, storage)
    files = open_annotations(meta, storage, cache)
    return RunData(
        meta,
        files,
        builder_for(config, tokenizer, model_config),
        storage=storage,
        cache=cache,
        seed=config.training.seed,
        eval_split=config.data.eval_split if eval_split is None else eval_split,
        strict=config.data.strict,
        bad=BadSamples(bad_dir),
    )

"""The run's datasets: an InternVL meta file → the sampler's datasets, a held-out split, and the
``build`` function every data-loader worker calls.

This is the trainer's thin layer over the data modules: ``load_meta`` reads the meta file (every
variant InternVL users write), ``open_sources`` indexes each annotation file by byte offset once
per node (the index is mapped by every rank and worker) and reads media through the node's cache,
``DatasetSource.build_or_skip`` turns a sample into a ``BuiltSample`` and ``BadSamples`` counts the
bad ones (over-long ones the policy drops included) by kind with their ``file:line`` (in strict mode
the first one stops the run). Each process (rank or data-loader worker) keeps the over-long
policy's counters of the samples it built and, with a bad-samples folder, stores them there after
each change, so that the data report adds up every process on the node.

The held-out split takes ``round(evalSplit · N)`` samples of each dataset, chosen with the seed by
a permutation; training sample ``i`` of a dataset is sample ``perm(k + i)`` of its file, held-out
sample ``j`` is ``perm(j)``. The sampler sees each dataset's training samples with its meta file's
``repeat_time`` and ``weight``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from internvl_trainer.config import TrainConfig
from internvl_trainer.data.annotations import data_cache, dataset_specs
from internvl_trainer.data.dataset_source import DatasetSource, open_sources
from internvl_trainer.data.meta import MetaFile, load_meta
from internvl_trainer.data.overlong import OverlongCounters
from internvl_trainer.data.report import BadSamples
from internvl_trainer.data.sample import BuiltSample, SampleBuilder
from internvl_trainer.data.sampling import DatasetSpec, Permutation, SampleRef
from internvl_trainer.data.template import ConversationEncoder
from internvl_trainer.data.tiling import TilingConfig
from internvl_trainer.storage import Storage


@dataclass(frozen=True)
class Where:
    """A sample's place: dataset number, sample number (0-based) in its annotation file."""

    dataset: int
    line: int


def _key(*parts: Any) -> int:
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


class RunData:
    """The datasets of one run (see the module docstring)."""

    def __init__(
        self,
        meta: MetaFile,
        sources: Sequence[DatasetSource],
        builder: SampleBuilder,
        *,
        seed: int,
        eval_split: float = 0.0,
        bad: BadSamples | None = None,
    ):
        self.meta = meta
        self.sources = list(sources)
        self.names = [source.name for source in self.sources]
        self.builder = builder
        self.seed = seed
        self.bad = bad or BadSamples()
        self._process = (os.getpid(), secrets.token_hex(4))
        self.held_out = [round(eval_split * len(source)) for source in self.sources]
        self._orders = [
            Permutation(len(source), _key("eval-split", seed, number)) if len(source) else None
            for number, source in enumerate(self.sources)
        ]

    # -- what the sampler sees ------------------------------------------------------------------

    def specs(self) -> list[DatasetSpec]:
        """The training datasets (held-out samples removed) for ``MixtureSampler``."""
        sizes = [len(source) - held for source, held in zip(self.sources, self.held_out, strict=True)]
        return dataset_specs(self.meta, sizes)

    def line(self, dataset: int, index: int, *, held_out: bool = False) -> int:
        """The sample number in its file of training (or held-out) sample ``index`` of ``dataset``."""
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

    def all_refs(self) -> list[Where]:
        """Every sample of every dataset, in file order."""
        return [Where(dataset, line) for dataset, source in enumerate(self.sources) for line in range(len(source))]

    # -- records and samples ---------------------------------------------------------------------

    def record(self, where: Where) -> dict[str, Any]:
        """The sample's record as InternVL spells it (``from``/``value``, human/gpt). Raises
        SampleError."""
        return self.sources[where.dataset].record(where.line).to_internvl()

    def where(self, where: Where) -> str:
        """``file:line`` of a sample."""
        return self.sources[where.dataset].where(where.line)

    def build_at(self, where: Where, rng: np.random.Generator) -> BuiltSample | None:
        """The sample at ``where``; None when it is bad or dropped as over-long (counted). Raises
        StrictDataError in strict mode."""
        counters = self._own_counters()
        before = replace(counters)
        try:
            return self.sources[where.dataset].build_or_skip(where.line, self.builder, rng, self.bad)
        finally:
            if counters != before and self.bad.folder is not None:
                pid, token = self._process
                self.bad.folder.mkdir(parents=True, exist_ok=True)
                counters.store(self.bad.folder / f"overlong-{pid}-{token}.json")

    def _own_counters(self) -> OverlongCounters:
        """The builder's over-long counters, started afresh in each process: a data-loader worker
        receives a copy of its parent's, whose counts are the parent's to report. The file name
        has a random part too, as a later attempt on the node may reuse a pid."""
        if self._process[0] != os.getpid():
            self._process = (os.getpid(), secrets.token_hex(4))
            self.builder.counters = OverlongCounters()
        return self.builder.counters

    def overlong(self) -> OverlongCounters:
        """What the over-long policy did: over every process on this node with a bad-samples
        folder, else over this one."""
        folder = self.bad.folder
        if folder is None:
            return self.builder.counters
        return OverlongCounters.total(sorted(folder.glob("overlong-*.json")) if folder.is_dir() else [])

    def build(self, ref: SampleRef) -> BuiltSample | None:
        """What ``PackedStream`` calls for a drawn training sample (its randomness from the draw)."""
        return self.build_at(Where(ref.dataset, self.line(ref.dataset, ref.index)), ref.rng(self.seed))

    def build_eval(self, where: Where) -> BuiltSample | None:
        return self.build_at(where, np.random.default_rng([self.seed, where.dataset, where.line]))

    def iter_eval(self) -> Iterator[tuple[Where, BuiltSample | None]]:
        for where in self.eval_refs():
            yield where, self.build_eval(where)

    def report(self) -> dict[str, Any]:
        """The data report's dataset part: samples, held-out samples, bad samples by kind."""
        return {
            "datasets": {
                source.name: {
                    "annotation": source.annotations.uri,
                    "format": source.annotations.format,
                    "samples": len(source),
                    "heldOut": held,
                    "repeatTime": source.dataset.repeat_time,
                    "weight": source.dataset.weight,
                }
                for source, held in zip(self.sources, self.held_out, strict=True)
            },
            "badSamples": self.bad.summary(),
            "refusedKeys": sum(source.root.refused for source in self.sources),
            "overlong": self.overlong().as_dict(),
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
        max_length=data.max_seq_length,
        tiling=TilingConfig(tile_size=image_size, min_tiles=data.min_tiles, max_tiles=data.max_tiles),
        video=data.video,
        overlong=data.overlong,
        patch_size=patch_size,
        downsample_ratio=float(model_config.downsample_ratio),
        max_image_pixels=data.max_image_pixels,
    )


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list | tuple) else value


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
    """The datasets of ``config`` (or of another meta file, for ``evaluate``): annotation indexes
    and remote files cached in ``cache_dir`` (capped by ``$INTERNVL_DATA_CACHE_BYTES``, 50 GiB by
    default), bad samples of every process recorded under ``bad_dir``. Raises BadInput naming the
    meta file or the dataset that cannot be read."""
    meta = load_meta(meta_uri or config.data.meta, storage)
    sources = open_sources(meta, storage, data_cache(cache_dir))
    return RunData(
        meta,
        sources,
        builder_for(config, tokenizer, model_config),
        seed=config.training.seed,
        eval_split=config.data.eval_split if eval_split is None else eval_split,
        bad=BadSamples(strict=config.data.strict, folder=bad_dir),
    )

"""Checking every sample of a meta file's datasets before a run spends GPU hours on them.

``SampleChecker.check`` reads one sample the way training does and raises the ``SampleError`` a
training run would skip it for: the record's JSON, roles and placeholders (``records``), its media
paths (inside the root), files (they exist) and decoding (images fully decoded, a video opened and
a frame decoded, every frame of a frame list decoded). With a sample builder (a tokenizer is
known) the sample is built by ``SampleBuilder.build`` itself, so the token length counts the
template, the BOS and every tile's image tokens exactly as training does; videos are measured at
their largest frame count (``rand`` sampling measured as ``middle``), and the length is compared
with the maximum afterwards (``overlong``). Without a builder only tiles are counted, from the
image sizes with the run's tile budget.

``validate_sources`` runs the checker over every sample on a few threads (media reads are mostly
waiting on storage), in order, with a progress bar, and adds up what it found per dataset.
"""

from __future__ import annotations

import threading
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from internvl_trainer.config import MAX_IMAGE_PIXELS, VideoConfig
from internvl_trainer.data.dataset_source import DatasetSource
from internvl_trainer.data.errors import MissingMediaError, SampleError
from internvl_trainer.data.images import decode_image, image_size
from internvl_trainer.data.overlong import overlong_error
from internvl_trainer.data.records import RecordKind
from internvl_trainer.data.report import BadSamples
from internvl_trainer.data.tiling import Tiler, TilingConfig, per_image_budget
from internvl_trainer.data.video import frame_indices, read_frames

UNLIMITED = 2**31 - 1
"""The maximum length of the builders that measure: nothing is dropped or cut while measuring."""


def measuring_video(config: VideoConfig) -> VideoConfig:
    """The video settings that give a sample's longest form: ``rand`` sampling (a random frame
    count per read) measured as ``middle`` (the most frames, deterministic)."""
    return config.model_copy(update={"sampling": "middle"}) if config.sampling == "rand" else config


@dataclass
class Checked:
    """What a good sample turned out to be."""

    kind: RecordKind
    tiles: int
    """Tiles (images' tiles with thumbnails, or frames)."""
    tokens: int | None = None
    """Sequence length with every image token, when a builder measured it."""


class SampleChecker:
    """Checks samples (see the module docstring). ``builder`` makes a SampleBuilder (one per thread;
    tokenizers must not be shared between threads); it must not drop over-long samples
    (``max_length=UNLIMITED``) and refuses images over its own pixel limit; without one, images
    over ``max_image_pixels`` are refused. ``decode=False`` reads image headers only (statistics)."""

    def __init__(
        self,
        *,
        tiling: TilingConfig | None = None,
        video: VideoConfig | None = None,
        builder: Callable[[], Any] | None = None,
        max_length: int | None = None,
        decode: bool = True,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ):
        self.tiler = Tiler(tiling or TilingConfig())
        self.video = measuring_video(video or VideoConfig())
        self.make_builder = builder
        self.max_length = max_length
        self.decode = decode
        self.max_image_pixels = max_image_pixels
        self._local = threading.local()

    def builder(self) -> Any:
        made = getattr(self._local, "builder", None)
        if made is None and self.make_builder is not None:
            made = self._local.builder = self.make_builder()
        return made

    def check(self, source: DatasetSource, number: int) -> Checked:
        """Check sample ``number`` of ``source``. Raises SampleError."""
        record = source.record(number)
        if record.kind == "frames":
            keys = source.frame_keys(record)
            for key in keys:
                if not source.exists(key):
                    raise MissingMediaError(f"{key}: no such file under {source.dataset.root}")
        builder = self.builder()
        if builder is not None:
            inputs = source.build_inputs(record)
            inputs["augment"] = False
            rng = np.random.default_rng([number])
            sample = builder.build(record.conversations, rng=rng, **inputs)
            return Checked(record.kind, len(sample.tiles), len(sample))
        if record.kind == "text":
            return Checked("text", 0)
        if record.kind in ("image", "multi-image"):
            budget = per_image_budget(
                self.tiler.config.max_tiles
                if source.dataset.max_dynamic_patch is None
                else source.dataset.max_dynamic_patch,
                len(record.images),
            )
            tiles = 0
            for key in record.images:
                data = source.read_media(key)
                limit = self.max_image_pixels
                width, height = decode_image(data, limit).size if self.decode else image_size(data, limit)
                tiles += self.tiler.count(width, height, budget)
            return Checked(record.kind, tiles)
        rng = np.random.default_rng([number])
        if record.kind == "frames":
            frames = source.frames(record)
            length, fps = len(frames), frames.get_avg_fps()
            if self.decode:
                for frame in frames.frames:
                    decode_image(frame(), self.max_image_pixels)  # type: ignore[operator]
        else:
            assert record.video is not None
            one = VideoConfig(sampling="middle", min_frames=1, max_frames=1)
            probe = read_frames(source.read_media(record.video), one, rng)
            length, fps = probe.length, probe.fps
        return Checked(record.kind, len(frame_indices(self.video, length, fps, rng, record.clip)))


@dataclass
class DatasetCheck:
    """What was found in one dataset."""

    name: str
    annotation: str
    format: str
    samples: int
    kinds: Counter[str] = field(default_factory=Counter)
    """Samples read and measured, by kind (text, image, multi-image, video, frames); over-long ones
    are also counted as bad."""
    bad: Counter[str] = field(default_factory=Counter)
    """Bad samples by problem kind."""
    tiles: array = field(default_factory=lambda: array("l"))
    """Tiles of each good sample."""
    tokens: array = field(default_factory=lambda: array("l"))
    """Tokens of each good sample (with a builder)."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "annotation": self.annotation,
            "format": self.format,
            "samples": self.samples,
            "readable": sum(self.kinds.values()),
            "kinds": dict(self.kinds),
            "bad": dict(sorted(self.bad.items())),
            "tiles": sum(self.tiles),
        }
        if self.tokens:
            data["tokens"] = sum(self.tokens)
            data["maxTokens"] = max(self.tokens)
        return data


@dataclass
class Validation:
    """Every dataset's findings and the bad samples."""

    datasets: list[DatasetCheck]
    bad: BadSamples
    max_length: int | None = None

    @property
    def samples(self) -> int:
        return sum(dataset.samples for dataset in self.datasets)

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "readable": sum(sum(dataset.kinds.values()) for dataset in self.datasets),
            "maxLength": self.max_length,
            "datasets": {dataset.name: dataset.to_dict() for dataset in self.datasets},
            "badSamples": self.bad.summary(),
        }


def jobs_for(sources: Sequence[DatasetSource]) -> Iterator[tuple[int, int]]:
    """(dataset, sample) of every sample, in file order."""
    return ((dataset, number) for dataset, source in enumerate(sources) for number in range(len(source)))


def ordered(function: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """``function`` of each item, in order, computed on ``workers`` threads with a bounded number
    in flight (inline when ``workers`` <= 1)."""
    if workers <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="data-check") as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def validate_sources(
    sources: Sequence[DatasetSource],
    checker: SampleChecker,
    *,
    bad: BadSamples | None = None,
    workers: int = 4,
    progress: bool | None = None,
) -> Validation:
    """Check every sample of ``sources``; bad ones go to ``bad`` (strict mode raises at the first,
    in file order). ``progress`` None shows the bar on a terminal only."""
    from tqdm import tqdm

    bad = bad if bad is not None else BadSamples()
    found = [
        DatasetCheck(source.name, source.annotations.uri, source.annotations.format, len(source)) for source in sources
    ]

    def run(job: tuple[int, int]) -> Checked | SampleError:
        dataset, number = job
        try:
            return checker.check(sources[dataset], number)
        except SampleError as error:
            return error

    def take(job: tuple[int, int], outcome: Checked | SampleError) -> None:
        dataset, number = job
        check = found[dataset]
        if isinstance(outcome, SampleError):
            check.bad[outcome.kind] += 1
            bad.skip(outcome, sources[dataset].where(number))
            return
        check.kinds[outcome.kind] += 1
        check.tiles.append(outcome.tiles)
        if outcome.tokens is not None:
            check.tokens.append(outcome.tokens)
            if checker.max_length is not None and outcome.tokens > checker.max_length:
                error = overlong_error(outcome.tokens, outcome.tiles, checker.max_length)
                check.bad[error.kind] += 1
                bad.skip(error, sources[dataset].where(number))

    total = sum(len(source) for source in sources)
    with tqdm(total=total, unit="sample", desc="checking", disable=None if progress is None else not progress) as bar:
        for job, outcome in zip(jobs_for(sources), ordered(run, jobs_for(sources), workers), strict=True):
            take(job, outcome)
            bar.update()
    return Validation(found, bad, checker.max_length)

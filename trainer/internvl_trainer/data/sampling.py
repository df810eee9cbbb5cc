"""Which samples a run trains on, in which order, on which rank and data-loader worker.

``MixtureSampler`` works over an abstract list of datasets (``DatasetSpec``: name, number of
samples, repeat time, weight), so it plugs onto any index that can fetch sample ``i`` of dataset
``d``. Everything is a pure function of the seed, so a position in the stream is all a checkpoint
needs, and memory does not grow with the datasets (no permutation is ever materialised).

**An epoch.** Dataset d with N samples and repeat time r contributes ``m = round(r·N)`` samples:
``⌊r⌋`` copies of every sample plus a seeded random subset of ``m − ⌊r⌋·N`` samples (the same
subset every epoch, not a prefix as in InternVL; reference: internvl-recipe.md §1.6, §11.3), in an
order reshuffled every epoch.

**Mixing by weight.** Every sample of dataset d carries its dataset's weight ``w`` (default 1), and
the epoch's order is a weighted random order without replacement: the next sample is drawn among
all samples left in the epoch with probability proportional to its weight. With equal weights this
is a uniform shuffle of the epoch; a dataset of weight 3 is drawn three times as densely while it
lasts (and is used up earlier). It is computed as a merge of exponential clocks: dataset d's i-th
draw arrives at ``Σ_{j≤i} E_j / (w·(m − j))`` (the order statistics of m exponential variables of
rate w), and the datasets' draws are merged by arrival time.

**Sharding.** Epochs follow each other in one global stream; global position g goes to shard
``g mod S``, where shard = rank · workers + worker and S = world size · workers, so every position
is drawn exactly once over all ranks and workers. A shard's state is the next global position it
has not drawn.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

_MASK64 = (1 << 64) - 1
_CHUNK = 8192


def _mix_int(value: int) -> int:
    """SplitMix64's finaliser on a Python int."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _mix(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        values = values + np.uint64(0x9E3779B97F4A7C15)
        values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


def _key(*parts: int) -> int:
    """A 64-bit key that depends on every part."""
    key = 0x243F6A8885A308D3
    for part in parts:
        key = _mix_int(key ^ (part & _MASK64))
    return key


def _uniform(key: int, counters: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1), one per counter: a counter-based generator."""
    bits = _mix(counters.astype(np.uint64) ^ np.uint64(key))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


class Permutation:
    """A seeded random permutation of range(n), evaluated pointwise without materialising it: a
    four-round Feistel network on the smallest even number of bits covering n, cycle-walked back
    into range."""

    def __init__(self, n: int, key: int):
        if n < 1:
            raise ValueError(f"cannot permute {n} elements")
        self.n = n
        self.half = max(1, ((n - 1).bit_length() + 1) // 2)
        self.mask = np.uint64((1 << self.half) - 1)
        self.round_keys = [np.uint64(_key(key, round_)) for round_ in range(4)]

    def _encrypt(self, values: np.ndarray) -> np.ndarray:
        shift = np.uint64(self.half)
        left, right = values >> shift, values & self.mask
        for round_key in self.round_keys:
            left, right = right, left ^ (_mix(right ^ round_key) & self.mask)
        return (left << shift) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        values = self._encrypt(np.asarray(positions, dtype=np.uint64))
        outside = values >= np.uint64(self.n)
        while outside.any():
            values[outside] = self._encrypt(values[outside])
            outside = values >= np.uint64(self.n)
        return values.astype(np.int64)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset as the sampler sees it."""

    name: str
    size: int
    """Samples in the dataset (its index's line count)."""
    repeat_time: float = 1.0
    """Times each sample is seen per epoch: fractional above 1 (whole copies plus a random subset)
    and below 1 (a random subset)."""
    weight: float = 1.0
    """Relative density of its samples in the epoch's order (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"dataset {self.name!r}: negative size {self.size}")
        if not self.repeat_time > 0:
            raise ValueError(f"dataset {self.name!r}: repeat_time must be positive, not {self.repeat_time}")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"dataset {self.name!r}: weight must be positive, not {self.weight}")

    @property
    def per_epoch(self) -> int:
        """Samples it contributes to each epoch: round(repeat_time · size), halves rounded up."""
        return math.floor(self.size * self.repeat_time + 0.5)


@dataclass(frozen=True)
class SampleRef:
    """One draw: sample ``index`` of dataset ``dataset``, at ``position`` of epoch ``epoch``."""

    dataset: int
    index: int
    epoch: int
    position: int

    def key(self) -> list[int]:
        """JSON-friendly form, for checkpoints."""
        return [self.dataset, self.index, self.epoch, self.position]

    @classmethod
    def from_key(cls, key: Sequence[int]) -> SampleRef:
        dataset, index, epoch, position = (int(part) for part in key)
        return cls(dataset, index, epoch, position)

    def rng(self, seed: int) -> np.random.Generator:
        """The generator of this draw's randomness (augmentation, frame sampling): the same every
        time the draw is built, different for each repeat of a sample."""
        return np.random.default_rng([seed, self.epoch, self.position])


class MixtureSampler:
    """The global order of a run's samples over its datasets, sharded by rank and worker."""

    def __init__(self, datasets: Sequence[DatasetSpec], *, seed: int, epochs: float | None = None):
        self.datasets = list(datasets)
        self.seed = seed
        names = [dataset.name for dataset in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique: {names}")
        self.counts = [dataset.per_epoch for dataset in self.datasets]
        self.epoch_length = sum(self.counts)
        if self.epoch_length == 0:
            raise ValueError("the datasets hold no sample to train on")
        if epochs is not None and not epochs > 0:
            raise ValueError(f"epochs must be positive, not {epochs}")
        self.total = None if epochs is None else math.floor(epochs * self.epoch_length)
        """Draws in the whole run; None for an endless stream (runs bounded by steps)."""
        self._subsets = [
            Permutation(dataset.size, _key(seed, 1, number)) if dataset.size else None
            for number, dataset in enumerate(self.datasets)
        ]

    # -----------------------------------------------------------------------------------------

    def items(self, dataset: int, epoch: int, draws: np.ndarray) -> np.ndarray:
        """Sample indices of dataset ``dataset``'s draws number ``draws`` in ``epoch``."""
        spec, count = self.datasets[dataset], self.counts[dataset]
        order = Permutation(count, _key(self.seed, 2, dataset, epoch))(draws)
        whole = min(math.floor(spec.repeat_time) * spec.size, count)  # draws below: the whole copies
        indices = order % spec.size
        partial = order >= whole
        if partial.any():
            subset = self._subsets[dataset]
            assert subset is not None
            indices[partial] = subset(order[partial] - whole)
        return indices

    def epoch_order(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The epoch's order, in consecutive pieces: (dataset of each position, its draw number in
        that dataset). Always computed from the epoch's start, in chunks of fixed size, so every
        replay gives the same floats."""
        active = [number for number, count in enumerate(self.counts) if count]
        drawn = dict.fromkeys(active, 0)
        clock = dict.fromkeys(active, 0.0)
        pending = {number: (np.empty(0), np.empty(0, dtype=np.int64)) for number in active}
        while True:
            for number in active:
                times, draws = pending[number]
                start, count = drawn[number], self.counts[number]
                if len(times) >= _CHUNK or start >= count:
                    continue
                stop = min(start + _CHUNK, count)
                new = np.arange(start, stop, dtype=np.int64)
                exponential = -np.log1p(-_uniform(_key(self.seed, 3, number, epoch), new))
                arrivals = clock[number] + np.cumsum(exponential / (self.datasets[number].weight * (count - new)))
                clock[number] = float(arrivals[-1])
                drawn[number] = stop
                pending[number] = (np.concatenate([times, arrivals]), np.concatenate([draws, new]))
            unfinished = [clock[number] for number in active if drawn[number] < self.counts[number]]
            horizon = min(unfinished) if unfinished else math.inf
            parts_time, parts_dataset, parts_draw = [], [], []
            for number in active:
                times, draws = pending[number]
                cut = int(np.searchsorted(times, horizon, side="right"))
                if cut:
                    parts_time.append(times[:cut])
                    parts_dataset.append(np.full(cut, number, dtype=np.int64))
                    parts_draw.append(draws[:cut])
                    pending[number] = (times[cut:], draws[cut:])
            if not parts_time:
                return
            times = np.concatenate(parts_time)
            datasets = np.concatenate(parts_dataset)
            order = np.lexsort((datasets, times))
            yield datasets[order], np.concatenate(parts_draw)[order]

    def shard(self, shard: int, shards: int, start: int = 0) -> Iterator[SampleRef]:
        """The draws of shard ``shard`` of ``shards``: global positions g ≡ shard (mod shards) from
        ``start`` on, until the run's total (forever when the run is endless)."""
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} out of {shards}")
        epoch = start // self.epoch_length
        while self.total is None or epoch * self.epoch_length < self.total:
            base = epoch * self.epoch_length
            offset = 0
            for datasets, draws in self.epoch_order(epoch):
                positions = np.arange(offset, offset + len(datasets), dtype=np.int64)
                offset += len(datasets)
                globals_ = base + positions
                mine = (globals_ % shards == shard) & (globals_ >= start)
                if self.total is not None:
                    mine &= globals_ < self.total
                if not mine.any():
                    continue
                datasets, draws, positions = datasets[mine], draws[mine], positions[mine]
                indices = np.empty(len(draws), dtype=np.int64)
                for number in np.unique(datasets).tolist():
                    chosen = datasets == number
                    indices[chosen] = self.items(number, epoch, draws[chosen])
                for dataset, index, position in zip(
                    datasets.tolist(), indices.tolist(), positions.tolist(), strict=True
                ):
                    yield SampleRef(dataset, index, epoch, position)
            epoch += 1

    def fingerprint(self) -> str:
        """What the order depends on (seed, and every dataset's name, size, repeat time and
        weight), hashed: a checkpoint's position means something only under the same fingerprint.
        The number of epochs is left out, so a run can be extended."""
        plan = [self.seed] + [[d.name, d.size, d.repeat_time, d.weight] for d in self.datasets]
        return hashlib.sha256(json.dumps(plan).encode()).hexdigest()[:16]

    def global_position(self, ref: SampleRef) -> int:
        return ref.epoch * self.epoch_length + ref.position

    def name(self, ref: SampleRef) -> str:
        """``dataset-name:index``: a sample's id in reports and tests."""
        return f"{self.datasets[ref.dataset].name}:{ref.index}"

"""The data pipeline of a run and its exact resume: draw → build → pack → collate → micro-batch.

``PackedStream`` is the IterableDataset every data-loader worker runs: it draws its shard of the
global order (``MixtureSampler``; shard = rank · workers + worker), builds each drawn sample with the
caller's ``build`` (decode, tile, tokenize, mask; None when the sample is skipped), packs the
samples under the budget (or, without packing, takes them one per row) and collates
``batch_size`` rows into a micro-batch. Each micro-batch leaves its worker with the worker's state
right after it: the next global position to draw and the samples waiting in the packing buffer,
as sample references (they are rebuilt on resume, so no pixels go into a checkpoint).

``ResumableLoader`` wraps torch's DataLoader. It keeps, for every worker, the state that came with
the last micro-batch the training loop actually took, so prefetched micro-batches do not count,
and how many it took. ``state_dict()`` is small and JSON-serialisable; a loader created with it
resumes every worker where it stood and rotates the workers so that the round-robin continues
with the same worker: the resumed run consumes exactly the micro-batches the uninterrupted run
would have consumed next (at the very end of a finite stream, where workers run dry unevenly, the
order of the last micro-batches may differ; their samples do not). When the number of ranks or
workers differs from the checkpoint's,
every shard restarts at the earliest position any old shard had not consumed: no sample is lost,
some are seen twice.

A ``SampleError`` that ``build`` raises (a bad sample in strict mode) ends the stream and reaches
the training loop as itself, from a worker as without one: torch would re-raise a worker's error
as a copy whose message is the worker's traceback, so the worker hands it over as an element.

Each rank checkpoints its own state; to resume on another layout, give ``load_state_dict`` the
states of every old rank. ``build`` must take its randomness from ``SampleRef.rng(seed)`` (never
from global generators) so that a rebuilt sample equals the original. Do not let accelerate re-wrap
this loader: it shards by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from internvl_trainer.data.collate import Collator
from internvl_trainer.data.errors import SampleError
from internvl_trainer.data.packing import Pack, Packer, PackingBudget
from internvl_trainer.data.sampling import MixtureSampler, SampleRef

STATE_VERSION = 1


@dataclass
class Drawn:
    """A drawn sample and what was built from it."""

    ref: SampleRef
    sample: Any
    """A BuiltSample (or anything with input_ids, labels and tiles)."""

    @property
    def size(self) -> tuple[int, int]:
        return int(self.sample.input_ids.shape[0]), len(self.sample.tiles)


@dataclass
class StreamStats:
    """Counts over the micro-batches a loader handed out."""

    batches: int = 0
    samples: int = 0
    tokens: int = 0
    """Real tokens (samples' lengths)."""
    positions: int = 0
    """Computed positions (rows × padded length)."""
    tiles: int = 0
    skipped: int = 0
    """Draws whose build returned None (bad or over-long samples)."""
    over_budget: int = 0
    """Samples larger than the packing budget on their own (skipped)."""

    def add(self, other: dict[str, int]) -> None:
        for name, value in other.items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class ShardState:
    """Where one shard stands: the next global position to draw and the samples drawn but not yet
    handed out (open packs, and full packs waiting to fill a micro-batch)."""

    next: int = 0
    open: list[list[list[int]]] = field(default_factory=list)
    ready: list[list[list[int]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"next": self.next, "open": self.open, "ready": self.ready}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardState:
        return cls(next=int(data["next"]), open=data.get("open", []), ready=data.get("ready", []))


class PackedStream(IterableDataset):
    """The micro-batches of one rank (see the module docstring)."""

    def __init__(
        self,
        sampler: MixtureSampler,
        build: Callable[[SampleRef], Any | None],
        collator: Collator,
        *,
        batch_size: int = 1,
        budget: PackingBudget | None = None,
        max_open: int = 4,
        rank: int = 0,
        world_size: int = 1,
    ):
        if collator.packed and budget is None:
            raise ValueError("packing needs a budget")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of world size {world_size}")
        self.sampler = sampler
        self.build = build
        self.collator = collator
        self.batch_size = batch_size
        self.budget = budget
        self.max_open = max_open
        self.rank = rank
        self.world_size = world_size
        self.resume: dict[int, ShardState] = {}
        """Saved states by shard, set by the loader before iteration."""
        self.rotation = 0
        """Worker w serves logical worker (w + rotation) mod workers, set by the loader."""

    # -----------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        logical = (worker + self.rotation) % workers
        shard = self.rank * workers + logical
        try:
            yield from self.shard_batches(shard, self.world_size * workers, self.resume.get(shard, ShardState()))
        except SampleError as error:
            yield {"error": error}

    def _rebuild(self, keys: list[list[int]]) -> list[Drawn]:
        drawn = []
        for key in keys:
            ref = SampleRef.from_key(key)
            sample = self.build(ref)
            if sample is not None:
                drawn.append(Drawn(ref, sample))
        return drawn

    def shard_batches(self, shard: int, shards: int, state: ShardState) -> Iterator[dict[str, Any]]:
        """Micro-batches of one shard from a saved state, each as ``{"batch": ..., "meta": ...}``."""
        packer: Packer[Drawn] | None = None
        if self.collator.packed:
            assert self.budget is not None
            packer = Packer(self.budget, lambda drawn: drawn.size, max_open=self.max_open)
            packer.restore([self._rebuild(keys) for keys in state.open])
        ready: list[Pack[Drawn]] = []
        for keys in state.ready:
            pack: Pack[Drawn] = Pack()
            for drawn in self._rebuild(keys):
                pack.add(drawn, *drawn.size)
            if pack.items:
                ready.append(pack)
        counts = {"skipped": 0, "over_budget": 0}
        position = state.next

        def emit(rows: list[Pack[Drawn]]) -> dict[str, Any]:
            open_keys = packer.state(lambda drawn: drawn.ref.key()) if packer is not None else []
            saved = ShardState(
                next=position, open=open_keys, ready=[[drawn.ref.key() for drawn in pack.items] for pack in ready]
            )
            if self.collator.packed:
                batch = self.collator([[drawn.sample for drawn in pack.items] for pack in rows])
            else:
                batch = self.collator([pack.items[0].sample for pack in rows])
            drawn_rows = [pack.items for pack in rows]
            stats = {
                "batches": 1,
                "samples": sum(len(items) for items in drawn_rows),
                "tokens": sum(pack.tokens for pack in rows),
                "positions": int(batch["input_ids"].numel()),
                "tiles": sum(pack.tiles for pack in rows),
                **counts,
            }
            counts.update(skipped=0, over_budget=0)
            meta = {
                "shard": shard,
                "state": saved.to_dict(),
                "samples": [[self.sampler.name(drawn.ref) for drawn in items] for items in drawn_rows],
                "stats": stats,
            }
            return {"batch": batch, "meta": meta}

        for ref in self.sampler.shard(shard, shards, state.next):
            position = self.sampler.global_position(ref) + 1
            sample = self.build(ref)
            if sample is None:
                counts["skipped"] += 1
                continue
            drawn = Drawn(ref, sample)
            if packer is None:
                single: Pack[Drawn] = Pack()
                single.add(drawn, *drawn.size)
                ready.append(single)
            elif not packer.fits(drawn):
                counts["over_budget"] += 1
                continue
            else:
                ready += packer.add(drawn)
            while len(ready) >= self.batch_size:
                rows, ready = ready[: self.batch_size], ready[self.batch_size :]
                yield emit(rows)
        if packer is not None:
            ready += packer.flush()
        while ready:
            rows, ready = ready[: self.batch_size], ready[self.batch_size :]
            yield emit(rows)


class ResumableLoader:
    """A DataLoader over a ``PackedStream`` that knows what the training loop consumed."""

    def __init__(
        self,
        stream: PackedStream,
        *,
        num_workers: int = 0,
        prefetch_factor: int | None = None,
        pin_memory: bool = False,
        multiprocessing_context: Any = None,
        state: dict[str, Any] | list[dict[str, Any]] | None = None,
        keep_history: bool = False,
    ):
        self.stream = stream
        self.num_workers = num_workers
        self.options: dict[str, Any] = {"pin_memory": pin_memory, "multiprocessing_context": multiprocessing_context}
        if num_workers:
            self.options["prefetch_factor"] = prefetch_factor
        self.shard_states: dict[int, ShardState] = {}
        self.consumed = 0
        self.stats = StreamStats()
        self.last_samples: list[list[str]] = []
        """Sample ids (``dataset:index``) of each row of the micro-batch handed out last."""
        self.history: list[list[list[str]]] | None = [] if keep_history else None
        """With ``keep_history``: the sample ids of every micro-batch handed out (tests, debugging)."""
        if state is not None:
            self.load_state_dict(state)

    @property
    def workers(self) -> int:
        return max(1, self.num_workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.stream.resume = dict(self.shard_states)
        self.stream.rotation = self.consumed % self.workers
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers, **self.options)
        for element in loader:
            if "error" in element:
                raise element["error"]
            meta = element["meta"]
            self.shard_states[meta["shard"]] = ShardState.from_dict(meta["state"])
            self.consumed += 1
            self.stats.add(meta["stats"])
            self.last_samples = meta["samples"]
            if self.history is not None:
                self.history.append(meta["samples"])
            yield element["batch"]

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this rank's data position (JSON-serialisable)."""
        first = self.stream.rank * self.workers
        shards = {shard: self.shard_states.get(shard, ShardState()) for shard in range(first, first + self.workers)}
        return {
            "version": STATE_VERSION,
            "rank": self.stream.rank,
            "world_size": self.stream.world_size,
            "workers": self.workers,
            "order": self.stream.sampler.fingerprint(),
            "consumed": self.consumed,
            "shards": {str(shard): state.to_dict() for shard, state in shards.items()},
            "stats": vars(self.stats).copy(),
        }

    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Resume from this rank's saved state, or from the list of every rank's saved states."""
        states = state if isinstance(state, list) else [state]
        sampler = self.stream.sampler
        for saved in states:
            if saved.get("version") != STATE_VERSION:
                raise ValueError(f"unknown data state version {saved.get('version')!r}")
            if saved["order"] != sampler.fingerprint():
                raise ValueError(
                    "the checkpoint's data order differs from this run's (datasets, sizes, repeat times, weights "
                    "or seed changed)"
                )
        for saved in states:
            if (saved["rank"], saved["world_size"], saved["workers"]) == (
                self.stream.rank,
                self.stream.world_size,
                self.workers,
            ):
                self.shard_states = {int(shard): ShardState.from_dict(data) for shard, data in saved["shards"].items()}
                self.consumed = int(saved["consumed"])
                self.stats = StreamStats(**saved.get("stats", {}))
                return
        # Another layout: restart every shard at the earliest position not handed out anywhere.
        shards = [ShardState.from_dict(data) for saved in states for data in saved["shards"].values()]
        earliest = [shard.next for shard in shards]
        earliest += [
            sampler.global_position(SampleRef.from_key(key))
            for shard in shards
            for packs in (shard.open, shard.ready)
            for pack in packs
            for key in pack
        ]
        start = min(earliest) if earliest else 0
        total_shards = self.stream.world_size * self.workers
        self.shard_states = {shard: ShardState(next=start) for shard in range(total_shards)}
        self.consumed = 0

"""The pipeline's exact resume: a run stopped after k micro-batches and resumed from its saved state
consumes exactly the samples (ids checked, in order) the uninterrupted run consumed after them,
with the packing buffer carried over, with 0 and 2 data-loader workers."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest
import torch

from internvl_trainer.data.collate import Collator
from internvl_trainer.data.loader import PackedStream, ResumableLoader
from internvl_trainer.data.packing import PackingBudget
from internvl_trainer.data.sample import BuiltSample
from internvl_trainer.data.sampling import DatasetSpec, MixtureSampler, SampleRef

DATASETS = [DatasetSpec("chat", 60), DatasetSpec("photos", 30, repeat_time=1.5), DatasetSpec("docs", 40, 0.5)]
PAD = 0


class FakeBuild:
    """Text samples whose length and tiles depend on the sample, with ids that name it; every 9th
    sample of "chat" is broken (None), and "photos" 7 is larger than the budget."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, ref: SampleRef) -> BuiltSample | None:
        if ref.dataset == 0 and ref.index % 9 == 4:
            return None
        length = 300 if (ref.dataset, ref.index) == (1, 7) else 8 + (ref.index * 37 + ref.dataset * 11) % 90
        tiles = (ref.index % 3) if ref.dataset == 1 else 0
        noise = int(ref.rng(self.seed).integers(1, 1000))
        ids = torch.full((length,), 1 + ref.dataset * 1000 + ref.index)
        ids[-1] = noise
        return BuiltSample(
            input_ids=ids,
            labels=ids.clone(),
            attention_mask=torch.ones(length, dtype=torch.long),
            tiles=[torch.zeros((2, 2, 3), dtype=torch.uint8)] * tiles,
            normalization="imagenet",
            tiles_per_image=[tiles] if tiles else [],
            kind="image" if tiles else "text",
        )


def stream(packed: bool = True, rank: int = 0, world_size: int = 1, epochs: float | None = 1.0) -> PackedStream:
    return PackedStream(
        MixtureSampler(DATASETS, seed=3, epochs=epochs),
        FakeBuild(),
        Collator(pad_id=PAD, packed=packed, reduction="square"),
        batch_size=2,
        budget=PackingBudget(max_tokens=200, max_tiles=3) if packed else None,
        max_open=4,
        rank=rank,
        world_size=world_size,
    )


def consume(loader: ResumableLoader, count: int | None = None) -> list[list[list[str]]]:
    """The sample ids of each micro-batch taken (``count`` of them, or all)."""
    taken = []
    for _ in itertools.islice(loader, count):
        taken.append(loader.last_samples)
    return taken


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_resume_consumes_exactly_the_rest(workers, packed):
    whole = consume(ResumableLoader(stream(packed), num_workers=workers))
    first = ResumableLoader(stream(packed), num_workers=workers)
    before = consume(first, 7)
    state = json.loads(json.dumps(first.state_dict()))
    assert state["consumed"] == 7 and sorted(state["shards"]) == [str(shard) for shard in range(max(1, workers))]
    if packed:  # the packing buffer is part of the state
        assert any(saved["open"] for saved in state["shards"].values())
    after = consume(ResumableLoader(stream(packed), num_workers=workers, state=state))
    assert before + after == whole
    # every drawn sample exactly once, except the broken ones and the one over the budget
    sampler = MixtureSampler(DATASETS, seed=3, epochs=1)
    drawn = Counter(sampler.name(ref) for ref in sampler.shard(0, 1))
    expected = {
        name: count for name, count in drawn.items() if not (name.startswith("chat:") and int(name[5:]) % 9 == 4)
    }
    if packed:
        del expected["photos:7"]
    assert Counter(name for batch in whole for row in batch for name in row) == expected


def test_batches_and_stats():
    loader = ResumableLoader(stream(), keep_history=True)
    batches = list(loader)
    assert loader.history == consume(ResumableLoader(stream()))
    assert all(batch["input_ids"].shape[0] == 2 for batch in batches[:-1])
    assert all(batch["input_ids"].shape[1] <= 200 for batch in batches)
    assert all(batch["pixel_values"].shape[0] <= 6 for batch in batches if "pixel_values" in batch)
    stats = loader.stats
    assert stats.batches == len(batches) == loader.consumed
    assert stats.skipped == 7 and stats.over_budget == 1  # chat 4, 13, …, 58 and photos 7
    assert stats.samples == 117 and stats.tokens == sum(int((batch["input_ids"] != PAD).sum()) for batch in batches)
    assert (stats.tokens, stats.positions) == (6421, 6640)  # rows padded to the longest of their batch


def test_ranks_split_the_samples():
    ranks = [consume(ResumableLoader(stream(rank=rank, world_size=2), num_workers=0)) for rank in (0, 1)]
    names = [{name for batch in batches for row in batch for name in row} for batches in ranks]
    single = {name for batch in consume(ResumableLoader(stream())) for row in batch for name in row}
    assert names[0] | names[1] == single and len(names[0]) > 40 and len(names[1]) > 40


def test_another_layout_loses_nothing():
    """Resumed with another number of workers: every shard restarts at the earliest position not
    consumed anywhere, so nothing is lost (some samples come twice)."""
    first = ResumableLoader(stream(), num_workers=2)
    before = consume(first, 5)
    state = first.state_dict()
    after = consume(ResumableLoader(stream(), num_workers=0, state=[state]))
    whole = consume(ResumableLoader(stream(), num_workers=0))
    seen = Counter(name for batch in before + after for row in batch for name in row)
    expected = Counter(name for batch in whole for row in batch for name in row)
    assert all(seen[name] >= count for name, count in expected.items())


def test_state_must_match_the_run():
    state = ResumableLoader(stream()).state_dict()
    other = PackedStream(
        MixtureSampler(DATASETS[:2], seed=3), FakeBuild(), Collator(pad_id=PAD), budget=PackingBudget(200)
    )
    with pytest.raises(ValueError, match="data order differs"):
        ResumableLoader(other, state=state)
    with pytest.raises(ValueError, match="unknown data state version"):
        ResumableLoader(stream(), state={**state, "version": 0})

"""The sampler: repeat times (whole copies and seeded random subsets), weights, epochs, shards."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from internvl_trainer.data.sampling import DatasetSpec, MixtureSampler, Permutation, SampleRef


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4099])
def test_permutation_is_a_bijection(n):
    values = Permutation(n, key=5)(np.arange(n))
    assert sorted(values.tolist()) == list(range(n))


def test_permutation_is_seeded():
    assert Permutation(10, key=5)(np.arange(10)).tolist() == [0, 5, 6, 7, 2, 8, 4, 1, 3, 9]
    assert Permutation(10, key=6)(np.arange(10)).tolist() != Permutation(10, key=5)(np.arange(10)).tolist()


def test_dataset_spec():
    assert [DatasetSpec("a", 10, r).per_epoch for r in (0.25, 0.3, 1.0, 2.5, 0.04)] == [3, 3, 10, 25, 0]
    with pytest.raises(ValueError, match="repeat_time must be positive"):
        DatasetSpec("a", 10, 0.0)
    with pytest.raises(ValueError, match="weight must be positive"):
        DatasetSpec("a", 10, weight=0.0)
    with pytest.raises(ValueError, match="names must be unique"):
        MixtureSampler([DatasetSpec("a", 1), DatasetSpec("a", 2)], seed=0)
    with pytest.raises(ValueError, match="hold no sample"):
        MixtureSampler([DatasetSpec("a", 0)], seed=0)


def epoch(sampler: MixtureSampler, number: int = 0) -> list[SampleRef]:
    start = number * sampler.epoch_length
    return list(itertools.islice(sampler.shard(0, 1, start), sampler.epoch_length))


DATASETS = [DatasetSpec("a", 100), DatasetSpec("b", 40, repeat_time=2.5), DatasetSpec("c", 200, repeat_time=0.1)]


def test_epoch_composition():
    sampler = MixtureSampler(DATASETS, seed=42)
    assert sampler.counts == [100, 100, 20] and sampler.epoch_length == 220
    refs = epoch(sampler)
    assert [ref.position for ref in refs] == list(range(220)) and {ref.epoch for ref in refs} == {0}
    seen = Counter((ref.dataset, ref.index) for ref in refs)
    assert sorted(seen[(0, index)] for index in range(100)) == [1] * 100
    # 2.5 times: every sample twice, a random half of them a third time
    assert Counter(seen[(1, index)] for index in range(40)) == {2: 20, 3: 20}
    # 0.1 times: a random tenth, not a prefix
    subset = sorted(index for dataset, index in seen if dataset == 2)
    assert len(subset) == 20 and subset != list(range(20)) and max(subset) > 150


def test_epochs_reshuffle_but_keep_the_subset():
    sampler = MixtureSampler(DATASETS, seed=42)
    first, second = epoch(sampler, 0), epoch(sampler, 1)
    assert {ref.epoch for ref in second} == {1}
    assert [ref.key()[:2] for ref in first] != [ref.key()[:2] for ref in second]
    assert {ref.index for ref in first if ref.dataset == 2} == {ref.index for ref in second if ref.dataset == 2}
    thirds = []
    for refs in (first, second):
        seen = Counter(ref.index for ref in refs if ref.dataset == 1)
        thirds.append({index for index, count in seen.items() if count == 3})
    assert thirds[0] == thirds[1] and len(thirds[0]) == 20


def test_order_is_a_pure_function_of_the_seed():
    ids = [MixtureSampler(DATASETS, seed=42).name(ref) for ref in epoch(MixtureSampler(DATASETS, seed=42))[:8]]
    assert ids == ["b:38", "a:8", "a:38", "b:34", "b:11", "a:9", "a:57", "c:146"]
    other = [ref.key() for ref in epoch(MixtureSampler(DATASETS, seed=43))]
    assert other != [ref.key() for ref in epoch(MixtureSampler(DATASETS, seed=42))]


def test_weights_set_the_density():
    """Equal weights: a uniform shuffle (each dataset spread over the epoch). Weight 4: drawn four
    times as densely while it lasts, so used up early."""
    specs = [DatasetSpec("x", 2000), DatasetSpec("y", 2000)]
    even = epoch(MixtureSampler(specs, seed=0))
    assert 0.47 < np.mean([ref.dataset == 0 for ref in even[:2000]]) < 0.53
    heavy = epoch(MixtureSampler([DatasetSpec("x", 2000, weight=4.0), DatasetSpec("y", 2000)], seed=0))
    share = np.mean([ref.dataset == 0 for ref in heavy[:400]])
    assert 0.75 < share < 0.85  # 4:1 at the start
    assert Counter(ref.dataset for ref in heavy) == {0: 2000, 1: 2000}  # the epoch keeps its composition
    assert np.mean([ref.position for ref in heavy if ref.dataset == 0]) < 1500


def test_shards_partition_the_stream():
    sampler = MixtureSampler(DATASETS, seed=7, epochs=2.5)
    assert sampler.total == 550
    whole = list(sampler.shard(0, 1))
    assert len(whole) == 550 and whole[-1].epoch == 2 and whole[-1].position == 109
    shards = [list(sampler.shard(shard, 6)) for shard in range(6)]
    assert [len(refs) for refs in shards] == [92, 92, 92, 92, 91, 91]
    for shard, refs in enumerate(shards):
        assert all(sampler.global_position(ref) % 6 == shard for ref in refs)
    assert sorted((ref for refs in shards for ref in refs), key=sampler.global_position) == whole
    # a shard resumed from a position draws the rest of its residue class
    assert list(sampler.shard(2, 6, start=301)) == [ref for ref in shards[2] if sampler.global_position(ref) >= 301]
    with pytest.raises(ValueError, match="shard 6 out of 6"):
        next(sampler.shard(6, 6))


def test_endless_stream_and_large_datasets():
    sampler = MixtureSampler([DatasetSpec("big", 3_000_000), DatasetSpec("small", 10, repeat_time=1.5)], seed=1)
    assert sampler.total is None and sampler.epoch_length == 3_000_015
    start = 2 * sampler.epoch_length - 3  # across the end of epoch 1
    refs = list(itertools.islice(sampler.shard(1, 4, start=start), 3))
    assert [(ref.epoch, ref.position) for ref in refs] == [(1, 3000014), (2, 3), (2, 7)]


def test_rng_per_draw():
    ref = SampleRef(0, 5, epoch=1, position=9)
    assert ref.rng(42).integers(1 << 30) == ref.rng(42).integers(1 << 30)
    assert ref.rng(42).integers(1 << 30) != SampleRef(0, 5, epoch=2, position=9).rng(42).integers(1 << 30)
    assert SampleRef.from_key(ref.key()) == ref


def test_fingerprint_names_the_order():
    plan = MixtureSampler(DATASETS, seed=1).fingerprint()
    assert MixtureSampler(DATASETS, seed=1, epochs=2).fingerprint() == plan  # a run may be extended
    assert MixtureSampler(DATASETS, seed=2).fingerprint() != plan
    assert MixtureSampler([*DATASETS[:2], DatasetSpec("c", 200, repeat_time=0.2)], seed=1).fingerprint() != plan

"""The packing buffer: best fit under a token and a tile budget, bounded open packs, state."""

from __future__ import annotations

import random

import pytest

from internvl_trainer.data.packing import Packer, PackingBudget, fill

# items are (name, tokens, tiles)


def packer(max_tokens=100, max_tiles=None, max_open=3) -> Packer:
    return Packer(PackingBudget(max_tokens, max_tiles), lambda item: (item[1], item[2]), max_open=max_open)


def names(packs) -> list[list[str]]:
    return [[item[0] for item in pack.items] for pack in packs]


def test_best_fit_and_eviction_of_the_fullest():
    buffer = packer()
    assert buffer.add(("a", 60, 0)) == [] and buffer.add(("b", 50, 0)) == []  # b does not fit with a
    assert buffer.add(("c", 30, 0)) == []  # fits both: goes to a, the one it fills best
    assert names(buffer.open) == [["a", "c"], ["b"]]
    assert names(buffer.add(("d", 10, 0))) == [["a", "c", "d"]]  # exactly full: out at once
    assert buffer.add(("e", 70, 0)) == [] and buffer.add(("f", 45, 0)) == []
    assert names(buffer.open) == [["b", "f"], ["e"]]
    assert buffer.add(("g", 40, 0)) == []  # a third open pack
    assert names(buffer.add(("h", 65, 0))) == [["b", "f"]]  # a fourth: the fullest (95) leaves
    assert names(buffer.flush()) == [["e"], ["h"], ["g"]]  # fullest first
    assert buffer.open == []


class Uncomparable:
    """A sample that cannot be compared, as a sample holding tensors."""

    def __init__(self, tokens: int):
        self.tokens = tokens

    def __eq__(self, other: object) -> bool:
        raise AssertionError("samples are never compared")

    __hash__ = object.__hash__


def test_closing_a_pack_never_compares_samples_nor_closes_a_twin():
    buffer = Packer(PackingBudget(100), lambda item: (item.tokens, 0), max_open=2)
    first, twin = Uncomparable(60), Uncomparable(60)
    assert buffer.add(first) == [] and buffer.add(twin) == []
    [closed] = buffer.add(Uncomparable(40))  # fills the first pack exactly
    assert closed.items[0] is first
    assert [pack.items[0] for pack in buffer.open] == [twin]
    [evicted] = buffer.add(Uncomparable(70)) + buffer.add(Uncomparable(50))  # a third pack: the fullest leaves
    assert evicted.items[0].tokens == 70
    assert [pack.items[0].tokens for pack in buffer.open] == [60, 50] and buffer.open[0].items[0] is twin


def test_tile_budget():
    buffer = packer(max_tokens=1000, max_tiles=10)
    buffer.add(("a", 300, 8))
    buffer.add(("b", 200, 4))  # tokens fit, tiles do not
    buffer.add(("c", 100, 0))  # text fits anywhere: best fill is a
    buffer.add(("d", 100, 2))
    assert [(pack.tokens, pack.tiles) for pack in buffer.open] == [(500, 10), (200, 4)]
    assert names(buffer.open) == [["a", "c", "d"], ["b"]]


def test_oversized_items_are_refused():
    buffer = packer(max_tokens=100, max_tiles=4)
    assert buffer.fits(("a", 100, 4)) and not buffer.fits(("b", 101, 0)) and not buffer.fits(("c", 10, 5))
    with pytest.raises(ValueError, match="101 tokens and 0 tiles exceeds the packing budget"):
        buffer.add(("b", 101, 0))


def test_budget_validation():
    with pytest.raises(ValueError, match="token budget must be positive"):
        PackingBudget(0)
    with pytest.raises(ValueError, match="max_open must be at least 1"):
        packer(max_open=0)


def test_state_and_restore_continue_identically():
    rng = random.Random(0)
    items = [(f"s{i}", rng.randint(5, 80), rng.randint(0, 3)) for i in range(200)]
    by_name = {item[0]: item for item in items}
    whole = packer(max_tiles=6, max_open=4)
    emitted = [pack for item in items for pack in whole.add(item)] + whole.flush()
    first = packer(max_tiles=6, max_open=4)
    before = [pack for item in items[:77] for pack in first.add(item)]
    saved = first.state(lambda item: item[0])
    second = packer(max_tiles=6, max_open=4)
    second.restore([[by_name[name] for name in pack] for pack in saved])
    after = [pack for item in items[77:] for pack in second.add(item)] + second.flush()
    assert names(before + after) == names(emitted)
    assert sorted(name for pack in names(emitted) for name in pack) == sorted(by_name)
    assert [round(share, 4) for share in fill(emitted, PackingBudget(100, 6))] == [0.892, 0.4792]


def test_restore_splits_a_pack_that_no_longer_fits():
    buffer = packer()
    buffer.restore([[("a", 60, 0), ("b", 60, 0)]])
    assert names(buffer.open) == [["a"], ["b"]]

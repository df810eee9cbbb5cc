"""Packing: whole samples go into sequences bounded by a token budget and a tile budget.

InternVL's packed dataset (reference: internvl-recipe.md §5.2) fills a list of buffers first-fit
and splits buffers that overflow, which breaks for multi-tile images. Here samples are never split:
``Packer`` keeps a few open packs and puts each new sample into the open pack it fills best (the one
left with the fewest free tokens) among those with room for its tokens and its tiles. A sample that
fits nowhere opens a new pack; when more than ``max_open`` packs are open, the fullest (by the
larger of its token and tile shares) is emitted.
A sample that alone exceeds a budget is refused (``fits``), never truncated.

Attention stays within each sample through per-sample position ids, restarting at 0, and the
cumulative sequence lengths the collator derives from them (``collate.py``). Open packs hold built
samples (a full pack of 64 float32 tiles is about 150 MB), so ``max_open`` bounds the memory in
flight: 4 open packs already fill 99 % of the token budget on a realistic mix (benchmarks/packing.py).
``state``/``restore`` save and restore the open packs as the keys of their samples, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")


@dataclass(frozen=True)
class PackingBudget:
    """What one packed sequence may hold."""

    max_tokens: int
    """Tokens per packed sequence (at least the longest sample: the run's maximum sequence length)."""
    max_tiles: int | None = None
    """Image tiles (video frames count one each) per packed sequence; it bounds the vision tower's
    batch. None: only the token budget bounds them."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"the token budget must be positive, not {self.max_tokens}")
        if self.max_tiles is not None and self.max_tiles < 0:
            raise ValueError(f"the tile budget must not be negative, not {self.max_tiles}")

    def fits(self, tokens: int, tiles: int) -> bool:
        """Whether a pack with this content is within the budget."""
        return tokens <= self.max_tokens and (self.max_tiles is None or tiles <= self.max_tiles)

    def usage(self, tokens: float, tiles: float) -> tuple[float, float]:
        """The shares of the token and the tile budget this content uses (tiles 0 when unbounded)."""
        return tokens / self.max_tokens, (tiles / self.max_tiles if self.max_tiles else 0.0)


@dataclass(eq=False)
class Pack(Generic[Item]):
    """Samples that share one sequence, in order. A pack is itself, never equal to another with the
    same content: closing one must not compare samples (tensors), nor close a twin."""

    items: list[Item] = field(default_factory=list)
    tokens: int = 0
    tiles: int = 0

    def add(self, item: Item, tokens: int, tiles: int) -> None:
        self.items.append(item)
        self.tokens += tokens
        self.tiles += tiles

    def __len__(self) -> int:
        return len(self.items)


class Packer(Generic[Item]):
    """Best-fit packing of a stream of samples under a budget, with at most ``max_open`` packs open.

    ``size(item)`` gives an item's (tokens, tiles). ``add`` returns the packs that the new item
    completed (at most one), ``flush`` the packs still open at the end of the stream."""

    def __init__(self, budget: PackingBudget, size: Callable[[Item], tuple[int, int]], *, max_open: int = 4):
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, not {max_open}")
        self.budget = budget
        self.size = size
        self.max_open = max_open
        self.open: list[Pack[Item]] = []

    def fits(self, item: Item) -> bool:
        """Whether the item fits in an empty pack (the caller skips and counts those that do not)."""
        return self.budget.fits(*self.size(item))

    def add(self, item: Item) -> list[Pack[Item]]:
        tokens, tiles = self.size(item)
        if not self.budget.fits(tokens, tiles):
            raise ValueError(f"a sample of {tokens} tokens and {tiles} tiles exceeds the packing budget {self.budget}")
        best: Pack[Item] | None = None
        for pack in self.open:  # the first of equals
            if self.budget.fits(pack.tokens + tokens, pack.tiles + tiles) and (
                best is None or pack.tokens > best.tokens
            ):
                best = pack
        if best is not None:
            best.add(item, tokens, tiles)
            if best.tokens == self.budget.max_tokens:
                self.open.remove(best)
                return [best]
            return []
        pack: Pack[Item] = Pack()
        pack.add(item, tokens, tiles)
        self.open.append(pack)
        if len(self.open) <= self.max_open:
            return []
        fullest = max(self.open, key=self._fullness)  # the first of equals
        self.open.remove(fullest)
        return [fullest]

    def _fullness(self, pack: Pack[Item]) -> float:
        return max(self.budget.usage(pack.tokens, pack.tiles))

    def flush(self) -> list[Pack[Item]]:
        """Every open pack, fullest first; the packer is empty afterwards."""
        packs = sorted(self.open, key=self._fullness, reverse=True)
        self.open = []
        return packs

    def state(self, key: Callable[[Item], Hashable]) -> list[list[Hashable]]:
        """The open packs as lists of item keys, in order."""
        return [[key(item) for item in pack.items] for pack in self.open]

    def restore(self, packs: Sequence[Sequence[Item]]) -> None:
        """Reopen packs saved by ``state`` (with their items rebuilt from the keys). An item that no
        longer fits its saved pack (its data changed since) starts a pack of its own."""
        self.open = []
        for items in packs:
            pack: Pack[Item] = Pack()
            for item in items:
                tokens, tiles = self.size(item)
                if pack.items and not self.budget.fits(pack.tokens + tokens, pack.tiles + tiles):
                    self.open.append(pack)
                    pack = Pack()
                pack.add(item, tokens, tiles)
            if pack.items:
                self.open.append(pack)


def fill(packs: Sequence[Pack], budget: PackingBudget) -> tuple[float, float]:
    """Real tokens over the token budget of every pack (the share of computed positions that carry
    a sample), and tiles over the tile budget (0 when tiles are unbounded)."""
    if not packs:
        return 0.0, 0.0
    tokens = sum(pack.tokens for pack in packs) / len(packs)
    tiles = sum(pack.tiles for pack in packs) / len(packs)
    return budget.usage(tokens, tiles)

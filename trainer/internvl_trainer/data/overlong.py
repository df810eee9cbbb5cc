"""Samples longer than the sequence limit: what happens to them, and how often it happened.

InternVL truncates every sequence at ``max_seq_length``; when the cut falls inside an image block
it fails an assertion and silently trains on another sample, and a cut video desynchronises image
features from their tokens (reference: internvl-recipe.md §1.4). Here ``DataConfig.overlong``
chooses one of three explicit policies, decided before any pixel is decoded:

- ``skip``: the sample is dropped.
- ``truncate``: the sequence is cut at the limit, never before the end of its last image (or
  frame) block; a sample whose media alone exceed the limit, or that would keep no assistant
  token, is dropped instead.
- ``reduce-tiles``: the largest smaller tile budget that fits is used (for a video, the largest
  frame count not below minFrames); a sample that does not fit even with one tile per image is
  dropped.

A dropped sample raises ``OverlongError`` (kind ``overlong``), so that it is skipped and
reported with its ``file:line`` as every bad sample is (strict mode stops at it).
``OverlongCounters`` counts the outcomes, kept or dropped, for the run's data report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from internvl_trainer.data.errors import OverlongError

OverlongPolicy = Literal["skip", "truncate", "reduce-tiles"]
POLICIES: tuple[OverlongPolicy, ...] = ("skip", "truncate", "reduce-tiles")


@dataclass
class OverlongCounters:
    """What the over-long policy did, over the samples it saw."""

    samples: int = 0
    """Samples whose length was checked."""
    overlong: int = 0
    """Of those, samples longer than the limit as first built."""
    skipped: int = 0
    """Over-long samples dropped (the policy is skip, or the sample could not be made to fit)."""
    truncated: int = 0
    """Over-long samples kept with their text cut."""
    reduced: int = 0
    """Over-long samples kept with fewer tiles or frames."""
    tokens_cut: int = 0
    """Tokens removed by truncation, over all truncated samples."""
    tiles_removed: int = 0
    """Tiles (or frames) removed by reduce-tiles, over all reduced samples."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def merge(self, other: OverlongCounters) -> OverlongCounters:
        """The sum of two counters (for instance from several data-loader workers)."""
        return OverlongCounters(**{key: value + getattr(other, key) for key, value in asdict(self).items()})

    def store(self, path: Path) -> None:
        """Write the counters to ``path`` (JSON), replacing what a reader may see at once."""
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(self.as_dict()))
        os.replace(partial, path)

    @classmethod
    def total(cls, paths: Iterable[Path]) -> OverlongCounters:
        """The sum of the counters stored in ``paths`` (one file per process)."""
        names = {item.name for item in fields(cls)}
        total = cls()
        for path in paths:
            stored = json.loads(path.read_text())
            total = total.merge(cls(**{key: int(value) for key, value in stored.items() if key in names}))
        return total


def overlong_error(tokens: int, tiles: int, max_length: int, why: str = "") -> OverlongError:
    """The error of a sample of ``tokens`` tokens with ``tiles`` tiles (or frames) over
    ``max_length``; ``why`` says why the policy could not keep it."""
    return OverlongError(f"{tokens:,} tokens with {tiles} tiles; the maximum is {max_length:,}{why}")


def largest_fitting(length_at: Callable[[int], int], start: int, floor: int, max_length: int) -> int | None:
    """The largest n in floor..start whose ``length_at(n)`` is at most ``max_length``, assuming the
    length grows with n; None when even ``floor`` is too long."""
    low, high = floor, start
    if low > high or length_at(low) > max_length:
        return None
    while low < high:  # invariant: length_at(low) fits
        middle = (low + high + 1) // 2
        if length_at(middle) <= max_length:
            low = middle
        else:
            high = middle - 1
    return low

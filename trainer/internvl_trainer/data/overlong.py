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

``OverlongCounters`` counts the outcomes for the run's data report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

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

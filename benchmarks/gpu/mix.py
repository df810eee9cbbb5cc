"""The samples' lengths: the realistic mix of the packing-fill benchmark (``benchmarks/packing.py``),
frozen into ``mix.json`` because computing it takes the trainer's tiling and configuration
packages, which a bare GPU machine may lack. ``python -m benchmarks.gpu.mix`` rewrites the file;
a test fails when it is stale.

Each entry is (other tokens, tiles): a sample's tokens less its image tokens (text, template,
image and frame markers), and its 448-pixel tiles (video frames count one each). A model turns
them into tokens with its own image tokens per tile (256 for InternVL's 448-pixel tiles).
"""

from __future__ import annotations

import json
from pathlib import Path

PATH = Path(__file__).with_name("mix.json")
COUNT = 1024
"""Entries kept: more than a full run uses."""


def generate() -> list[tuple[int, int]]:
    """The first ``COUNT`` samples of the packing-fill benchmark's mix (seed 0)."""
    from benchmarks.packing import TOKENS_PER_TILE, length_mix

    return [(tokens - tiles * TOKENS_PER_TILE, tiles) for tokens, tiles in length_mix(COUNT, seed=0)]


def render(mix: list[tuple[int, int]]) -> str:
    rows = ",\n".join(f"  [{other}, {tiles}]" for other, tiles in mix)
    return "[\n" + rows + "\n]\n"


def load() -> list[tuple[int, int]]:
    return [(int(other), int(tiles)) for other, tiles in json.loads(PATH.read_text())]


if __name__ == "__main__":
    PATH.write_text(render(generate()))
    print(f"wrote {PATH}")

"""Synthetic samples for a model: random tokens and random tiles with the lengths of the mix.

A sample is a conversation turn laid out as the template lays one out: a prompt, the image tokens
(the model's tokens per tile times the tiles), then the rest of the text, of which the second
half is the supervised answer. Token ids are uniform below the image-context id, tiles are
uniform uint8 pixels, which the collator normalises as it does real ones; everything comes from
one seed. The values change no cost; the lengths, the tiles and the supervised share are what the
benchmark measures with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import InternVLConfig

from internvl_trainer.data.tiling import Normalization
from internvl_trainer.loss import IGNORE_INDEX

PROMPT_TOKENS = 16
"""Text before the images (system prompt and turn header, in part)."""
POOL_TILES = 64
"""Distinct random tiles; samples take runs of them, so tiles cost no memory of their own."""


@dataclass(frozen=True)
class Sample:
    """What the trainer's collators take from a built sample."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    tiles: list[torch.Tensor]
    """(size, size, 3) uint8 tiles."""
    normalization: Normalization = "imagenet"

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def tile_count(self) -> int:
        return len(self.tiles)


def tokens_per_tile(config: InternVLConfig) -> int:
    return int(config.image_seq_length)


def synthetic(
    mix: Sequence[tuple[int, int]], config: InternVLConfig, *, count: int, max_tokens: int, seed: int = 0
) -> list[Sample]:
    """The first ``count`` samples of ``mix`` (other tokens, tiles) that fit ``max_tokens`` with
    this model's image tokens; longer ones are skipped, as the trainer's default over-long policy
    does."""
    generator = torch.Generator().manual_seed(seed)
    image_token = config.image_token_id
    size = config.vision_config.image_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    longest = max(tiles for _, tiles in mix)
    pool = torch.randint(0, 256, (POOL_TILES + longest, size, size, 3), dtype=torch.uint8, generator=generator)
    samples = []
    for other, tiles in mix:
        image = tiles * tokens_per_tile(config)
        if other + image > max_tokens:
            continue
        prompt = min(PROMPT_TOKENS, other // 2)
        text = torch.randint(0, image_token, (other,), generator=generator)
        ids = torch.cat([text[:prompt], torch.full((image,), image_token), text[prompt:]])
        labels = torch.full_like(ids, IGNORE_INDEX)
        answer = max(1, (other - prompt) // 2)
        labels[-answer:] = ids[-answer:]
        start = int(torch.randint(0, POOL_TILES, (), generator=generator))
        samples.append(Sample(ids, labels, list(pool[start : start + tiles])))
        if len(samples) == count:
            return samples
    raise ValueError(f"the mix has {len(samples)} samples of at most {max_tokens} tokens, not {count}")

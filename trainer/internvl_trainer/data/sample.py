"""One annotation line → what the model trains on: token ids, labels, attention mask and tiles.

``SampleBuilder.build`` ties the data modules together for the four kinds of sample InternVL
trains on (reference: internvl-recipe.md §1.4):

- text only: no tiles (InternVL feeds a dummy white tile through the vision tower; it does not
  need to be built here);
- one image: ``<image>\\n`` is put before the first user turn when no user turn holds it; the
  image gets the whole tile budget;
- several images: one ``<image>`` per image, in order, none inserted; each image gets
  ``max(1, max_tiles // images)`` tiles;
- a video: ``<video>\\n`` is put before the first user turn when absent, then replaced by one
  ``Frame{i}: <image>`` line per sampled frame; one tile per frame.

The length is known from image headers and the text alone, so the over-long policy is applied
before any pixel is decoded. Broken samples raise ``SampleError``, samples the over-long policy
drops ``OverlongError`` (the caller skips and reports both with their ``file:line``); ``counters``
counts what the policy did. Images of more than ``max_image_pixels`` pixels are refused from their
header (``ImageDecodeError``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import numpy as np
import torch

from internvl_trainer.config import MAX_IMAGE_PIXELS, VideoConfig
from internvl_trainer.data.errors import ImageDecodeError, PlaceholderError, SampleError
from internvl_trainer.data.images import ImageSource, image_size, open_image, to_rgb
from internvl_trainer.data.overlong import POLICIES, OverlongCounters, OverlongPolicy, largest_fitting, overlong_error
from internvl_trainer.data.template import (
    IMAGE_PLACEHOLDER,
    ConversationEncoder,
    Encoded,
    Tokenized,
    Turn,
    conversation_turns,
    count_placeholders,
    insert_placeholder,
    tokens_per_tile,
)
from internvl_trainer.data.tiling import Normalization, Tiler, TilingConfig, normalize, per_image_budget
from internvl_trainer.data.video import (
    VIDEO_PLACEHOLDER,
    VideoFrames,
    VideoSource,
    expand_video_placeholder,
    read_frames,
    subsample,
)

SampleKind = Literal["text", "image", "multi-image", "video"]


@dataclass
class BuiltSample:
    """A sample ready for collation."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    tiles: list[torch.Tensor]
    """(size, size, 3) uint8 tiles, channels last: every image's tiles (thumbnail last) or every
    frame, in order. They stay uint8 (a quarter of float32's bytes, mostly views into the resized
    image) until the collator normalises them into the micro-batch."""
    normalization: Normalization
    tiles_per_image: list[int]
    """Tiles of each image, or 1 per frame."""
    kind: SampleKind

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def pixel_values(self) -> torch.Tensor:
        """The tiles normalised: (tiles, 3, size, size) float32, as the model takes them."""
        return normalize(self.tiles, self.normalization)


class SampleBuilder:
    """Builds training samples with one model's template, tiling and limits."""

    def __init__(
        self,
        encoder: ConversationEncoder,
        *,
        max_length: int,
        tiling: TilingConfig | None = None,
        video: VideoConfig | None = None,
        overlong: OverlongPolicy = "skip",
        patch_size: int = 14,
        downsample_ratio: float = 0.5,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ):
        if overlong not in POLICIES:
            raise ValueError(f"unknown over-long policy {overlong!r}; known: {', '.join(POLICIES)}")
        self.encoder = encoder
        self.max_length = max_length
        self.tiler = Tiler(tiling)
        self.video = video or VideoConfig()
        self.overlong = overlong
        self.max_image_pixels = max_image_pixels
        self.tokens_per_tile = tokens_per_tile(self.tiler.config.tile_size, patch_size, downsample_ratio)
        if encoder.tokens_per_tile != self.tokens_per_tile:
            raise ValueError(
                f"the encoder expands a tile to {encoder.tokens_per_tile} tokens, the vision tower makes "
                f"{self.tokens_per_tile}"
            )
        self.counters = OverlongCounters()

    # -----------------------------------------------------------------------------------------

    def build(
        self,
        conversations: Sequence[Mapping[str, Any]],
        *,
        images: Sequence[ImageSource] = (),
        video: VideoSource | None = None,
        clip: Sequence[float] | None = None,
        augment: bool = False,
        max_tiles: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> BuiltSample:
        """The sample of one annotation line. ``max_tiles`` overrides the tile budget (a dataset's
        ``max_dynamic_patch``); ``augment`` turns on InternVL's JPEG augmentation (the dataset's
        ``data_augment``). Raises SampleError (OverlongError when the over-long policy drops it)."""
        rng = rng if rng is not None else np.random.default_rng()
        turns = conversation_turns(conversations)
        if video is not None:
            if images:
                raise SampleError("a sample holds either images or a video, not both")
            return self._video(turns, video, clip, augment, rng)
        if images:
            return self._images(turns, images, augment, max_tiles, rng)
        return self._text(turns)

    def _text(self, turns: list[Turn]) -> BuiltSample:
        encoded, _ = self._fit(self.encoder.tokenize(turns, 0), 0, lambda budget: [])
        return self._built(encoded, [], [], "text")

    def _images(
        self,
        turns: list[Turn],
        sources: Sequence[ImageSource],
        augment: bool,
        max_tiles: int | None,
        rng: np.random.Generator,
    ) -> BuiltSample:
        if len(sources) == 1:
            turns = insert_placeholder(turns, IMAGE_PLACEHOLDER)
        opened = [open_image(source, self.max_image_pixels) for source in sources]
        sizes = [image_size(image) for image in opened]
        budget = per_image_budget(self.tiler.config.max_tiles if max_tiles is None else max_tiles, len(sources))
        tokenized = self.encoder.tokenize(turns, len(sources))

        def tiles_at(budget: int) -> list[int]:
            return [self.tiler.count(width, height, budget) for width, height in sizes]

        encoded, budget = self._fit(tokenized, budget, tiles_at)
        tiles: list[torch.Tensor] = []
        for image, expected in zip(opened, tiles_at(budget), strict=True):
            views, _ = self.tiler.tile_views(to_rgb(image), budget, augment=augment, rng=rng)
            if len(views) != expected:
                raise ImageDecodeError(f"the decoded image has another size than its header ({len(views)} tiles)")
            tiles += views
        kind: SampleKind = "image" if len(sources) == 1 else "multi-image"
        return self._built(encoded, tiles, tiles_at(budget), kind)

    def _video(
        self,
        turns: list[Turn],
        source: VideoSource,
        clip: Sequence[float] | None,
        augment: bool,
        rng: np.random.Generator,
    ) -> BuiltSample:
        turns = insert_placeholder(turns, VIDEO_PLACEHOLDER)
        if count_placeholders(turns, VIDEO_PLACEHOLDER) != 1:
            raise PlaceholderError(f"a video sample needs exactly one {VIDEO_PLACEHOLDER} in its user turns")
        frames = read_frames(source, self.video, rng, clip)
        label = self.video.frame_label

        def turns_with(count: int) -> list[Turn]:
            return [
                (role, expand_video_placeholder(text, count, label) if role == "user" else text) for role, text in turns
            ]

        tokenized = {len(frames.indices): self.encoder.tokenize(turns_with(len(frames.indices)), len(frames.indices))}

        def length_at(count: int) -> int:
            if count not in tokenized:
                tokenized[count] = self.encoder.tokenize(turns_with(count), count)
            return tokenized[count].length([self.tokens_per_tile] * count)

        total = len(frames.indices)
        count = self._fit_count(length_at, total, min(self.video.min_frames, total))
        encoded = tokenized[count].expand([self.tokens_per_tile] * count)
        if count == total and len(encoded) > self.max_length:  # truncate policy
            encoded = self._truncate(encoded, count)
        kept: VideoFrames = subsample(frames, count)
        tiles = self.tiler.frame_views(kept.frames, augment=augment, rng=rng)
        return self._built(encoded, tiles, [1] * count, "video")

    # -----------------------------------------------------------------------------------------
    # over-long policy

    def _fit(self, tokenized: Tokenized, budget: int, tiles_at: Callable[[int], list[int]]) -> tuple[Encoded, int]:
        """The encoded sample with the images' tile budget if it fits, else as the policy says
        (``budget`` 0 for a text-only sample): (encoded, budget used). Raises OverlongError."""

        def length_at(budget: int) -> int:
            return tokenized.length([tiles * self.tokens_per_tile for tiles in tiles_at(budget)])

        self.counters.samples += 1
        length = length_at(budget)
        if length <= self.max_length:
            return tokenized.expand([tiles * self.tokens_per_tile for tiles in tiles_at(budget)]), budget
        self.counters.overlong += 1
        if self.overlong == "reduce-tiles" and budget:
            smaller = largest_fitting(length_at, budget - 1, 1, self.max_length) if budget > 1 else None
            if smaller is None:
                self._drop(length, sum(tiles_at(budget)), "; too long even with one tile per image")
            self.counters.reduced += 1
            self.counters.tiles_removed += sum(tiles_at(budget)) - sum(tiles_at(smaller))
            return tokenized.expand([tiles * self.tokens_per_tile for tiles in tiles_at(smaller)]), smaller
        encoded = tokenized.expand([tiles * self.tokens_per_tile for tiles in tiles_at(budget)])
        if self.overlong == "truncate":
            return self._truncate(encoded, sum(tiles_at(budget))), budget
        self._drop(length, sum(tiles_at(budget)))

    def _fit_count(self, length_at: Callable[[int], int], total: int, floor: int) -> int:
        """The frame count to use for a video of ``total`` sampled frames. With the truncate policy
        an over-long video keeps all its frames and is truncated by the caller. Raises
        OverlongError."""
        self.counters.samples += 1
        if length_at(total) <= self.max_length:
            return total
        self.counters.overlong += 1
        if self.overlong == "reduce-tiles":
            smaller = largest_fitting(length_at, total - 1, floor, self.max_length) if total > floor else None
            if smaller is None:
                self._drop(length_at(total), total, f"; too long even with {floor} frames (minFrames)")
            self.counters.reduced += 1
            self.counters.tiles_removed += total - smaller
            return smaller
        if self.overlong == "truncate":
            return total
        self._drop(length_at(total), total)

    def _truncate(self, encoded: Encoded, tiles: int) -> Encoded:
        """``encoded`` cut at the limit after its last image block. Raises OverlongError."""
        cut = encoded.truncated(self.max_length)
        if cut is None:
            self._drop(len(encoded), tiles, "; a cut would go through an image or leave no answer")
        self.counters.truncated += 1
        self.counters.tokens_cut += len(encoded) - len(cut)
        return cut

    def _drop(self, tokens: int, tiles: int, why: str = "") -> NoReturn:
        self.counters.skipped += 1
        raise overlong_error(tokens, tiles, self.max_length, why)

    def _built(
        self, encoded: Encoded, tiles: list[torch.Tensor], tiles_per_image: list[int], kind: SampleKind
    ) -> BuiltSample:
        return BuiltSample(
            input_ids=encoded.input_ids,
            labels=encoded.labels,
            attention_mask=encoded.attention_mask,
            tiles=tiles,
            normalization=self.tiler.config.normalization,
            tiles_per_image=tiles_per_image,
            kind=kind,
        )

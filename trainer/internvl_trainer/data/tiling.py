"""InternVL's dynamic resolution: an image becomes a grid of 448-pixel tiles plus a thumbnail.

The algorithm is InternVL's ``dynamic_preprocess`` (reference: internvl-recipe.md §2):

1. Candidate grids are every (columns, rows) with ``min_tiles <= columns * rows <= max_tiles``, in
   InternVL's order: built as a Python set while looping n = min..max, i = 1..n, j = 1..n, then
   stably sorted by tile count. Within one tile count the order is the set's iteration order,
   which is deterministic for small integer pairs but not lexicographic, and it matters for ties.
2. The grid whose aspect ratio ``columns / rows`` is closest to ``width / height`` wins (strict
   ``<`` while scanning). On an exact tie the later candidate replaces the current one only if
   the image's area exceeds half the area of that candidate's tiles.
3. The image is stretched (not letterboxed) to ``(448 * columns, 448 * rows)`` with bicubic
   resampling and cut into tiles row by row, left to right. When that gives more than one tile
   and the thumbnail is on, the whole image stretched to 448 x 448 is appended last.
4. Each tile is normalised as torchvision's ``ToTensor`` + ``Normalize`` would: ``x / 255``,
   minus the mean, divided by the standard deviation, in float32 (ImageNet statistics by default).
   With ``data_augment``, each tile (thumbnail included) is first re-encoded as a JPEG of a quality
   drawn uniformly and independently from 75..100.

transformers' ``GotOcr2ImageProcessorPil`` chooses the same grid with the same tie rule, but lists
the candidates of one tile count in lexicographic order. The two choices agree whenever
``min_tiles`` is 1 (InternVL's default and every recipe's value; checked on every tie for budgets
up to 40 tiles); with a larger minimum a tie between two grids of the same tile count can go the
other way, and this module follows InternVL.

Resampling. ``resampler="pil"`` resizes with Pillow, so tiles equal a direct PIL reading of the
algorithm bit for bit. ``resampler="torch"`` resizes the uint8 pixels with torch's antialiased
bicubic kernel, a port of Pillow's filter (same support, same a = -0.5 cubic, two passes with
rounding in between, run here in the order Pillow picks) with 16-bit instead of 22-bit fixed-point
weights: it is several times faster and differs from Pillow by at most ``RESAMPLE_TOLERANCE`` (2)
levels of 255 on a small share of values. ``"auto"`` (the default) picks torch where its vectorised
uint8 kernel runs and Pillow, the exact fallback, elsewhere. That kernel
(``UpSampleKernelAVXAntialias.h``) is written with AVX2 intrinsics; torch runs it at CPU capability
AVX2, and at AVX512 too, where its dispatcher takes the AVX2 build of a kernel that has no AVX512
one (measured with torch 2.13 on an AVX512 EPYC: a 1920x1080 RGB resize takes 4.1 ms at AVX512,
4.2 ms under ``ATEN_CPU_CAPABILITY=avx2``, 58 ms under ``ATEN_CPU_CAPABILITY=default``).
Elsewhere (``DEFAULT``, ARM64's ``SVE*``/NEON builds, POWER, s390x) torch has only its scalar uint8
loop, slower than Pillow (58 ms against Pillow's 30 ms for that resize), so Pillow is used.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from internvl_trainer.config import DEFAULT_MAX_TILES
from internvl_trainer.data.images import ImageSource, decode_image

TILE_SIZE = 448
"""Side of a tile in pixels (InternViT's input size)."""

NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.4814546, 0.4578275, 0.40821073), (0.2686295, 0.2613025, 0.2757711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
"""Per-channel (mean, std) of InternVL's ``normalize_type`` choices; released models use imagenet."""

Normalization = Literal["imagenet", "clip", "siglip"]

JPEG_QUALITIES = tuple(range(75, 101))
"""The JPEG qualities of InternVL's training augmentation, drawn uniformly per tile."""

RESAMPLE_TOLERANCE = 2
"""Largest difference, in levels of 255, between the torch resampler's pixels and Pillow's."""

Resampler = Literal["auto", "torch", "pil"]

# ---------------------------------------------------------------------------------------------
# grid choice


@lru_cache(maxsize=256)
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """Every (columns, rows) grid with min_tiles..max_tiles tiles, in InternVL's scan order."""
    if min_tiles < 1 or max_tiles < 1:
        raise ValueError(f"tile counts must be positive, got min {min_tiles} and max {max_tiles}")
    grids = {
        (i, j)
        for n in range(min_tiles, max_tiles + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_tiles <= i * j <= max_tiles
    }
    return tuple(sorted(grids, key=lambda grid: grid[0] * grid[1]))


def choose_grid(
    width: int, height: int, min_tiles: int = 1, max_tiles: int = DEFAULT_MAX_TILES, tile_size: int = TILE_SIZE
) -> tuple[int, int]:
    """The (columns, rows) grid InternVL tiles a width x height image into."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect_ratio = width / height
    area = width * height
    best_difference = float("inf")
    best = (1, 1)
    for grid in candidate_grids(min_tiles, max_tiles):
        difference = abs(aspect_ratio - grid[0] / grid[1])
        if difference < best_difference:
            best_difference = difference
            best = grid
        elif difference == best_difference and area > 0.5 * tile_size * tile_size * grid[0] * grid[1]:
            best = grid
    return best


def tile_count(
    width: int,
    height: int,
    min_tiles: int = 1,
    max_tiles: int = DEFAULT_MAX_TILES,
    use_thumbnail: bool = True,
    tile_size: int = TILE_SIZE,
) -> int:
    """How many tiles a width x height image becomes, the thumbnail included."""
    columns, rows = choose_grid(width, height, min_tiles, max_tiles, tile_size)
    tiles = columns * rows
    return tiles + 1 if use_thumbnail and tiles > 1 else tiles


def per_image_budget(max_tiles: int, images: int) -> int:
    """The tile budget of each image of a sample with ``images`` images: InternVL splits the
    sample's budget evenly, ``max(1, max_tiles // images)``."""
    return max(1, max_tiles // max(1, images))


# ---------------------------------------------------------------------------------------------
# resampling


FAST_UINT8_CAPABILITIES = ("AVX2", "AVX512")
"""Prefixes of torch's CPU capabilities at which its vectorised uint8 antialiased resize runs
(``AVX2``, ``AVX512`` and any later ``AVX512_*`` level)."""


def _torch_kernel_available() -> bool:
    return torch.backends.cpu.get_cpu_capability().startswith(FAST_UINT8_CAPABILITIES)


def resolve_resampler(resampler: Resampler) -> Literal["torch", "pil"]:
    """The concrete resampler ``auto`` stands for on this machine."""
    if resampler == "auto":
        return "torch" if _torch_kernel_available() else "pil"
    return resampler


def _vertical_first(width: int, height: int, new_width: int, new_height: int) -> bool:
    # Pillow runs the vertical pass first when the height shrinks by more than twice the pixels
    # the width does (libImaging/Resample.c); the pass order changes rounding and clipping.
    shrink = height - new_height
    return shrink > 0 and shrink > (width - new_width) * 2


RgbSource = Image.Image | torch.Tensor
"""Decoded RGB pixels: a PIL image in mode RGB, or a (height, width, 3) uint8 tensor."""


def _tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # Pillow's pixels are read-only; they are never written to
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def rgb_size(source: RgbSource) -> tuple[int, int]:
    """(width, height) of decoded pixels."""
    if isinstance(source, Image.Image):
        return source.size
    return int(source.shape[1]), int(source.shape[0])


def resize_rgb(source: RgbSource, width: int, height: int, resampler: Literal["torch", "pil"]) -> torch.Tensor:
    """``source`` resized bicubically (stretched) to a (height, width, 3) uint8 tensor."""
    if resampler == "pil":
        image = source if isinstance(source, Image.Image) else Image.fromarray(np.ascontiguousarray(source.numpy()))
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BICUBIC)
        return _tensor(np.asarray(image))
    pixels = _tensor(np.asarray(source)) if isinstance(source, Image.Image) else source
    in_height, in_width = pixels.shape[:2]
    if (in_width, in_height) == (width, height):
        return pixels
    batch = pixels.permute(2, 0, 1).unsqueeze(0)  # a channels-last view: what the uint8 kernel wants
    if _vertical_first(in_width, in_height, width, height):
        batch = F.interpolate(batch, size=(height, in_width), mode="bicubic", antialias=True, align_corners=False)
    batch = F.interpolate(batch, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return batch[0].permute(1, 2, 0)


# ---------------------------------------------------------------------------------------------
# normalisation


@lru_cache(maxsize=8)
def _statistics(normalization: Normalization) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = NORMALIZATIONS[normalization]
    return (
        torch.tensor(mean, dtype=torch.float32).view(3, 1, 1),
        torch.tensor(std, dtype=torch.float32).view(3, 1, 1),
    )


def normalize(
    tiles: Sequence[torch.Tensor], normalization: Normalization, out: torch.Tensor | None = None
) -> torch.Tensor:
    """(size, size, 3) uint8 tiles → (tiles, 3, size, size) float32, exactly as torchvision's
    ToTensor then Normalize compute it (``x / 255``, minus mean, divided by std, in float32),
    written into ``out`` when given (a slice of a micro-batch: the tiles are converted once, where
    they end up). One tile at a time, so that the arithmetic runs on data in the CPU cache."""
    if out is None:
        size = tiles[0].shape[0] if len(tiles) else TILE_SIZE
        out = torch.empty((len(tiles), 3, size, size), dtype=torch.float32)
    elif out.shape[0] != len(tiles):
        raise ValueError(f"{len(tiles)} tiles do not fill {out.shape[0]} places")
    mean, std = _statistics(normalization)
    for index, tile in enumerate(tiles):
        target = out[index]
        target.copy_(tile.permute(2, 0, 1))
        target.div_(255).sub_(mean).div_(std)
    return out


# ---------------------------------------------------------------------------------------------
# tiles


@dataclass(frozen=True)
class TilingConfig:
    """How images become tiles. The defaults are InternVL's recipe."""

    tile_size: int = TILE_SIZE
    min_tiles: int = 1
    max_tiles: int = DEFAULT_MAX_TILES
    use_thumbnail: bool = True
    normalization: Normalization = "imagenet"
    resampler: Resampler = "auto"


@dataclass
class Tiles:
    """The tiles of one image."""

    pixel_values: torch.Tensor
    """(tiles, 3, size, size) float32, normalised; the thumbnail, if any, is last."""
    grid: tuple[int, int]
    """(columns, rows) of the grid."""
    thumbnail: bool
    """Whether the last tile is the thumbnail."""

    def __len__(self) -> int:
        return self.pixel_values.shape[0]


def jpeg_degrade(tile: np.ndarray, quality: int) -> np.ndarray:
    """``tile`` (size, size, 3) uint8 re-encoded as a JPEG of ``quality`` with Pillow's defaults
    and decoded again: InternVL's augmentation."""
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as degraded:
        return np.asarray(degraded.convert("RGB"))


class Tiler:
    """Turns RGB images into normalised tiles: grid choice, resize, crops, thumbnail, augmentation."""

    def __init__(self, config: TilingConfig | None = None):
        self.config = config or TilingConfig()
        self.resampler = resolve_resampler(self.config.resampler)

    def grid(self, width: int, height: int, max_tiles: int | None = None) -> tuple[int, int]:
        """The grid of a width x height image under a tile budget (the config's by default)."""
        maximum = self.config.max_tiles if max_tiles is None else max_tiles
        return choose_grid(width, height, min(self.config.min_tiles, maximum), maximum, self.config.tile_size)

    def count(self, width: int, height: int, max_tiles: int | None = None) -> int:
        """Tiles of a width x height image under a tile budget, the thumbnail included."""
        columns, rows = self.grid(width, height, max_tiles)
        tiles = columns * rows
        return tiles + 1 if self.config.use_thumbnail and tiles > 1 else tiles

    def tile_views(
        self,
        image: ImageSource | np.ndarray | torch.Tensor,
        max_tiles: int | None = None,
        *,
        augment: bool = False,
        rng: np.random.Generator | None = None,
    ) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """The tiles of ``image`` as (size, size, 3) uint8 views into the resized image, row by row,
        the thumbnail last, and the grid: what a sample keeps until collation normalises the tiles
        straight into the batch. ``image`` is anything ``decode_image`` reads, or (height, width, 3)
        uint8 RGB pixels. With ``augment`` the tiles are JPEG-degraded copies instead."""
        source = _rgb_source(image)
        if self.resampler == "torch" and isinstance(source, Image.Image):
            source = _tensor(np.asarray(source))  # convert once for both resizes
        width, height = rgb_size(source)
        size = self.config.tile_size
        columns, rows = self.grid(width, height, max_tiles)
        resized = resize_rgb(source, size * columns, size * rows, self.resampler)
        views = [
            resized[row * size : (row + 1) * size, column * size : (column + 1) * size]
            for row in range(rows)
            for column in range(columns)
        ]
        if self.config.use_thumbnail and len(views) > 1:
            views.append(resize_rgb(source, size, size, self.resampler))
        if augment:
            views = self.augment(views, rng)
        return views, (columns, rows)

    def tiles_uint8(
        self, image: ImageSource | np.ndarray | torch.Tensor, max_tiles: int | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """The tiles of ``image`` as one (tiles, size, size, 3) uint8 tensor, and the grid."""
        views, grid = self.tile_views(image, max_tiles)
        return torch.stack(views), grid

    def normalize(self, tiles: Sequence[torch.Tensor]) -> torch.Tensor:
        """``normalize`` with this tiler's normalisation."""
        return normalize(tiles, self.config.normalization)

    def augment(self, tiles: list[torch.Tensor], rng: np.random.Generator | None = None) -> list[torch.Tensor]:
        """Each tile re-encoded as a JPEG of a quality drawn independently from 75..100 (from a fresh
        generator when ``rng`` is None)."""
        qualities = (rng if rng is not None else np.random.default_rng()).choice(JPEG_QUALITIES, size=len(tiles))
        return [
            _tensor(jpeg_degrade(np.ascontiguousarray(tile.numpy()), int(quality)))
            for tile, quality in zip(tiles, qualities, strict=True)
        ]

    def __call__(
        self,
        image: ImageSource | np.ndarray | torch.Tensor,
        *,
        max_tiles: int | None = None,
        augment: bool = False,
        rng: np.random.Generator | None = None,
    ) -> Tiles:
        """The normalised tiles of ``image`` under a tile budget, JPEG-augmented if ``augment``."""
        views, grid = self.tile_views(image, max_tiles, augment=augment, rng=rng)
        return Tiles(self.normalize(views), grid, len(views) > grid[0] * grid[1])

    def frame_views(
        self, frames: np.ndarray | torch.Tensor, *, augment: bool = False, rng: np.random.Generator | None = None
    ) -> list[torch.Tensor]:
        """Video frames (frames, height, width, 3) uint8 → one (size, size, 3) uint8 tile per frame,
        each frame stretched to the tile size, as InternVL treats video."""
        frames = torch.as_tensor(frames)
        size = self.config.tile_size
        if self.resampler == "torch" and frames.shape[1:3] != (size, size):
            batch = frames.permute(0, 3, 1, 2)  # one call resizes every frame
            if _vertical_first(frames.shape[2], frames.shape[1], size, size):
                batch = F.interpolate(batch, size=(size, frames.shape[2]), mode="bicubic", antialias=True)
            batch = F.interpolate(batch, size=(size, size), mode="bicubic", antialias=True)
            tiles = batch.permute(0, 2, 3, 1)
        else:
            tiles = torch.empty((frames.shape[0], size, size, 3), dtype=torch.uint8)
            for index in range(frames.shape[0]):
                tiles[index] = resize_rgb(frames[index], size, size, self.resampler)
        views = list(tiles)
        if augment:
            views = self.augment(views, rng)
        return views


def _rgb_source(image: ImageSource | np.ndarray | torch.Tensor) -> RgbSource:
    if isinstance(image, np.ndarray):
        image = _tensor(image)
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected (height, width, 3) uint8 RGB pixels, got {tuple(image.shape)} {image.dtype}")
        return image
    return decode_image(image)

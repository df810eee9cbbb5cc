"""How fast an image becomes normalised tiles, from JPEG bytes, on one core.

Every sample of a run goes through this, on the data-loader workers that keep the GPUs fed, so
its cost per core bounds the images per second a node can train on. Compared on the same JPEG:

- the project's ``Tiler`` with the torch resampler (the default where torch's vectorised uint8
  kernel exists) and with the Pillow resampler (bit-exact to the published algorithm);
- a plain Pillow port of InternVL's published ``dynamic_preprocess`` + ``build_transform``, written
  here (``plain_pil_tiles``): the baseline;
- transformers' ``GotOcr2ImageProcessorPil``, the processor InternVL's ``-hf`` checkpoints use where
  torchvision is missing.

Before timing, the benchmark checks that every implementation chooses the same grid, that the
Pillow-resampler path equals the baseline bit for bit and that the torch path stays within
``RESAMPLE_TOLERANCE`` levels of it.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from benchmarks import Table, seconds_per_call
from internvl_trainer.data.tiling import NORMALIZATIONS, RESAMPLE_TOLERANCE, TILE_SIZE, Tiler, TilingConfig

MEAN, STD = NORMALIZATIONS["imagenet"]
IMAGES = [(1920, 1080), (1024, 768)]
MAX_TILES = 12


def plain_pil_tiles(data: bytes, max_num: int = MAX_TILES, min_num: int = 1, image_size: int = TILE_SIZE):
    """InternVL's published preprocessing read literally with Pillow: open, convert to RGB, pick the
    grid, resize to it, crop row by row, append a thumbnail, then per tile ToTensor + Normalize as
    torchvision computes them. Returns the (tiles, 3, size, size) tensor and the grid."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    aspect_ratio = width / height
    target_ratios = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    best_ratio_diff, best_ratio = float("inf"), (1, 1)
    for ratio in sorted(target_ratios, key=lambda x: x[0] * x[1]):
        ratio_diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if ratio_diff < best_ratio_diff:
            best_ratio_diff, best_ratio = ratio_diff, ratio
        elif ratio_diff == best_ratio_diff and width * height > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best_ratio = ratio
    columns, rows = best_ratio
    resized = image.resize((image_size * columns, image_size * rows))
    tiles = []
    for index in range(columns * rows):
        left, top = (index % columns) * image_size, (index // columns) * image_size
        tiles.append(resized.crop((left, top, left + image_size, top + image_size)))
    if len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size)))
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    tensors = []
    for tile in tiles:
        tensor = torch.from_numpy(np.array(tile, copy=True)).permute(2, 0, 1).contiguous().float().div(255)
        tensors.append(tensor.sub_(mean).div_(std))
    return torch.stack(tensors), best_ratio


def photo_jpeg(width: int, height: int, quality: int = 90) -> bytes:
    """A photo-like JPEG: smooth shading, hard edges and sensor-like noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [127 + 100 * np.sin(x / 53.0 + y / 71.0), 255 * x / (width - 1), 60 + 120 * ((x // 97 + y // 61) % 2)], axis=-1
    )
    pixels = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def levels(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference between two normalised tile tensors, in levels of 255."""
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    return float(((a.double() - b.double()).abs() * std * 255).max())


def _gotocr2():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(
        size={"height": TILE_SIZE, "width": TILE_SIZE},
        crop_to_patches=True,
        min_patches=1,
        max_patches=MAX_TILES,
        image_mean=list(MEAN),
        image_std=list(STD),
        do_convert_rgb=True,
    )


def run() -> list[Table]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [_table()]
    finally:
        torch.set_num_threads(threads)


def _table() -> Table:
    fast = Tiler(TilingConfig(max_tiles=MAX_TILES, resampler="torch"))
    exact = Tiler(TilingConfig(max_tiles=MAX_TILES, resampler="pil"))
    processor = _gotocr2()
    rows = []
    for width, height in IMAGES:
        data = photo_jpeg(width, height)
        baseline, grid = plain_pil_tiles(data)
        hf = processor(images=Image.open(io.BytesIO(data)), return_tensors="pt")["pixel_values"]
        ours_fast, ours_exact = fast(data), exact(data)
        assert ours_fast.grid == ours_exact.grid == grid and hf.shape == baseline.shape, "grids differ"
        assert torch.equal(ours_exact.pixel_values, baseline), "the Pillow resampler differs from the baseline"
        assert levels(ours_fast.pixel_values, baseline) <= RESAMPLE_TOLERANCE + 1e-3, "torch resampler off"
        alternatives = [
            ("plain PIL port of the published algorithm (baseline)", lambda d=data: plain_pil_tiles(d), baseline),
            ("`Tiler`, torch resampler (default on AVX2)", lambda d=data: fast(d), ours_fast.pixel_values),
            ("`Tiler`, Pillow resampler", lambda d=data: exact(d), ours_exact.pixel_values),
            (
                "transformers `GotOcr2ImageProcessorPil`",
                lambda d=data: processor(images=Image.open(io.BytesIO(d)), return_tensors="pt"),
                hf,
            ),
        ]
        base_seconds = None
        for label, function, output in alternatives:
            seconds = seconds_per_call(function, repeats=3)
            base_seconds = base_seconds or seconds
            rows.append(
                [
                    f"{width}×{height} → {grid[0]}×{grid[1]} + thumbnail",
                    label,
                    f"{seconds * 1e3:.1f} ms",
                    f"{1 / seconds:.1f}",
                    f"{base_seconds / seconds:.2f}×",
                    f"{levels(output, baseline):.3g}",
                ]
            )
    return Table(
        title="Image tiling: JPEG bytes to normalised tiles",
        method=(
            f"A photo-like JPEG (quality 90) decoded and tiled InternVL's way (at most {MAX_TILES} tiles of"
            f" {TILE_SIZE} px plus a thumbnail, ImageNet normalisation, float32), one thread (torch threads"
            " set to 1); best of 3 timings, each averaged over at least 0.2 s of calls. Grids are checked equal"
            " for all rows, the Pillow-resampler row bit-identical to the baseline. Goal: the default `Tiler`"
            " at least 1.5× the baseline. Difference: largest |Δ| against the baseline, in levels of 255."
        ),
        columns=["Image", "Implementation", "Time per image", "Images/s per core", "vs baseline", "Max difference"],
        rows=rows,
    )

"""How fast an image becomes normalised tiles, from encoded bytes, on one core.

Every sample of a run goes through this, on the data-loader workers that keep the GPUs fed, so
its cost per core bounds the images per second a node can train on. Compared on the same file
(photo-like JPEGs of three sizes, and a screenshot-sized PNG stored as opaque RGBA):

- the project's ``Tiler()`` as users get it (its ``auto`` resampler: torch where torch's
  vectorised uint8 kernel runs, Pillow elsewhere), and with the Pillow resampler forced (bit-exact
  to the published algorithm, the fallback);
- a plain Pillow port of InternVL's published ``load_image`` + ``dynamic_preprocess`` +
  ``build_transform``, written here (``plain_pil_tiles``): the baseline;
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

from benchmarks import Table, interleaved
from internvl_trainer.data.tiling import (
    NORMALIZATIONS,
    RESAMPLE_TOLERANCE,
    TILE_SIZE,
    Tiler,
    TilingConfig,
)

MEAN, STD = NORMALIZATIONS["imagenet"]
MAX_TILES = 12
ROUNDS = 3


def plain_pil_tiles(data: bytes, max_num: int = MAX_TILES, min_num: int = 1, image_size: int = TILE_SIZE):
    """InternVL's published ``load_image`` read literally with Pillow: open, convert to RGB, then
    ``published_tiles``."""
    return published_tiles(Image.open(io.BytesIO(data)).convert("RGB"), max_num, min_num, image_size)


def published_tiles(image: Image.Image, max_num: int = MAX_TILES, min_num: int = 1, image_size: int = TILE_SIZE):
    """InternVL's published ``dynamic_preprocess`` + ``build_transform`` on an RGB image: pick the
    grid, resize to it, crop row by row, append a thumbnail, then per tile ToTensor + Normalize as
    torchvision computes them. Returns the (tiles, 3, size, size) tensor and the grid."""
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


def photo_pixels(width: int, height: int) -> np.ndarray:
    """Photo-like (height, width, 3) uint8 pixels: smooth shading, hard edges and sensor-like noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [127 + 100 * np.sin(x / 53.0 + y / 71.0), 255 * x / (width - 1), 60 + 120 * ((x // 97 + y // 61) % 2)], axis=-1
    )
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def photo_jpeg(width: int, height: int, quality: int = 90) -> bytes:
    """A photo-like JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(photo_pixels(width, height)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def opaque_rgba_png(width: int, height: int) -> bytes:
    """A PNG stored as RGBA with every pixel opaque, as many screenshots and exported images are."""
    rgba = np.concatenate([photo_pixels(width, height), np.full((height, width, 1), 255, np.uint8)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    return buffer.getvalue()


CASES = [
    ("1920×1080 JPEG", lambda: photo_jpeg(1920, 1080), 2.0),
    ("4032×3024 JPEG", lambda: photo_jpeg(4032, 3024), 2.0),
    ("640×480 JPEG", lambda: photo_jpeg(640, 480), 2.0),
    ("2560×1440 PNG, opaque RGBA", lambda: opaque_rgba_png(2560, 1440), 1.3),
]
"""(image, its bytes, the default ``Tiler``'s goal against the baseline): decoding dominates a PNG."""


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
    default = Tiler(TilingConfig(max_tiles=MAX_TILES))
    exact = Tiler(TilingConfig(max_tiles=MAX_TILES, resampler="pil"))
    processor = _gotocr2()
    capability = torch.backends.cpu.get_cpu_capability()
    default_label = f"`Tiler()` as users get it: {default.resampler} resampler (**default here**)"
    rows = []
    for name, make, goal in CASES:
        data = make()
        baseline, grid = plain_pil_tiles(data)
        hf = processor(images=Image.open(io.BytesIO(data)), return_tensors="pt")["pixel_values"]
        ours, ours_exact = default(data), exact(data)
        assert ours.grid == ours_exact.grid == grid and hf.shape == baseline.shape, "grids differ"
        assert torch.equal(ours_exact.pixel_values, baseline), "the Pillow resampler differs from the baseline"
        assert levels(ours.pixel_values, baseline) <= RESAMPLE_TOLERANCE + 1e-3, "the default differs too much"
        alternatives = {
            "plain PIL port of the published algorithm (baseline)": (lambda d=data: plain_pil_tiles(d), baseline),
            default_label: (lambda d=data: default(d), ours.pixel_values),
            "`Tiler`, Pillow resampler forced (the exact fallback)": (lambda d=data: exact(d), ours_exact.pixel_values),
            "transformers `GotOcr2ImageProcessorPil`": (
                lambda d=data: processor(images=Image.open(io.BytesIO(d)), return_tensors="pt"),
                hf,
            ),
        }
        seconds = interleaved({label: function for label, (function, _) in alternatives.items()}, rounds=ROUNDS)
        base_seconds = seconds["plain PIL port of the published algorithm (baseline)"]
        for label, (_, output) in alternatives.items():
            speedup = base_seconds / seconds[label]
            verdict = ""
            if label == default_label:
                verdict = f" (goal ≥ {goal:g}×: {'met' if speedup >= goal else 'not met'})"
            rows.append(
                [
                    f"{name} → {grid[0]}×{grid[1]} + thumbnail",
                    label,
                    f"{seconds[label] * 1e3:.1f} ms",
                    f"{1 / seconds[label]:.1f}",
                    f"{speedup:.2f}×{verdict}",
                    f"{levels(output, baseline):.3g}",
                ]
            )
    return Table(
        title="Image tiling: encoded image to normalised tiles",
        method=(
            f"Each image decoded and tiled InternVL's way (at most {MAX_TILES} tiles of {TILE_SIZE} px plus a"
            " thumbnail, ImageNet normalisation, float32), one thread (torch threads set to 1); best of"
            f" {ROUNDS} interleaved rounds (every implementation timed in turn, each timing averaged over at"
            " least 0.2 s of calls). The headline is the default `Tiler()` on this machine: torch reports CPU"
            f" capability {capability}, where `auto` takes the {default.resampler} resampler. Grids are"
            " checked equal for all rows, the Pillow-resampler row bit-identical to the baseline, the default"
            f" within {RESAMPLE_TOLERANCE} levels of 255. Goals for the default: at least 2× the baseline on"
            " the JPEGs, 1.3× on the PNG (where decoding dominates; the opaque RGBA image skips compositing)."
            " Difference: largest |Δ| against the baseline, in levels of 255."
        ),
        columns=["Image", "Implementation", "Time per image", "Images/s per core", "vs baseline", "Max difference"],
        rows=rows,
    )


if __name__ == "__main__":
    for table in run():
        print(table.markdown())

"""The PNG of ``internvl-data stats``, drawn with Pillow alone (no plotting library): a histogram of
token lengths (with the maximum length marked), a histogram of tiles per sample, and the samples
of each dataset by kind, bad ones included."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH = 1200
PANEL = 300
MARGIN = 70
BACKGROUND = (255, 255, 255)
INK = (40, 40, 40)
GRID = (225, 225, 225)
BAR = (66, 114, 196)
LIMIT = (200, 40, 40)
KIND_COLOURS = {
    "text": (120, 120, 120),
    "image": (66, 114, 196),
    "multi-image": (237, 125, 49),
    "video": (112, 173, 71),
    "frames": (91, 155, 213),
    "bad": (200, 40, 40),
}


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def histogram(values: Sequence[int], bins: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of integer ``values``: one bin per integer when they span at most ``bins``
    integers, else ``bins`` equal bins."""
    data = np.asarray(values, dtype=np.int64)
    if not data.size:
        return np.zeros(0, dtype=np.int64), np.zeros(1)
    low, high = int(data.min()), int(data.max())
    if high - low + 1 <= bins:
        edges = np.arange(low, high + 2, dtype=np.float64) - 0.5
    else:
        edges = np.linspace(low, high + 1, bins + 1)
    counts, edges = np.histogram(data, bins=edges)
    return counts, edges


def _ticks(peak: int) -> list[int]:
    """About five round counts from 0 (excluded) to ``peak`` for the vertical axis."""
    target = max(1.0, peak / 5)
    magnitude = 10 ** math.floor(math.log10(target))
    step = next(math.ceil(nice * magnitude) for nice in (1, 2, 2.5, 5, 10) if nice * magnitude >= target)
    return list(range(step, peak + 1, step))


def _summary(values: Sequence[int]) -> str:
    data = np.asarray(values, dtype=np.int64)
    if not data.size:
        return "no samples"
    return (
        f"n = {data.size:,}   mean {data.mean():,.0f}   median {np.median(data):,.0f}   "
        f"p95 {np.percentile(data, 95):,.0f}   max {data.max():,}"
    )


def _histogram_panel(
    draw: ImageDraw.ImageDraw, top: int, title: str, values: Sequence[int] | None, limit: int | None, note: str
) -> None:
    font, small = _font(16), _font(12)
    draw.text((MARGIN, top), title, fill=INK, font=font)
    left, right, y0, y1 = MARGIN, WIDTH - MARGIN, top + 30, top + PANEL - 50
    if values is None or not len(values):
        draw.rectangle((left, y0, right, y1), outline=GRID)
        draw.text((left + 20, (y0 + y1) // 2), note, fill=INK, font=small)
        return
    counts, edges = histogram(values)
    low, high = float(edges[0]), float(edges[-1])
    if limit is not None and limit > high:
        high = float(limit) * 1.02
    peak = int(counts.max()) or 1

    def x_at(value: float) -> float:
        return left + (value - low) / (high - low or 1) * (right - left)

    for tick in _ticks(peak):
        y = y1 - tick / peak * (y1 - y0)
        draw.line((left, y, right, y), fill=GRID)
        draw.text((8, y - 7), f"{tick:,}", fill=INK, font=small)
    for count, start, stop in zip(counts, edges[:-1], edges[1:], strict=True):
        if count:
            height = count / peak * (y1 - y0)
            draw.rectangle((x_at(start) + 1, y1 - height, max(x_at(start) + 2, x_at(stop) - 1), y1), fill=BAR)
    draw.line((left, y1, right, y1), fill=INK)
    for tick in np.linspace(low, high, 6):
        x = x_at(tick)
        draw.line((x, y1, x, y1 + 5), fill=INK)
        draw.text((x - 20, y1 + 8), f"{tick:,.0f}", fill=INK, font=small)
    if limit is not None:
        x = x_at(limit)
        draw.line((x, y0, x, y1), fill=LIMIT, width=2)
        draw.text((x - 60, y0 - 16), f"max {limit:,}", fill=LIMIT, font=small)
    draw.text((left, y1 + 26), _summary(values), fill=INK, font=small)


def _datasets_panel(draw: ImageDraw.ImageDraw, top: int, datasets: Mapping[str, Mapping[str, int]]) -> int:
    font, small = _font(16), _font(12)
    draw.text((MARGIN, top), "Samples per dataset, by kind", fill=INK, font=font)
    row = 26
    y = top + 32
    widest = max((sum(counts.values()) for counts in datasets.values()), default=0) or 1
    label_width = 200
    left, right = MARGIN + label_width, WIDTH - MARGIN - 120
    for name, counts in datasets.items():
        draw.text((MARGIN, y + 4), name[:28], fill=INK, font=small)
        x = float(left)
        for kind, count in counts.items():
            if not count:
                continue
            width = count / widest * (right - left)
            draw.rectangle((x, y, x + max(width, 1), y + row - 6), fill=KIND_COLOURS.get(kind, BAR))
            x += width
        draw.text((x + 8, y + 4), f"{sum(counts.values()):,}", fill=INK, font=small)
        y += row
    x = MARGIN
    for kind, colour in KIND_COLOURS.items():
        draw.rectangle((x, y + 8, x + 14, y + 22), fill=colour)
        draw.text((x + 20, y + 8), kind, fill=INK, font=small)
        x += 120
    return y + 30


def stats_png(
    path: str | Path,
    *,
    title: str,
    tiles: Sequence[int],
    tokens: Sequence[int] | None,
    datasets: Mapping[str, Mapping[str, int]],
    max_length: int | None = None,
) -> Path:
    """Draw the statistics image and write it to ``path`` (PNG). ``datasets`` maps each dataset to
    its sample counts by kind (``bad`` for bad samples). ``tokens`` None: no tokenizer was given."""
    rows = len(datasets)
    height = 60 + 2 * PANEL + 80 + 26 * rows + 40
    image = Image.new("RGB", (WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 16), title, fill=INK, font=_font(20))
    _histogram_panel(
        draw,
        60,
        "Token length per sample (image tokens included)",
        tokens,
        max_length,
        "token lengths need --tokenizer",
    )
    _histogram_panel(draw, 60 + PANEL, "Tiles per sample (thumbnails and frames included)", tiles, None, "no samples")
    _datasets_panel(draw, 60 + 2 * PANEL, datasets)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path

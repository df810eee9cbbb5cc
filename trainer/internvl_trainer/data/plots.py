"""The PNG of ``internvl-data stats``: token lengths per sample with the maximum length marked, tiles
per sample, the samples of each dataset by kind (bad ones included), and the bad samples by
problem kind, four panels of one matplotlib figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from internvl_trainer import charts

KIND_COLOURS = {
    "text": "tab:gray",
    "image": "tab:blue",
    "multi-image": "tab:orange",
    "video": "tab:green",
    "frames": "tab:cyan",
    "bad": "tab:red",
}


def bin_edges(values: Sequence[int], bins: int = 30) -> np.ndarray:
    """Histogram edges for integer ``values``: one bin per integer when they span at most ``bins``
    integers, else ``bins`` equal bins."""
    data = np.asarray(values, dtype=np.int64)
    low, high = int(data.min()), int(data.max())
    if high - low + 1 <= bins:
        return np.arange(low, high + 2, dtype=np.float64) - 0.5
    return np.linspace(low, high + 1, bins + 1)


def _summary(values: Sequence[int]) -> str:
    data = np.asarray(values, dtype=np.int64)
    return (
        f"n = {data.size:,}, mean {data.mean():,.0f}, median {np.median(data):,.0f}, "
        f"p95 {np.percentile(data, 95):,.0f}, max {data.max():,}"
    )


def _empty(axes: Any, note: str) -> None:
    axes.text(0.5, 0.5, note, transform=axes.transAxes, ha="center", va="center")
    axes.set_xticks([])
    axes.set_yticks([])


def _histogram(axes: Any, values: Sequence[int] | None, unit: str, note: str, limit: int | None = None) -> None:
    if values is None or not len(values):
        _empty(axes, note)
        return
    axes.hist(values, bins=bin_edges(values), color="tab:blue")
    if limit is not None:
        axes.axvline(limit, color="tab:red", linewidth=2, label=f"maximum length {limit:,}")
        axes.legend(loc="upper right")
    axes.set_xlabel(f"{unit}\n{_summary(values)}")
    axes.set_ylabel("samples")
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.grid(True, axis="y", alpha=0.3)


def _count_axis(axes: Any, totals: Sequence[float]) -> None:
    """Horizontal bars of whole samples: each row's total at its bar's end, the first row on top."""
    for row, total in enumerate(totals):
        axes.text(total, row, f" {int(total):,}", va="center", fontsize=9)
    axes.invert_yaxis()
    axes.set_xlabel("samples")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(True, axis="x", alpha=0.3)


def _datasets(axes: Any, datasets: Mapping[str, Mapping[str, int]]) -> None:
    names = list(datasets)
    if not names:
        _empty(axes, "no datasets")
        return
    left = np.zeros(len(names))
    for kind, colour in KIND_COLOURS.items():
        counts = np.array([datasets[name].get(kind, 0) for name in names], dtype=np.float64)
        if counts.any():
            axes.barh(names, counts, left=left, color=colour, label=kind)
            left += counts
    _count_axis(axes, left)  # the datasets in the meta file's order
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)


def _bad(axes: Any, bad: Mapping[str, int]) -> None:
    ranked = sorted(((kind, count) for kind, count in bad.items() if count), key=lambda item: (-item[1], item[0]))
    if not ranked:
        _empty(axes, "no bad samples")
        return
    kinds, counts = zip(*ranked, strict=True)
    axes.barh(kinds, counts, color="tab:red")
    _count_axis(axes, counts)


def stats_png(
    path: str | Path,
    *,
    title: str,
    tiles: Sequence[int],
    tokens: Sequence[int] | None,
    datasets: Mapping[str, Mapping[str, int]],
    bad: Mapping[str, int],
    max_length: int | None = None,
) -> Path:
    """Draw the statistics and write them to ``path`` (PNG). ``datasets`` maps each dataset to its
    sample counts by kind (``bad`` for bad samples); ``bad`` counts the problems by kind over all
    datasets; ``tokens`` None: no tokenizer was given."""
    chart = charts.figure(charts.WIDTH, charts.HEIGHT)
    chart.suptitle(title, fontsize=12)
    (lengths, tile_counts), (per_dataset, problems) = chart.subplots(2, 2)
    lengths.set_title("Token length per sample (image tokens included)")
    _histogram(lengths, tokens, "tokens", "token lengths need --tokenizer", max_length)
    tile_counts.set_title("Tiles per sample (thumbnails and frames included)")
    _histogram(tile_counts, tiles, "tiles", "no samples")
    per_dataset.set_title("Samples per dataset, by kind")
    _datasets(per_dataset, datasets)
    problems.set_title("Bad samples, by problem")
    _bad(problems, bad)
    return charts.write_png(chart, path, {"Title": title})

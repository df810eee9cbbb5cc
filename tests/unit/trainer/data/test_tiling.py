"""Dynamic tiling: InternVL's grid choice and tie rule, transformers' agreement, pixels against a
direct PIL reading of the algorithm, thumbnail, normalisation and JPEG augmentation."""

from __future__ import annotations

import io
import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
    GotOcr2ImageProcessorPil,
    get_optimal_tiled_canvas,
)

from benchmarks.tiling import plain_pil_tiles
from internvl_trainer.data.tiling import (
    JPEG_QUALITIES,
    NORMALIZATIONS,
    RESAMPLE_TOLERANCE,
    Tiler,
    TilingConfig,
    candidate_grids,
    choose_grid,
    jpeg_degrade,
    normalize,
    per_image_budget,
    resolve_resampler,
    tile_count,
)
from tests.unit.trainer.data.conftest import encode, photo

HALF_TILE_AREA = 0.5 * 448 * 448


def gotocr2_grid(width: int, height: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    return get_optimal_tiled_canvas((height, width), (448, 448), min_tiles, max_tiles)


# ---------------------------------------------------------------------------------------------
# grid choice


def test_candidates_follow_internvls_order():
    # The order of the reference (internvl-recipe.md §2.1): sorted by tile count, set order within.
    assert candidate_grids(1, 12)[:8] == ((1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (4, 1), (1, 4))
    assert candidate_grids(1, 12)[-5:] == ((3, 4), (4, 3), (1, 12), (6, 2), (2, 6))
    assert len(candidate_grids(1, 12)) == 35
    assert len(candidate_grids(1, 40)) == 158
    assert candidate_grids(4, 4) == ((4, 1), (1, 4), (2, 2))


@pytest.mark.parametrize(
    ("width", "height", "grid", "tiles"),
    [
        (448, 448, (1, 1), 1),
        (224, 224, (1, 1), 1),
        (1920, 1080, (4, 2), 9),
        (1080, 1920, (2, 4), 9),
        (800, 600, (4, 3), 13),
        (1024, 768, (4, 3), 13),
        (640, 480, (4, 3), 13),
        (3000, 1000, (6, 2), 13),
        (500, 2000, (1, 4), 5),
    ],
)
def test_reference_examples(width, height, grid, tiles):
    # The table of internvl-recipe.md §2.1 (max 12, thumbnail on).
    assert choose_grid(width, height, 1, 12) == grid
    assert tile_count(width, height, 1, 12) == tiles


def test_square_ties_take_more_tiles_until_they_would_exceed_twice_the_image():
    # 1:1 ties between (1,1), (2,2), (3,3): (2,2) from s² > 2·448², (3,3) from s² > 4.5·448².
    assert [choose_grid(s, s, 1, 12) for s in (633, 634, 950, 951)] == [(1, 1), (2, 2), (2, 2), (3, 3)]


def decisive_ties(max_tiles: int) -> list[tuple[Fraction, list[tuple[int, int]]]]:
    """Every aspect ratio at which the closest distance is shared by several grids (in float
    arithmetic, as the scan computes it): grids of one ratio, and midpoints of neighbouring ratios."""
    grids = candidate_grids(1, max_tiles)
    ratios = sorted({Fraction(columns, rows) for columns, rows in grids})
    targets = [r for r in ratios if sum(Fraction(c, w) == r for c, w in grids) > 1]
    targets += [(a + b) / 2 for a, b in zip(ratios, ratios[1:], strict=False)]
    ties = []
    for ratio in targets:
        value = ratio.numerator / ratio.denominator
        distances = [abs(value - columns / rows) for columns, rows in grids]
        tied = [grid for grid, distance in zip(grids, distances, strict=True) if distance == min(distances)]
        if len(tied) > 1:
            ties.append((ratio, tied))
    return ties


def tie_sizes() -> dict[tuple[int, int, int], tuple[int, int]]:
    """(width, height, max_tiles) with the exact ratio of every decisive tie for max 1..40, at the
    smallest size and on both sides of the area threshold of each tied grid, mapped to the first of
    the tied grids."""
    sizes = {}
    for max_tiles in range(1, 41):
        for ratio, tied in decisive_ties(max_tiles):
            p, q = ratio.numerator, ratio.denominator
            scales = {1}
            for columns, rows in tied:
                k = math.isqrt(int(HALF_TILE_AREA * columns * rows) // (p * q))
                scales |= {k, k + 1}
            sizes.update({(p * k, q * k, max_tiles): tied[0] for k in scales if k >= 1})
    return sizes


def test_every_tie_case_and_random_sizes_choose_gotocr2s_grid():
    ties = tie_sizes()
    assert sum(len(decisive_ties(m)) for m in range(1, 41)) == 2061
    assert len(ties) == 11455
    rng = random.Random(7)
    sizes = sorted(ties)
    sizes += [(rng.randint(1, 4096), rng.randint(1, 4096), rng.choice((1, 2, 6, 12, 24, 40))) for _ in range(3000)]
    sizes += [(rng.randint(1, 60), rng.randint(1, 20000), 12) for _ in range(250)]  # extreme aspect ratios
    sizes += [(rng.randint(1, 20000), rng.randint(1, 60), 12) for _ in range(250)]
    assert len(sizes) >= 10_000
    differences = [(w, h, m) for w, h, m in sizes if choose_grid(w, h, 1, m) != gotocr2_grid(w, h, 1, m)]
    assert differences == []
    # The tie sizes exercise both sides of the rule: the first tied grid kept, or a later one taken.
    kept = sum(choose_grid(w, h, 1, m) == first for (w, h, m), first in ties.items())
    assert (kept, len(ties) - kept) == (7678, 3777)


def test_with_a_larger_minimum_ties_follow_internvls_candidate_order():
    # min = max = 4 and aspect 2.5: (2,2) and (4,1) are equally close. InternVL scans (4,1) before
    # (2,2), GotOcr2 the other way round; the image is large, so the later one wins in each.
    assert choose_grid(1470, 588, 4, 4) == (2, 2)
    assert gotocr2_grid(1470, 588, 4, 4) == (4, 1)


def test_multi_image_budget_splits_the_tiles():
    assert [per_image_budget(12, n) for n in (1, 2, 3, 5, 12, 13, 40)] == [12, 6, 4, 2, 1, 1, 1]


# ---------------------------------------------------------------------------------------------
# pixels


def levels_of_255(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of normalised tiles converted back to levels of 255."""
    std = torch.tensor(NORMALIZATIONS["imagenet"][1], dtype=torch.float64).view(1, 3, 1, 1)
    return (a.double() - b.double()).abs() * std * 255


SIZES = [(1920, 1080), (1024, 768), (448, 448), (333, 999), (17, 13), (1, 500), (90, 1400), (1300, 200)]


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_pixels_equal_a_direct_pil_reading_of_the_algorithm(width, height):
    data = encode(photo(width, height, seed=width), "PNG")
    expected, grid = plain_pil_tiles(data)
    # The Pillow resampler: bit for bit.
    exact = Tiler(TilingConfig(resampler="pil"))(data)
    assert exact.grid == grid
    assert exact.pixel_values.dtype == torch.float32
    assert torch.equal(exact.pixel_values, expected)
    # The torch resampler, stated tolerance: every value within RESAMPLE_TOLERANCE (2) levels of 255
    # (0.035 after ImageNet normalisation), and under 1.5 % of the values differ at all.
    fast = Tiler(TilingConfig(resampler="torch"))(data)
    assert fast.grid == grid and fast.pixel_values.shape == expected.shape
    difference = levels_of_255(fast.pixel_values, expected)
    assert float(difference.max()) <= RESAMPLE_TOLERANCE + 1e-3
    assert float((difference > 1e-3).double().mean()) < 0.015


def test_tiles_are_row_major_with_the_thumbnail_last():
    # A 3x2 grid of flat colours: each tile is one colour, the thumbnail shows them all.
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    image = np.zeros((896, 1344, 3), dtype=np.uint8)
    for index, colour in enumerate(colours):
        row, column = divmod(index, 3)
        image[row * 448 : (row + 1) * 448, column * 448 : (column + 1) * 448] = colour
    for resampler in ("pil", "torch"):
        tiles, grid = Tiler(TilingConfig(resampler=resampler)).tiles_uint8(image)
        assert grid == (3, 2) and tiles.shape == (7, 448, 448, 3)
        assert [tuple(tile[224, 224].tolist()) for tile in tiles[:6]] == colours
        assert tiles[6][112, 75].tolist() == [255, 0, 0] and tiles[6][336, 373].tolist() == [255, 0, 255]


def test_one_tile_has_no_thumbnail_and_the_thumbnail_can_be_switched_off():
    tiler = Tiler(TilingConfig(resampler="pil"))
    assert len(tiler(photo(448, 448))) == 1 and not tiler(photo(448, 448)).thumbnail
    assert tiler(photo(896, 448)).thumbnail and len(tiler(photo(896, 448))) == 3
    assert len(Tiler(TilingConfig(use_thumbnail=False, resampler="pil"))(photo(896, 448))) == 2
    assert len(tiler(photo(1920, 1080), max_tiles=1)) == 1


def test_normalisation_is_totensor_then_normalize():
    tile = torch.arange(448 * 448 * 3, dtype=torch.int64).remainder(256).to(torch.uint8).view(448, 448, 3)
    for name, (mean, std) in NORMALIZATIONS.items():
        out = Tiler(TilingConfig(normalization=name)).normalize([tile])
        expected = tile.permute(2, 0, 1).float().div(255)
        expected = (expected - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        assert torch.equal(out[0], expected)
    assert Tiler().normalize([tile])[0, 0, 0, 0].item() == pytest.approx(-0.485 / 0.229)


def test_jpeg_augmentation_draws_a_quality_per_tile():
    image = photo(896, 448, seed=3)
    tiler = Tiler(TilingConfig(resampler="pil"))
    plain, _ = tiler.tiles_uint8(image)
    qualities = np.random.default_rng(5).choice(JPEG_QUALITIES, size=3)
    assert qualities.tolist() == [92, 95, 75]
    augmented = tiler(image, augment=True, rng=np.random.default_rng(5)).pixel_values
    degraded = [jpeg_degrade(tile.numpy(), int(quality)) for tile, quality in zip(plain, qualities, strict=True)]
    expected = tiler.normalize([torch.from_numpy(tile) for tile in degraded])
    assert torch.equal(augmented, expected)
    assert not torch.equal(augmented, tiler(image).pixel_values)
    assert set(np.random.default_rng(0).choice(JPEG_QUALITIES, size=2000).tolist()) == set(range(75, 101))


def test_gotocr2_processor_gives_the_same_tiles():
    data = encode(photo(1000, 700, seed=1), "PNG")
    processor = GotOcr2ImageProcessorPil(
        size={"height": 448, "width": 448},
        crop_to_patches=True,
        max_patches=12,
        image_mean=list(NORMALIZATIONS["imagenet"][0]),
        image_std=list(NORMALIZATIONS["imagenet"][1]),
    )
    expected = processor(images=Image.open(io.BytesIO(data)), return_tensors="pt")["pixel_values"]
    tiles = Tiler(TilingConfig(resampler="pil"))(data).pixel_values
    assert tiles.shape == expected.shape == (7, 3, 448, 448)
    assert float(levels_of_255(tiles, expected).max()) < 1e-3


@pytest.mark.parametrize(
    ("capability", "chosen"),
    [
        ("AVX2", "torch"),
        ("AVX512", "torch"),  # torch runs its AVX2 uint8 kernel there too
        ("AVX512_BF16", "torch"),
        ("DEFAULT", "pil"),  # scalar uint8 loop: slower than Pillow
        ("SVE256", "pil"),  # ARM64: no vectorised uint8 kernel
        ("VSX", "pil"),
        ("ZVECTOR", "pil"),
    ],
)
def test_auto_resampler_is_torch_wherever_its_vectorised_uint8_kernel_runs(monkeypatch, capability, chosen):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert resolve_resampler("auto") == chosen
    assert Tiler().resampler == chosen  # the default configuration
    assert resolve_resampler("torch") == "torch" and resolve_resampler("pil") == "pil"


def test_tiles_stay_uint8_views_until_normalised_into_their_place():
    tiler = Tiler(TilingConfig(resampler="pil"))
    views, grid = tiler.tile_views(photo(900, 500))
    assert grid == (2, 1) and len(views) == 3 and views[0].dtype == torch.uint8
    # the grid's tiles are cut from one resized image, not copied
    assert views[0].untyped_storage().data_ptr() == views[1].untyped_storage().data_ptr()
    out = torch.full((5, 3, 448, 448), float("nan"))
    normalize(views, "imagenet", out[1:4])
    assert torch.equal(out[1:4], tiler(photo(900, 500)).pixel_values)
    assert out[0].isnan().all() and out[4].isnan().all()
    with pytest.raises(ValueError, match="^3 tiles do not fill 2 places$"):
        normalize(views, "imagenet", out[:2])


def test_the_default_tiler_stays_within_the_tolerance_of_pillow():
    data = encode(photo(1000, 700, seed=3), "JPEG")
    default = Tiler()(data)
    exact = Tiler(TilingConfig(resampler="pil"))(data)
    assert default.grid == exact.grid
    assert float(levels_of_255(default.pixel_values, exact.pixel_values).max()) <= RESAMPLE_TOLERANCE + 1e-3


def test_video_frames_become_one_tile_each():
    frames = np.stack([photo(320, 240, seed=i) for i in range(3)])
    for resampler in ("pil", "torch"):
        tiler = Tiler(TilingConfig(resampler=resampler))
        out = tiler.normalize(tiler.frame_views(frames))
        assert out.shape == (3, 3, 448, 448)
        expected = torch.cat([tiler(frame, max_tiles=1).pixel_values for frame in frames])
        assert float(levels_of_255(out, expected).max()) < 1e-3

"""The chart plumbing: matplotlib's config and font cache in a writable folder (no warning where
the home folder cannot be written), PNGs of the figure's size with the caller's text and no
software version, the same bytes for the same chart."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from internvl_trainer import charts


def test_config_dir_is_mplconfigdir_else_under_the_scratch_folder(tmp_path):
    assert charts.config_dir({"MPLCONFIGDIR": "/a", "INTERNVL_SCRATCH": "/scratch"}) == Path("/a")
    assert charts.config_dir({"INTERNVL_SCRATCH": "/scratch"}) == Path("/scratch/matplotlib")
    assert charts.config_dir({}) is None


def test_a_read_only_home_gets_no_temporary_cache_warning(tmp_path):
    """HOME a file: matplotlib cannot make its folders there and, left alone, warns that it made a
    temporary cache. A fresh process, as matplotlib reads its folder once, when first imported."""
    environment = {key: value for key, value in os.environ.items() if key != "MPLCONFIGDIR"}
    environment |= {"HOME": os.devnull, "INTERNVL_SCRATCH": str(tmp_path / "scratch")}
    draw = "from internvl_trainer import charts; charts.png_bytes(charts.figure(2, 1), {})"
    result = subprocess.run([sys.executable, "-c", draw], env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert list((tmp_path / "scratch/matplotlib").glob("fontlist-*.json"))

    without_scratch = {key: value for key, value in environment.items() if key != "INTERNVL_SCRATCH"}
    result = subprocess.run([sys.executable, "-c", draw], env=without_scratch, capture_output=True, text=True)
    assert "Matplotlib created a temporary cache directory" in result.stderr  # what the scratch folder avoids


def _line(values: list[float]) -> bytes:
    chart = charts.figure(3, 2)
    chart.subplots().plot(values)
    return charts.png_bytes(chart, {"Title": "a line"})


def test_png_has_the_figure_size_the_text_and_no_software_version():
    with Image.open(io.BytesIO(_line([1.0, 3.0, 2.0]))) as image:
        assert (image.format, image.size) == ("PNG", (3 * charts.DPI, 2 * charts.DPI))
        assert image.text == {"Title": "a line"}


def test_the_same_chart_is_the_same_bytes_and_another_differs():
    assert _line([1.0, 3.0, 2.0]) == _line([1.0, 3.0, 2.0])
    assert _line([1.0, 3.0, 2.0]) != _line([1.0, 3.0, 2.5])


def test_write_png_makes_its_folder(tmp_path):
    chart = charts.figure(1, 1)
    path = charts.write_png(chart, tmp_path / "a/b/chart.png", {})
    with Image.open(path) as image:
        assert image.size == (charts.DPI, charts.DPI)


def test_matplotlib_is_imported_only_to_draw():
    modules = "internvl_trainer.charts, internvl_trainer.train.curves, internvl_trainer.data.plots"
    check = f"import sys, {modules}; assert not {{'matplotlib', 'torch'}} & set(sys.modules), sys.modules.keys()"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

"""Charts as PNG files: matplotlib's Agg backend on figures of their own, never pyplot's global
state, so no display is needed and no figure leaks into the next.

matplotlib is imported on the first chart only, with its config and font cache in a writable
folder (a pod's home may be read-only, where matplotlib would build a temporary cache at every
start and warn about it). The PNG holds no software version and no time: the same chart from the
same numbers is the same bytes; callers add text chunks that say what was drawn.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
WIDTH, HEIGHT = 12.0, 9.0
"""A full chart's size in inches, at ``DPI``: 1200 × 900 pixels."""
CONFIG_ENV = "MPLCONFIGDIR"
SCRATCH_ENV = "INTERNVL_SCRATCH"  # the pod's scratch folder (docs/contract.md §2)


def config_dir(environ: Mapping[str, str]) -> Path | None:
    """Where matplotlib keeps its config and font cache: ``$MPLCONFIGDIR`` when set, else
    ``$INTERNVL_SCRATCH/matplotlib`` in a pod, else None (matplotlib's own, under the home folder)."""
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    if environ.get(SCRATCH_ENV):
        return Path(environ[SCRATCH_ENV]) / "matplotlib"
    return None


def figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` × ``height`` inches (``DPI`` pixels each) on its own Agg canvas,
    laid out by matplotlib's constrained layout."""
    folder = config_dir(os.environ)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[CONFIG_ENV] = str(folder)  # read once, when matplotlib is first imported
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chart = Figure(figsize=(width, height), dpi=DPI, layout="constrained", facecolor="white")
    FigureCanvasAgg(chart)
    return chart


def png_bytes(chart: Figure, text: Mapping[str, str]) -> bytes:
    """The figure as PNG, its size exactly the figure's, with ``text`` as PNG text chunks."""
    buffer = io.BytesIO()
    chart.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None, **text})
    return buffer.getvalue()


def write_png(chart: Figure, path: str | os.PathLike[str], text: Mapping[str, str]) -> Path:
    """Write the figure to ``path`` (PNG, folders made), see ``png_bytes``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(chart, text))
    return path

"""The training curves of a run, drawn from its metrics.jsonl records: the loss at each step with a
smoothed line and the held-out loss at each evaluation, the learning rate, and the gradient norm.

A run writes them to ``plots/training-curves.png`` in its folder and uploads them to
``runs/<uid>/plots/`` with its metrics; ``internvl-train plot`` redraws them from any run's
metrics.jsonl. The PNG's text chunks name the panels drawn and carry ``Metrics``, the sha256 of
the plotted numbers, so a reader can tell which records a chart shows.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from internvl_trainer import charts
from internvl_trainer.config import OutputLayout
from internvl_trainer.problems import BadInput, Problem
from internvl_trainer.storage import MANIFEST_NAME, ObjectNotFound, Storage, parse
from internvl_trainer.storage.manifest import read_manifest

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CURVES_PNG = "training-curves.png"

PLOTTED = ("loss", "evalLoss", "auxLoss", "learningRate", "gradNorm")
"""The keys of a metrics.jsonl record the chart draws."""
LOSS, LEARNING_RATE, GRADIENT_NORM = "loss", "learning rate", "gradient norm"


def series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that have ``key``."""
    pairs = [(int(record["step"]), float(record[key])) for record in records if record.get(key) is not None]
    return [step for step, _ in pairs], [value for _, value in pairs]


def smoothing_window(count: int) -> int:
    """Points in the smoothed loss's window: about a tenth of ``count``, odd, at least 3."""
    return 2 * max(1, count // 20) + 1


def smoothed(values: Sequence[float]) -> list[float]:
    """The centred moving average of ``values`` over ``smoothing_window`` points, the window
    narrowing towards the ends (the first and last points are their own): it follows the trend
    without lagging behind it, as a trailing average would."""
    count, half = len(values), smoothing_window(len(values)) // 2
    sums = list(itertools.accumulate(values, initial=0.0))
    out = []
    for index in range(count):
        reach = min(half, index, count - 1 - index)
        out.append((sums[index + reach + 1] - sums[index - reach]) / (2 * reach + 1))
    return out


def panels(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The panels a chart of ``records`` has: the loss always, the others when logged."""
    logged = [(LEARNING_RATE, "learningRate"), (GRADIENT_NORM, "gradNorm")]
    return [LOSS, *(name for name, key in logged if any(record.get(key) is not None for record in records))]


def digest(records: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the numbers the chart plots (step and the ``PLOTTED`` keys of each record)."""
    plotted = [
        {"step": record["step"], **{key: record[key] for key in PLOTTED if record.get(key) is not None}}
        for record in records
    ]
    return hashlib.sha256(json.dumps(plotted, sort_keys=True).encode()).hexdigest()


def title(wire: Mapping[str, Any] | None, fallback: str) -> str:
    """``<run name> · <model> (<method>)`` from a train.yaml in its wire form, else ``fallback``."""
    if not wire:
        return fallback
    run, model, method = (wire.get(section) or {} for section in ("run", "model", "method"))
    name = f"{run.get('name', fallback)} · {model.get('name', '?')}"
    return f"{name} ({method['type']})" if method.get("type") else name


def _marker(steps: Sequence[int]) -> str | None:
    return "o" if len(steps) < 3 else None  # a line of one or two points hardly shows


def _loss_panel(axes: Any, records: Sequence[Mapping[str, Any]]) -> None:
    steps, losses = series(records, "loss")
    if steps:
        axes.plot(steps, losses, color="tab:blue", alpha=0.35, linewidth=1, marker=_marker(steps), label="training")
        if len(steps) >= 3:
            label = f"training, mean of {smoothing_window(len(steps))} logged steps"
            axes.plot(steps, smoothed(losses), color="tab:blue", linewidth=2, label=label)
    eval_steps, eval_losses = series(records, "evalLoss")
    if eval_steps:
        axes.plot(eval_steps, eval_losses, color="tab:orange", marker="o", linewidth=2, label="held-out")
    aux_steps, aux_losses = series(records, "auxLoss")
    if aux_steps:
        axes.plot(aux_steps, aux_losses, color="tab:green", linestyle="--", label="router load balancing (unweighted)")
    axes.set_ylabel("loss (cross-entropy, nats per token)")
    if steps or eval_steps:
        axes.legend(loc="upper right")
    else:
        axes.text(0.5, 0.5, "no loss logged yet", transform=axes.transAxes, ha="center", va="center")


def _line_panel(axes: Any, records: Sequence[Mapping[str, Any]], key: str, label: str, colour: str) -> None:
    steps, values = series(records, key)
    axes.plot(steps, values, color=colour, linewidth=1.5, marker=_marker(steps))
    axes.set_ylabel(label)


def _subtitle(records: Sequence[Mapping[str, Any]]) -> str:
    steps, losses = series(records, "loss")
    _, eval_losses = series(records, "evalLoss")
    count = len(records)
    parts = [f"{count} record{'s' * (count != 1)}, last step {max((int(r['step']) for r in records), default=0)}"]
    if losses:
        parts.append(f"training loss {losses[0]:.4g} → {losses[-1]:.4g}")
    if eval_losses:
        parts.append(f"held-out loss {eval_losses[-1]:.4g}")
    return ", ".join(parts)


def _chart(records: Sequence[Mapping[str, Any]], heading: str) -> tuple[Figure, dict[str, str]]:
    """The figure of the curves (``charts.WIDTH`` × ``charts.HEIGHT`` whatever the panels) and
    the PNG text chunks that say what it shows."""
    names = panels(records)
    chart = charts.figure(charts.WIDTH, charts.HEIGHT)
    chart.suptitle(f"{heading}\n{_subtitle(records)}", fontsize=12)
    ratios = [2, *([1] * (len(names) - 1))]
    grid = chart.subplots(len(names), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": ratios})
    axes = dict(zip(names, grid[:, 0], strict=True))
    _loss_panel(axes[LOSS], records)
    if LEARNING_RATE in axes:
        _line_panel(axes[LEARNING_RATE], records, "learningRate", "learning rate", "tab:purple")
    if GRADIENT_NORM in axes:
        _line_panel(axes[GRADIENT_NORM], records, "gradNorm", "gradient norm (L2)", "tab:red")
    for panel in axes.values():
        panel.grid(True, alpha=0.3)
        panel.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    grid[-1, 0].set_xlabel("optimizer step")
    grid[-1, 0].xaxis.get_major_locator().set_params(integer=True)
    steps = [int(record["step"]) for record in records]
    if steps and max(steps) - min(steps) < 2:  # else matplotlib spans a tenth of a step around one point
        grid[-1, 0].set_xlim(min(steps) - 1, max(steps) + 1)
    chart.align_ylabels()
    return chart, {"Title": heading, "Panels": ",".join(names), "Metrics": digest(records)}


def draw(records: Sequence[Mapping[str, Any]], heading: str) -> bytes:
    """The curves of ``records`` under ``heading``, as PNG bytes (the same for the same input)."""
    return charts.png_bytes(*_chart(records, heading))


def read_records(text: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file's text. Raises ValueError naming the line of one that is
    not a JSON object with a step."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"line {number}: not JSON: {error}") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"line {number}: not a metrics record (a JSON object with an integer step)")
        records.append(record)
    return records


def write(folder: Path, records: Sequence[Mapping[str, Any]], heading: str) -> Path:
    """Draw the curves into ``folder/training-curves.png``."""
    chart, text = _chart(records, heading)
    return charts.write_png(chart, folder / CURVES_PNG, text)


def _recorded_config(storage: Storage, run_uri: str) -> Mapping[str, Any] | None:
    """The train.yaml (wire form) that the newest complete checkpoint of a run folder
    ``<output>/runs/<uid>`` records in its manifest, if the run has one."""
    parts = run_uri.rsplit("/", 2)
    if len(parts) != 3 or parts[1] != "runs":
        return None
    root, _, uid = parts
    from internvl_trainer.train import checkpoints  # imports torch: only where a run is redrawn

    found = checkpoints.latest(storage, OutputLayout.under(root, uid))
    manifest = read_manifest(storage, parse(f"{found.uri}/{MANIFEST_NAME}")) if found is not None else None
    return manifest.producer if manifest is not None else None


def redraw(storage: Storage, run_uri: str, folder: Path, wire: Mapping[str, Any] | None = None) -> Path:
    """The curves of the run folder ``run_uri`` (local or S3) from its metrics.jsonl, into ``folder``;
    headed by ``wire`` (a train.yaml), else the one its newest checkpoint records, else the folder's
    name. Raises BadInput when the folder has no readable metrics.jsonl."""
    run_uri = run_uri.rstrip("/")
    metrics = f"{run_uri}/metrics.jsonl"
    try:
        records = read_records(storage.read_bytes(metrics).decode("utf-8"))
    except ObjectNotFound:
        reason = "not found: RUN_URI must be a run's folder (<output.uri>/runs/<uid>), which holds metrics.jsonl"
        raise BadInput([Problem(metrics, reason)]) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise BadInput([Problem(metrics, str(error))]) from None
    heading = title(wire or _recorded_config(storage, run_uri), run_uri.rsplit("/", 1)[-1])
    return write(folder, records, heading)

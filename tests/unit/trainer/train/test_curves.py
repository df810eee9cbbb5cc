"""The training curves: panels for what was logged, the same PNG from the same records and another
from other numbers, the smoothing, the title, and ``internvl-train plot`` on a local run folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from internvl_trainer.cli import main
from internvl_trainer.train import curves


def logged(steps: int = 6, *, grad_norm: bool = True, evaluated: tuple[int, ...] = (3, 6)) -> list[dict]:
    """Records as ProgressCallback writes them: one per step, one more per evaluation."""
    records = []
    for step in range(1, steps + 1):
        record = {"step": step, "epoch": step / 4, "loss": 4.0 / step, "learningRate": 1e-4 * step, "time": 1e9 + step}
        if grad_norm:
            record["gradNorm"] = 2.0 / step
        records.append(record)
        if step in evaluated:
            records.append({"step": step, "epoch": step / 4, "evalLoss": 5.0 / step, "time": 2e9 + step})
    return records


def chart(records: list[dict], heading: str = "run · InternVL3-1B (lora)") -> Image.Image:
    image = Image.open(io.BytesIO(curves.draw(records, heading)))
    image.load()
    return image


def test_the_chart_is_a_png_of_fixed_size_naming_its_panels_and_numbers():
    records = logged()
    image = chart(records)
    assert (image.format, image.size) == ("PNG", (1200, 900))
    assert image.text == {
        "Title": "run · InternVL3-1B (lora)",
        "Panels": "loss,learning rate,gradient norm",
        "Metrics": curves.digest(records),
    }
    assert len(image.convert("RGB").getcolors(1 << 16)) > 50  # lines, labels, legend


@pytest.mark.parametrize(
    ("records", "panels"),
    [
        (logged(grad_norm=False), "loss,learning rate"),
        (logged(evaluated=()), "loss,learning rate,gradient norm"),
        ([{"step": 1, "loss": 3.0}], "loss"),
        ([{"step": 3, "evalLoss": 2.0}], "loss"),
        ([], "loss"),
    ],
    ids=["no-grad-norm", "no-eval", "one-record", "eval-only", "none"],
)
def test_panels_follow_what_was_logged(records, panels):
    image = chart(records)
    assert image.size == (1200, 900) and image.text["Panels"] == panels


def test_same_records_same_bytes_other_numbers_other_bytes():
    records = logged()
    assert curves.draw(records, "a") == curves.draw(json.loads(json.dumps(records)), "a")
    changed = logged()
    changed[-1]["evalLoss"] += 0.25
    assert curves.digest(changed) != curves.digest(records)
    assert curves.draw(changed, "a") != curves.draw(records, "a")
    # What is not plotted (the time of a record) changes neither the digest nor the picture.
    timed = [{**record, "time": 0.0} for record in records]
    assert curves.digest(timed) == curves.digest(records)
    assert curves.draw(timed, "a") == curves.draw(records, "a")


def test_smoothing_is_a_centred_moving_average():
    assert curves.smoothed([2.0]) == [2.0]
    assert curves.smoothed([0.0, 3.0, 0.0, 3.0]) == pytest.approx([0.0, 1.0, 2.0, 3.0])
    assert [curves.smoothing_window(count) for count in (3, 39, 40, 1000)] == [3, 3, 5, 101]
    line = [float(step) for step in range(100)]
    assert curves.smoothed(line) == pytest.approx(line)  # no lag behind a trend
    assert curves.smoothed([5.0] * 7) == pytest.approx([5.0] * 7)


def test_title_from_a_train_yaml_else_the_fallback():
    wire = {"run": {"name": "charts"}, "model": {"name": "InternVL3-8B"}, "method": {"type": "lora"}}
    assert curves.title(wire, "uid-1") == "charts · InternVL3-8B (lora)"
    assert curves.title(None, "uid-1") == "uid-1"


def test_read_records_names_the_bad_line():
    assert curves.read_records('{"step": 1, "loss": 2.0}\n\n{"step": 2}\n') == [{"step": 1, "loss": 2.0}, {"step": 2}]
    with pytest.raises(ValueError, match="line 2: not JSON"):
        curves.read_records('{"step": 1}\n{"step": \n')
    with pytest.raises(ValueError, match="line 1: not a metrics record"):
        curves.read_records('{"loss": 1}\n')


def write_run(folder: Path, records: list[dict]) -> Path:
    run = folder / "runs" / "uid-9"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return run


def test_plot_redraws_a_local_run_folder(tmp_path, capsys):
    records = logged()
    run = write_run(tmp_path / "out", records)
    assert main(["plot", str(run), "--output", str(tmp_path / "plots")]) == 0
    png = tmp_path / "plots" / curves.CURVES_PNG
    assert capsys.readouterr().out == f"{png}\n"
    # No checkpoint records the run's train.yaml: the title is the run folder's name.
    assert png.read_bytes() == curves.draw(records, "uid-9")


def test_plot_of_a_folder_without_metrics_is_bad_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty"), "--output", str(tmp_path / "plots")]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'empty'}/metrics.jsonl: not found" in error
    assert not (tmp_path / "plots").exists()
    run = write_run(tmp_path / "out", [])
    (run / "metrics.jsonl").write_text("not json\n")
    assert main(["plot", str(run)]) == 2
    assert f"{run}/metrics.jsonl: line 1: not JSON" in capsys.readouterr().err

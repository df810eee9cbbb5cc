"""`make demo` runs the whole product: checks, local S3, data, tiny model, plan, render, a real
training run through torchrun, merge and upload, and a summary."""

import re

import pytest
from PIL import Image

from examples import demo
from internvl_trainer.train import curves
from tests.conftest import REPO

pytestmark = pytest.mark.integration

THIRD_PARTY_WARNING = re.compile(r"\b[A-Z]\w*Warning\b|^\s+warnings\.warn\(|\[WARNING\]|^[WE]\d{4} \d\d:\d\d")
"""A warning in the output: its category (``file.py:N: FutureWarning: ...`` as warnings.warn
prints it, or as a log line), the source line printed under it, DeepSpeed's ``[WARNING]``, torch's
``W1206 22:26:09`` prefix."""


def warning_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if THIRD_PARTY_WARNING.search(line)]


def test_the_demo_runs_end_to_end(capfd, monkeypatch):
    monkeypatch.chdir(REPO)
    # The session's S3 fixture exports its credentials; SeaweedFS would take them as its own identities.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert demo.main() == 0
    out, err = capfd.readouterr()  # the training processes' output too
    assert warning_lines(out + err) == []
    assert out.count("\n== ") == len(demo.CHECKS) + 6
    assert "manifest:     s3://demo/finetuned/demo-shapes/manifest.json (exists: True)" in out
    assert "bad samples skipped: 0 (by kind: none)" in out
    assert "    generated: " in out
    assert "demo finished in" in out
    assert (REPO / "demo-out" / "manifests" / "train.yaml").exists()
    curves_png = REPO / "demo-out" / curves.CURVES_PNG
    assert f"  training curves: demo-out/{curves.CURVES_PNG}" in out
    # A real chart of this run: its size, every panel, and drawn from the run's own numbers (the
    # metrics.jsonl downloaded beside it, which redrawn gives the very same PNG).
    records = curves.read_records((REPO / "demo-out" / "metrics.jsonl").read_text())
    assert [record["step"] for record in records if "loss" in record] == [5, 10, 15, 20, 25, 30]
    assert any("evalLoss" in record for record in records)
    with Image.open(curves_png) as image:
        assert (image.format, image.size) == ("PNG", (1200, 900))
        assert image.text == {
            "Title": "demo-shapes · InternVL3-1B (lora)",
            "Panels": "loss,learning rate,gradient norm",
            "Metrics": curves.digest(records),
        }
    assert curves_png.read_bytes() == curves.draw(records, "demo-shapes · InternVL3-1B (lora)")

"""`make demo` runs the whole product: checks, local S3, data, tiny model, plan, render, a real
training run through torchrun, merge and upload, and a summary."""

import pytest

from examples import demo
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_the_demo_runs_end_to_end(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    # The session's S3 fixture exports its credentials; SeaweedFS would take them as its own identities.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert out.count("\n== ") == len(demo.CHECKS) + 6
    assert "manifest:     s3://demo/finetuned/demo-shapes/manifest.json (exists: True)" in out
    assert "bad samples skipped: 0 (by kind: none)" in out
    assert "    generated: " in out
    assert "demo finished in" in out
    assert (REPO / "demo-out" / "manifests" / "train.yaml").exists()
    assert (REPO / "demo-out" / "loss.png").exists()

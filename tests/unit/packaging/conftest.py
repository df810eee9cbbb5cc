"""Shared helpers of the packaging tests: the helm binary that `make helm` fetches, and rendering."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from internvl_operator.generators import manifests
from tests.conftest import REPO

CHART = REPO / manifests.CHART
HELM = REPO / ".cache" / "bin" / "helm"
KUBERNETES_VERSION = manifests.KUBERNETES_VERSION


@pytest.fixture(scope="session")
def helm() -> Path:
    """The pinned helm binary. Missing, it is a failure, not a skip: `make test` fetches it first."""
    if not HELM.is_file():
        pytest.fail(f"helm is not at {HELM.relative_to(REPO)}: run `make helm` (`make test` does it first)")
    return HELM


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60)


def render(helm: Path, values: dict[str, Any] | None = None, *args: str, tmp_path: Path | None = None) -> list[dict]:
    """The chart's objects with the given values (written to a file, as a user would)."""
    extra = list(args)
    if values is not None:
        assert tmp_path is not None
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        extra += ["--values", str(path)]
    return manifests.helm_template(helm, CHART, *extra)


def by_kind(documents: list[dict], kind: str) -> list[dict]:
    return [document for document in documents if document["kind"] == kind]


def one(documents: list[dict], kind: str) -> dict:
    [document] = by_kind(documents, kind)
    return document

"""config/: kustomize bases rendered from the chart, fresh, and accepted by kubectl kustomize."""

from __future__ import annotations

import os
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from internvl_operator.generators import manifests
from tests.conftest import REPO
from tests.unit.packaging.conftest import KUBERNETES_VERSION

CONFIG = REPO / manifests.CONFIG


def kubectl() -> str:
    """The kubectl `make helm` fetches beside helm, else one on PATH, else a skip: the rendering
    is also checked without it, by the freshness test."""
    fetched = REPO / ".cache" / "bin" / "kubectl"
    if fetched.is_file():
        return str(fetched)
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("no kubectl (neither .cache/bin/kubectl from `make helm` nor one on PATH) to run kustomize")
    return found


def kustomize(directory) -> list[dict]:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def test_config_is_fresh(helm):
    expected = manifests.kustomize_bases(helm)
    on_disk = {path.relative_to(REPO): path.read_text() for path in CONFIG.rglob("*") if path.is_file()}
    assert sorted(on_disk) == sorted(expected), "config/ has missing or extra files: run `make manifests`"
    stale = [str(path) for path, text in expected.items() if on_disk[path] != text]
    assert stale == [], "config/ is stale: run `make manifests`"


def test_default_renders_and_every_object_is_valid():
    documents = kustomize(CONFIG / "default")
    kinds = sorted(document["kind"] for document in documents)
    assert kinds == sorted(
        ["Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"]
    )
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        labels = document["metadata"].get("labels", {})
        assert "helm.sh/chart" not in labels
        assert labels.get("app.kubernetes.io/managed-by") == "kustomize"
        assert not any(key.startswith("helm.sh/") for key in document["metadata"].get("annotations", {}))
    [namespace] = [document for document in documents if document["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for document in documents:
        if document["kind"] in ("ServiceAccount", "Deployment"):
            assert document["metadata"]["namespace"] == manifests.NAMESPACE


def test_an_overlay_moves_everything_to_its_namespace(tmp_path):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(CONFIG / "default", overlay)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({"namespace": "ml-ops", "resources": [base]}))
    documents = {document["kind"]: document for document in kustomize(overlay)}
    assert documents["Namespace"]["metadata"]["name"] == "ml-ops"
    assert documents["Deployment"]["metadata"]["namespace"] == "ml-ops"
    assert documents["ClusterRoleBinding"]["subjects"][0]["namespace"] == "ml-ops"

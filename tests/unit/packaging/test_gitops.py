"""docs/gitops.md: its Argo CD health check, run with Lua 5.1 (Argo CD's) against InternVLFinetunes
in every state, and its Application and HelmRelease examples, rendered with the real chart."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import kubernetes_validate
import pytest
import yaml
from lupa import lua51

from internvl_operator import conditions as cond
from tests.conftest import REPO, load_example
from tests.unit.packaging.conftest import KUBERNETES_VERSION, render

GITOPS = (REPO / "docs" / "gitops.md").read_text()
HEALTH_KEY = "resource.customizations.health.internvl.dev_InternVLFinetune"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def yaml_blocks() -> list[dict]:
    documents = []
    for block in re.findall(r"```yaml\n(.*?)```", GITOPS, re.DOTALL):
        documents += [document for document in yaml.safe_load_all(block) if document]
    return documents


def examples(kind: str) -> list[dict]:
    return [document for document in yaml_blocks() if document.get("kind") == kind]


def health_script() -> str:
    [config_map] = [d for d in examples("ConfigMap") if d["metadata"]["name"] == "argocd-cm"]
    return config_map["data"][HEALTH_KEY]


def health(obj: dict) -> dict:
    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(health_script())
    return dict(result)


def finetune(*changes: tuple[str, str, str, str], suspend: bool = False, status: bool = True) -> dict:
    """The lora example as the operator leaves it: conditions first all Unknown, then changed."""
    obj = load_example("lora-internvl3-8b.yaml")
    obj["metadata"]["generation"] = 1
    if suspend:
        obj["spec"]["suspend"] = True
    if status:
        conditions = cond.initial(1, NOW)
        for type_, state, reason, message in changes:
            conditions = cond.set_condition(conditions, type_, state, reason, message, generation=1, now=NOW)
        obj["status"] = {"conditions": conditions}
    return obj


PLANNED = (cond.VALID, "True", "Planned", "1 x 1 GPUs, ZeRO-2")
CREATED = (cond.JOB_CREATED, "True", "Created", "PyTorchJob charts-lora-a1")
RUNNING = (cond.RUNNING, "True", "Running", "step 40 of 100")


@pytest.mark.parametrize(
    ("obj", "status", "message"),
    [
        (finetune(status=False), "Progressing", "Waiting for the operator"),
        (finetune(), "Progressing", "Waiting for the operator"),
        (finetune(PLANNED), "Progressing", "Planned: 1 x 1 GPUs, ZeRO-2"),
        (finetune(PLANNED, CREATED), "Progressing", "Created: PyTorchJob charts-lora-a1"),
        (finetune(PLANNED, CREATED, RUNNING), "Progressing", "Running: step 40 of 100"),
        (
            finetune(PLANNED, CREATED, (cond.SUCCEEDED, "True", "Succeeded", "published s3://models/x")),
            "Healthy",
            "Succeeded: published s3://models/x",
        ),
        (
            finetune(PLANNED, CREATED, (cond.FAILED, "True", "BackoffLimitExceeded", "attempt 3: OOM")),
            "Degraded",
            "BackoffLimitExceeded: attempt 3: OOM",
        ),
        (
            finetune((cond.VALID, "False", "InvalidSpec", "spec.model.name: unknown model")),
            "Degraded",
            "InvalidSpec: spec.model.name: unknown model",
        ),
        (
            finetune(PLANNED, CREATED, (cond.SUSPENDED, "True", "Suspended", "")),
            "Suspended",
            "Suspended",
        ),
        (finetune(suspend=True, status=False), "Suspended", "spec.suspend is true"),
        (finetune(PLANNED, suspend=True), "Suspended", "spec.suspend is true"),
        (
            finetune(PLANNED, (cond.SUCCEEDED, "True", "Succeeded", ""), suspend=True),
            "Healthy",
            "Succeeded",
        ),
    ],
    ids=[
        "new",
        "seen",
        "planned",
        "job-created",
        "running",
        "succeeded",
        "failed",
        "invalid",
        "suspended",
        "suspend-requested",
        "suspend-requested-after-planning",
        "succeeded-then-suspended",
    ],
)
def test_argocd_health_check(obj, status, message):
    assert health(obj) == {"status": status, "message": message}


def test_health_check_reads_only_the_operators_condition_types():
    named = set(re.findall(r'holds\("(\w+)"', health_script()))
    assert named <= set(cond.TYPES)
    assert {cond.SUCCEEDED, cond.FAILED, cond.SUSPENDED} <= named


def test_argocd_applications_point_at_the_chart_and_the_kustomize_base(helm, tmp_path):
    applications = examples("Application")
    assert {application["spec"]["source"]["path"] for application in applications} == {
        "charts/internvl-operator",
        "config/default",
    }
    for application in applications:
        assert "ServerSideApply=true" in application["spec"]["syncPolicy"]["syncOptions"]
        assert (REPO / application["spec"]["source"]["path"]).is_dir()
    [chart] = [a for a in applications if "helm" in a["spec"]["source"]]
    documents = render(helm, chart["spec"]["source"]["helm"]["valuesObject"], tmp_path=tmp_path)
    for document in documents:
        if document["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_flux_helm_release_renders_with_its_values(helm, tmp_path):
    [release] = examples("HelmRelease")
    [source] = examples("GitRepository")
    spec = release["spec"]["chart"]["spec"]
    assert spec["sourceRef"] == {
        "kind": "GitRepository",
        "name": source["metadata"]["name"],
        "namespace": source["metadata"]["namespace"],
    }
    assert (REPO / spec["chart"]).is_dir()
    assert release["spec"]["install"]["crds"] == release["spec"]["upgrade"]["crds"] == "CreateReplace"
    documents = render(helm, release["spec"]["values"], tmp_path=tmp_path)
    assert {document["kind"] for document in documents} >= {"CustomResourceDefinition", "Deployment"}


def test_docs_apply_the_crd_server_side():
    assert "kubectl apply --server-side -f crds/internvl.dev_internvlfinetunes.yaml" in GITOPS
    assert "kubectl apply --server-side -k config/default" in GITOPS

"""The operator on a real cluster: children and owner references, conditions, pod-level causes or
a played training operator, `kubectl wait`, and garbage collection on delete."""

from __future__ import annotations

import pytest

from internvl_operator.cluster import ApiError
from tests.e2e.conftest import E2ECluster, example, job_succeeded

pytestmark = pytest.mark.e2e

FINETUNE = "internvl.dev/v1alpha1"


def conditions_of(e2e: E2ECluster, name: str) -> dict[str, dict]:
    obj = e2e.client.get(FINETUNE, "InternVLFinetune", e2e.namespace, name) or {}
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def condition_is(e2e: E2ECluster, name: str, type_: str, status: str = "True") -> bool:
    return conditions_of(e2e, name).get(type_, {}).get("status") == status


def test_a_lora_run_from_apply_to_delete(e2e: E2ECluster):
    obj = example("lora-internvl3-8b.yaml", e2e.namespace)
    created = e2e.client.create(obj)
    uid = created["metadata"]["uid"]
    job = e2e.wait_for(lambda: e2e.client.get("kubeflow.org/v1", "PyTorchJob", e2e.namespace, "charts-lora-a1"), "job")
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    for kind, name in [("ConfigMap", "charts-lora-a1-train"), ("ServiceAccount", "charts-lora-trainer")]:
        child = e2e.client.get("v1", kind, e2e.namespace, name)
        assert child is not None and child["metadata"]["ownerReferences"][0]["uid"] == uid
    e2e.wait_for(lambda: condition_is(e2e, "charts-lora", "JobCreated"), "JobCreated")
    assert conditions_of(e2e, "charts-lora")["Valid"]["reason"] == "Planned"

    if e2e.play_training_operator:
        status = {"conditions": [job_succeeded()]}
        e2e.client.patch(
            "kubeflow.org/v1", "PyTorchJob", e2e.namespace, "charts-lora-a1", {"status": status}, subresource="status"
        )
        waited = e2e.kubectl("wait", "--for=condition=Succeeded", "internvlfinetune/charts-lora", "--timeout=120s")
        assert waited.returncode == 0, waited.stderr
    else:
        # A real training operator creates pods that ask for GPUs this cluster may not have: the
        # reason then shows on the object, not only on the pods.
        e2e.wait_for(
            lambda: (
                conditions_of(e2e, "charts-lora").get("Running", {}).get("reason")
                in ("Unschedulable", "JobRunning", "JobPending", "ImagePullBackOff", "ErrImagePull")
            ),
            "a Running condition with a reason",
        )

    e2e.client.delete(FINETUNE, "InternVLFinetune", e2e.namespace, "charts-lora")
    e2e.wait_for(
        lambda: e2e.client.get("kubeflow.org/v1", "PyTorchJob", e2e.namespace, "charts-lora-a1") is None,
        "the job to be garbage-collected",
    )
    assert e2e.client.get("v1", "ConfigMap", e2e.namespace, "charts-lora-a1-train") is None


def test_an_invalid_object_is_refused_by_the_api_server(e2e: E2ECluster):
    obj = example("lora-internvl3-8b.yaml", e2e.namespace)
    obj["metadata"]["name"] = "refused"
    obj["spec"]["resources"] = {"gpus": 12, "gpusPerNode": 8}
    with pytest.raises(ApiError) as refused:
        e2e.client.create(obj)
    assert refused.value.status == 422
    assert "gpus must fit on one node or be a multiple of gpusPerNode" in str(refused.value)


def test_immutable_fields_cannot_change(e2e: E2ECluster):
    obj = example("queued-lora-internvl3-2b.yaml", e2e.namespace)
    e2e.client.create(obj)
    with pytest.raises(ApiError) as refused:
        e2e.client.patch(
            FINETUNE, "InternVLFinetune", e2e.namespace, "memes-lora-2b", {"spec": {"model": {"name": "InternVL3-8B"}}}
        )
    assert "model is immutable" in str(refused.value)
    e2e.client.patch(FINETUNE, "InternVLFinetune", e2e.namespace, "memes-lora-2b", {"spec": {"suspend": True}})
    e2e.client.delete(FINETUNE, "InternVLFinetune", e2e.namespace, "memes-lora-2b")

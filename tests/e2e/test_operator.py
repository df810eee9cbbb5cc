"""The operator on a real cluster beyond a run (tests/e2e/test_launchers.py runs one on each
launcher): the API server refusing an invalid object and a change of an immutable field; a child
the API server refuses and a name taken by someone else shown in the status with an event; a
status forged as the trainer could forge it, reverted. Where a test reaches the job, the object
names its launcher: PyTorchJob."""

from __future__ import annotations

import pytest

from internvl_operator.cluster import ApiError
from tests.e2e.conftest import FINETUNE, E2ECluster, condition_is, conditions_of, example, named

pytestmark = pytest.mark.e2e

LAUNCHER = "pytorchjob"


def event_of(e2e: E2ECluster, name: str, reason: str) -> dict | None:
    """An event about the object with this reason, if one was posted."""
    for event in e2e.client.list("v1", "Event", e2e.namespace, {}):
        if event["involvedObject"].get("name") == name and event.get("reason") == reason:
            return event
    return None


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


def test_a_taken_child_name_is_a_conflict_and_nothing_is_adopted(e2e: E2ECluster):
    planted = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "planted-a1-train", "namespace": e2e.namespace},
        "data": {"train.yaml": "output: {uri: s3://someone-else/}"},
    }
    launcher = e2e.launcher(LAUNCHER)
    e2e.client.create(planted)
    e2e.client.create(named("lora-internvl3-8b.yaml", e2e, "planted", LAUNCHER))
    e2e.wait_for(lambda: condition_is(e2e, "planted", "JobCreated", "False", "NameConflict"), "NameConflict")
    message = conditions_of(e2e, "planted")["JobCreated"]["message"]
    assert message.startswith("ConfigMap planted-a1-train exists and is not owned by this InternVLFinetune")
    e2e.wait_for(lambda: event_of(e2e, "planted", "NameConflict"), "a NameConflict event")
    assert e2e.client.get(launcher.api_version, launcher.kind, e2e.namespace, "planted-a1") is None
    kept = e2e.client.get("v1", "ConfigMap", e2e.namespace, "planted-a1-train")
    assert kept["data"] == planted["data"] and not kept["metadata"].get("ownerReferences")
    e2e.client.delete(FINETUNE, "InternVLFinetune", e2e.namespace, "planted")
    e2e.client.delete("v1", "ConfigMap", e2e.namespace, "planted-a1-train")


def test_a_child_the_api_server_refuses_shows_in_the_status(e2e: E2ECluster):
    # A quota of no jobs of the kind: the API server's ResourceQuota admission refuses the job (403).
    launcher = e2e.launcher(LAUNCHER)
    quota_name = f"no-{launcher.plural}"
    quota = e2e.kubectl("create", "quota", quota_name, f"--hard=count/{launcher.crd}=0")
    assert quota.returncode == 0, quota.stderr
    try:
        e2e.client.create(named("lora-internvl3-8b.yaml", e2e, "refused-job", LAUNCHER))
        e2e.wait_for(lambda: condition_is(e2e, "refused-job", "JobCreated", "False", "CreateRefused"), "refusal")
        message = conditions_of(e2e, "refused-job")["JobCreated"]["message"]
        assert message.startswith(f"the API server refused {launcher.kind} refused-job-a1 (HTTP 403): ")
        assert quota_name in message
        e2e.wait_for(lambda: event_of(e2e, "refused-job", "CreateRefused"), "a CreateRefused event")
        assert e2e.client.get(launcher.api_version, launcher.kind, e2e.namespace, "refused-job-a1") is None
    finally:
        e2e.kubectl("delete", "quota", quota_name)
        e2e.client.delete(FINETUNE, "InternVLFinetune", e2e.namespace, "refused-job")


def test_a_status_forged_as_the_trainer_could_is_reverted(e2e: E2ECluster):
    launcher = e2e.launcher(LAUNCHER)
    e2e.client.create(named("lora-internvl3-8b.yaml", e2e, "forged", LAUNCHER))
    e2e.wait_for(lambda: condition_is(e2e, "forged", "JobCreated"), "JobCreated")
    forged = {
        "conditions": [
            {
                "type": "Succeeded",
                "status": "True",
                "reason": "JobSucceeded",
                "message": "forged",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
        "attempt": 5,
        "output": {"modelUri": "s3://someone-else/model"},
        "progress": {"step": 3, "totalSteps": 10},
    }
    # What the trainer's Role allows: a merge patch of the status subresource.
    e2e.client.patch(FINETUNE, "InternVLFinetune", e2e.namespace, "forged", {"status": forged}, subresource="status")

    def reverted() -> dict | None:
        status = e2e.client.get(FINETUNE, "InternVLFinetune", e2e.namespace, "forged")["status"]
        types = {c["type"]: c["status"] for c in status["conditions"]}
        honest = types.get("Succeeded") == "Unknown" and types.get("JobCreated") == "True"
        return status if honest and status.get("attempt") == 1 and "output" not in status else None

    status = e2e.wait_for(reverted, "the forged status reverted")
    assert status["progress"]["step"] == 3, "progress is the trainer's"
    assert e2e.client.get(launcher.api_version, launcher.kind, e2e.namespace, "forged-a5") is None
    e2e.client.delete(FINETUNE, "InternVLFinetune", e2e.namespace, "forged")

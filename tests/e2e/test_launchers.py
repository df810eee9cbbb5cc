"""Every launcher on a real cluster: the job of its kind with its children and owner references,
the conditions it leads to, `kubectl wait`, the output and garbage collection on delete; a failed
attempt restarted as the next one of the same kind; and what ``auto`` picks. Where the suite plays
a launcher's controller it writes the job's status as that controller would; where a real one
runs, the pods' fate shows instead (they ask for GPUs and an image this cluster may not have)."""

from __future__ import annotations

import json

import pytest

from internvl_operator.launchers import LAUNCHERS
from internvl_operator.record import RECORD_ANNOTATION
from internvl_operator.render.context import ATTEMPT_LABEL
from tests.e2e.conftest import FINETUNE, E2ECluster, condition_is, conditions_of, named, played_status

pytestmark = pytest.mark.e2e

EXAMPLE = "lora-internvl3-8b.yaml"


def finetune_of(e2e: E2ECluster, name: str) -> dict:
    return e2e.client.get(FINETUNE, "InternVLFinetune", e2e.namespace, name)


@pytest.mark.parametrize("launcher_name", list(LAUNCHERS))
def test_a_run_from_apply_to_delete(e2e: E2ECluster, launcher_name: str):
    launcher = e2e.launcher(launcher_name)
    name = f"run-{launcher_name}"
    uid = e2e.client.create(named(EXAMPLE, e2e, name, launcher_name))["metadata"]["uid"]
    job = e2e.wait_for(
        lambda: e2e.client.get(launcher.api_version, launcher.kind, e2e.namespace, f"{name}-a1"), launcher.kind
    )
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("InternVLFinetune", name, uid, True)
    for kind, child in [("ConfigMap", f"{name}-a1-train"), ("ServiceAccount", f"{name}-trainer")]:
        found = e2e.client.get("v1", kind, e2e.namespace, child)
        assert found is not None and found["metadata"]["ownerReferences"][0]["uid"] == uid
    e2e.wait_for(lambda: condition_is(e2e, name, "JobCreated"), "JobCreated")
    assert conditions_of(e2e, name)["Valid"]["reason"] == "Planned"
    reference = finetune_of(e2e, name)["status"]["job"]
    assert (reference["apiVersion"], reference["kind"], reference["uid"]) == (
        launcher.api_version,
        launcher.kind,
        job["metadata"]["uid"],
    )

    if launcher_name in e2e.played:
        e2e.play(launcher, f"{name}-a1", "running")
        e2e.wait_for(lambda: condition_is(e2e, name, "Running", reason="JobRunning"), "Running")
        e2e.play(launcher, f"{name}-a1", "succeeded")
        waited = e2e.kubectl("wait", "--for=condition=Succeeded", f"internvlfinetunes/{name}", "--timeout=120s")
        assert waited.returncode == 0, waited.stderr
        finished = finetune_of(e2e, name)
        assert finished["status"]["phase"] == "Succeeded"
        assert finished["status"]["output"] == {
            "modelUri": "s3://models/finetuned/charts-lora/model",
            "manifestUri": "s3://models/finetuned/charts-lora/manifest.json",
        }
        record = json.loads(finished["metadata"]["annotations"][RECORD_ANNOTATION])
        assert record["job"]["uid"] == job["metadata"]["uid"] and record["result"]["type"] == "Succeeded"
    else:
        # A real controller creates pods that ask for GPUs this cluster may not have: the reason
        # then shows on the object, not only on the pods.
        e2e.wait_for(
            lambda: (
                conditions_of(e2e, name).get("Running", {}).get("reason")
                in ("Unschedulable", "JobRunning", "JobPending", "ImagePullBackOff", "ErrImagePull")
            ),
            "a Running condition with a reason",
        )

    e2e.client.delete(FINETUNE, "InternVLFinetune", e2e.namespace, name)
    e2e.wait_for(
        lambda: e2e.client.get(launcher.api_version, launcher.kind, e2e.namespace, f"{name}-a1") is None,
        "the job to be garbage-collected",
    )
    assert e2e.client.get("v1", "ConfigMap", e2e.namespace, f"{name}-a1-train") is None


@pytest.mark.parametrize("launcher_name", list(LAUNCHERS))
def test_a_failed_attempt_restarts_as_the_next_job_of_the_same_kind(e2e: E2ECluster, launcher_name: str):
    launcher = e2e.launcher(launcher_name)
    if launcher_name not in e2e.played:
        pytest.skip(f"a real {launcher.kind} controller runs here: its jobs fail only on their own")
    name = f"restart-{launcher_name}"
    uid = e2e.client.create(named(EXAMPLE, e2e, name, launcher_name))["metadata"]["uid"]
    e2e.wait_for(lambda: condition_is(e2e, name, "JobCreated"), "JobCreated")
    e2e.play(launcher, f"{name}-a1", "failed")

    second = e2e.wait_for(
        lambda: e2e.client.get(launcher.api_version, launcher.kind, e2e.namespace, f"{name}-a2"), "attempt 2"
    )
    assert second["metadata"]["labels"][ATTEMPT_LABEL] == "2"
    assert second["metadata"]["ownerReferences"][0]["uid"] == uid
    e2e.wait_for(
        lambda: e2e.client.get(launcher.api_version, launcher.kind, e2e.namespace, f"{name}-a1") is None,
        "attempt 1 deleted",
    )

    def restarted() -> dict | None:
        status = finetune_of(e2e, name)["status"]
        return status if status.get("job", {}).get("name") == f"{name}-a2" else None

    status = e2e.wait_for(restarted, "the status naming attempt 2")
    assert status["attempt"] == 2 and status["job"]["kind"] == launcher.kind
    failed = played_status(launcher, "failed")["conditions"][-1]
    assert status["lastFailureReason"] == f"{failed['reason']}: {failed['message']}"
    assert not condition_is(e2e, name, "Failed"), "a restart is not the end of the run"
    e2e.client.delete(FINETUNE, "InternVLFinetune", e2e.namespace, name)


@pytest.mark.parametrize(
    ("spec", "picked"),
    [({}, "trainjob"), ({"ttlSecondsAfterFinished": 3600}, "pytorchjob")],
    ids=["trainjob-where-served", "pytorchjob-for-what-a-trainjob-cannot-carry"],
)
def test_auto_picks_the_launcher_from_the_served_crds(e2e: E2ECluster, spec: dict, picked: str):
    # The suite installed every launcher's CRD it could, so TrainJob is served.
    e2e.launcher("trainjob")
    launcher = e2e.launcher(picked)
    name = f"auto-{picked}"
    obj = named(EXAMPLE, e2e, name)
    obj["spec"].pop("launcher", None)
    obj["spec"].update(spec)
    e2e.client.create(obj)

    job = e2e.wait_for(
        lambda: e2e.client.get(launcher.api_version, launcher.kind, e2e.namespace, f"{name}-a1"), launcher.kind
    )
    e2e.wait_for(lambda: condition_is(e2e, name, "JobCreated"), "JobCreated")
    status = finetune_of(e2e, name)["status"]
    assert status["plan"]["launcher"] == picked
    assert (status["job"]["kind"], status["job"]["uid"]) == (launcher.kind, job["metadata"]["uid"])
    for other in LAUNCHERS.values():
        if other is not launcher and other.name not in e2e.unavailable:
            assert e2e.client.get(other.api_version, other.kind, e2e.namespace, f"{name}-a1") is None
    e2e.client.delete(FINETUNE, "InternVLFinetune", e2e.namespace, name)

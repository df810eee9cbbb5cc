"""One reconciliation from observation to actions, for every path, and its idempotence."""

import copy
from datetime import UTC, datetime

import pytest

from internvl_operator import conditions as cond
from internvl_operator.reconcile import SPEC_HASH_ANNOTATION, SUSPEND_ANNOTATION, Observed, reconcile, spec_hash
from internvl_operator.settings import OperatorSettings

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
UID = "7d9f3c2a-1b4e-4f6a-8c0d-2e5f7a9b1c3d"
SETTINGS = OperatorSettings()


@pytest.fixture
def body(lora_cr):
    lora_cr["metadata"].update({"uid": UID, "generation": 1})
    return lora_cr


def observe(body, job=None, pods=(), launcher_installed=True, queue_message=None):
    return reconcile(Observed(body, job, list(pods), launcher_installed, NOW, queue_message), SETTINGS)


def applied(body, actions):
    """The object after the handlers wrote the status patch."""
    updated = copy.deepcopy(body)
    updated["status"] = {**(body.get("status") or {}), **actions.status}
    return updated


def condition(status, type_):
    found = cond.find(status["conditions"], type_)
    return (found["status"], found["reason"])


def created_job(actions, *true_conditions, uid="job-uid-1"):
    job = copy.deepcopy(actions.create[-1])
    job["metadata"]["uid"] = uid
    job["status"] = {
        "conditions": [{"type": t, "status": "True", "reason": r, "message": m} for t, r, m in true_conditions]
    }
    return job


def test_a_new_object_gets_its_children_and_status(body):
    actions = observe(body)
    assert [c["kind"] for c in actions.create] == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "PyTorchJob"]
    job = actions.create[-1]
    assert job["metadata"]["name"] == "charts-lora-a1"
    assert job["metadata"]["annotations"] == {SPEC_HASH_ANNOTATION: spec_hash(body), SUSPEND_ANNOTATION: "false"}
    status = actions.status
    assert status["attempt"] == 1 and status["observedGeneration"] == 1
    assert status["job"] == {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "charts-lora-a1"}
    assert status["startTime"] == "2026-11-23T12:00:00Z"
    assert status["plan"]["gpus"] == 2 and status["plan"]["policy"] == "recipe"
    assert condition(status, "Valid") == ("True", "Planned")
    assert condition(status, "JobCreated") == ("True", "JobCreated")
    assert condition(status, "Succeeded") == ("Unknown", "Pending")
    assert status["phase"] == "Starting"
    assert [(kind, reason) for kind, reason, _ in actions.events] == [("Normal", "Planned"), ("Normal", "JobCreated")]


def test_reconciling_again_changes_nothing(body):
    first = observe(body)
    body = applied(body, first)
    again = observe(body)
    assert again.status == {} and again.events == []
    assert again.create == first.create, "children are re-sent and adopted, never duplicated"
    job = created_job(first)
    pending = observe(body, job)
    assert pending.create == [] and pending.delete_job is None and pending.job_patch is None
    body = applied(body, pending)
    assert observe(body, job).status == {}


def test_running_then_succeeded(body):
    first = observe(body)
    body = applied(body, first)
    running = observe(body, created_job(first, ("Running", "PyTorchJobRunning", "running")))
    assert condition(running.status, "Running") == ("True", "JobRunning")
    assert running.status["job"]["uid"] == "job-uid-1" and running.status["phase"] == "Running"
    body = applied(body, running)
    done = observe(body, created_job(first, ("Succeeded", "PyTorchJobSucceeded", "done")))
    assert condition(done.status, "Succeeded") == ("True", "JobSucceeded")
    assert condition(done.status, "Running") == ("False", "JobSucceeded")
    assert condition(done.status, "Failed") == ("False", "JobSucceeded")
    assert done.status["completionTime"] == "2026-11-23T12:00:00Z" and done.status["phase"] == "Succeeded"
    body = applied(body, done)
    assert observe(body, None).status == {} and observe(body, None).create == [], "a finished run stays finished"


def test_a_failure_starts_the_next_attempt(body):
    first = observe(body)
    body = applied(body, first)
    failed = observe(body, created_job(first, ("Failed", "PyTorchJobFailed", "1 Master replica(s) failed")))
    assert failed.delete_job == {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "charts-lora-a1"}
    assert failed.create[-1]["metadata"]["name"] == "charts-lora-a2"
    assert (
        failed.create[-1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"][
            "internvl.dev/attempt"
        ]
        == "2"
    )
    assert failed.status["attempt"] == 2
    assert failed.status["lastFailureReason"] == "PyTorchJobFailed: 1 Master replica(s) failed"
    assert ("Warning", "Restarting") in [(kind, reason) for kind, reason, _ in failed.events]
    assert condition(failed.status, "Failed") == ("Unknown", "Pending")


def test_no_restarts_left_fails_the_run(body):
    body["spec"]["maxRestarts"] = 1
    body["status"] = {"attempt": 2}
    first = observe(body)
    assert first.create[-1]["metadata"]["name"] == "charts-lora-a2"
    body = applied(body, first)
    failed = observe(body, created_job(first, ("Failed", "PyTorchJobFailed", "boom")))
    assert failed.delete_job is None and failed.create == []
    assert condition(failed.status, "Failed") == ("True", "PyTorchJobFailed")
    assert cond.find(failed.status["conditions"], "Failed")["message"] == "attempt 2: boom"
    assert failed.status["phase"] == "Failed"


def test_bad_input_in_the_trainer_is_not_retried(body):
    first = observe(body)
    body = applied(body, first)
    pod = {
        "metadata": {"name": "charts-lora-a1-master-0"},
        "status": {"containerStatuses": [{"name": "pytorch", "state": {"terminated": {"exitCode": 2}}}]},
    }
    failed = observe(body, created_job(first, ("Failed", "PyTorchJobFailed", "failed")), [pod])
    assert failed.delete_job is None
    assert condition(failed.status, "Failed") == ("True", "InvalidInput")


def test_an_invalid_spec_is_reported_not_raised(body):
    body["spec"]["method"] = {"type": "full", "lora": {"rank": 8}}
    body["spec"]["resources"] = {"gpus": 12}
    actions = observe(body)
    assert actions.create == []
    assert condition(actions.status, "Valid") == ("False", "InvalidSpec") and actions.status["phase"] == "Invalid"
    assert "spec.method" in cond.find(actions.status["conditions"], "Valid")["message"]


def test_a_missing_launcher_crd_is_reported(body):
    body["spec"]["launcher"] = "mpijob"
    actions = observe(body, launcher_installed=False)
    assert actions.create == []
    assert condition(actions.status, "Valid") == ("False", "LauncherNotInstalled")
    assert cond.find(actions.status["conditions"], "Valid")["message"].startswith(
        "MPIJob (kubeflow.org/v2beta1) is not served by this cluster: install the CRD mpijobs.kubeflow.org"
    )


def test_nothing_fits_is_reported(body):
    body["spec"]["model"]["name"] = "InternVL3-78B"
    body["spec"]["method"] = {"type": "full"}
    body["spec"]["resources"] = {"policy": "minimal", "gpuMemoryGiB": 8, "gpusPerNode": 1, "memory": "16Gi"}
    actions = observe(body)
    assert actions.create == []
    assert condition(actions.status, "Valid") == ("False", "NoFeasiblePlan")


def test_a_job_owned_by_something_else_is_a_conflict(body):
    first = observe(body)
    body = applied(body, first)
    foreign = created_job(first)
    foreign["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    actions = observe(body, foreign)
    assert actions.create == [] and actions.delete_job is None
    assert condition(actions.status, "JobCreated") == ("False", "NameConflict")


def test_suspend_is_written_only_when_spec_suspend_changes(body):
    first = observe(body)
    body = applied(body, first)
    job = created_job(first)
    body["spec"]["suspend"] = True
    assert observe(body, job).job_patch == {
        "metadata": {"annotations": {SUSPEND_ANNOTATION: "true"}},
        "spec": {"runPolicy": {"suspend": True}},
    }
    job["metadata"]["annotations"][SUSPEND_ANNOTATION] = "true"
    job["spec"]["runPolicy"]["suspend"] = True
    assert observe(body, job).job_patch is None
    body["spec"]["suspend"] = False
    assert observe(body, job).job_patch == {
        "metadata": {"annotations": {SUSPEND_ANNOTATION: "false"}},
        "spec": {"runPolicy": {"suspend": False}},
    }


def test_a_queued_job_is_never_unsuspended_here(body):
    body["spec"]["queueName"] = "team-a"
    first = observe(body)
    body = applied(body, first)
    job = created_job(first, ("Suspended", "PyTorchJobSuspended", "waiting for Kueue"))
    assert job["spec"]["runPolicy"]["suspend"] is True
    held = observe(body, job, queue_message="couldn't assign flavors to pod set master: insufficient quota")
    assert held.job_patch is None
    assert condition(held.status, "Suspended") == ("True", "PyTorchJobSuspended")
    assert cond.find(held.status["conditions"], "Suspended")["message"] == (
        "waiting for Kueue; couldn't assign flavors to pod set master: insufficient quota"
    )
    job["metadata"]["annotations"][SUSPEND_ANNOTATION] = "true"
    assert observe(body, job).job_patch == {"metadata": {"annotations": {SUSPEND_ANNOTATION: "false"}}}


def test_a_spec_change_under_a_job_is_reported_as_ignored(body):
    first = observe(body)
    body = applied(body, first)
    body["spec"]["training"] = {"learningRate": 1e-4}
    actions = observe(body, created_job(first))
    assert condition(actions.status, "Valid") == ("True", "SpecChangeIgnored")
    assert actions.create == []

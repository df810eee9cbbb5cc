"""One reconciliation from observation to actions, for every path, and its idempotence: refused
children, adoption by content, a status derived from the operator's record and never from what it
finds, and a safety net under everything."""

import copy
import hashlib
import logging
from datetime import UTC, datetime

import pytest
import yaml

from internvl_operator import conditions as cond
from internvl_operator import reconcile as reconciliation
from internvl_operator.api import InternVLFinetune
from internvl_operator.cli import main
from internvl_operator.launchers import LAUNCHERS
from internvl_operator.reconcile import Observed, Outcome, Refused, job_name, reconcile
from internvl_operator.record import RECORD_ANNOTATION, JobRecord, Record, read_record
from internvl_operator.render import spec_hash
from internvl_operator.render.content import content_hash
from internvl_operator.render.context import CONTENT_HASH_ANNOTATION, SPEC_HASH_ANNOTATION, SUSPEND_ANNOTATION
from internvl_operator.settings import OperatorSettings

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
UID = "7d9f3c2a-1b4e-4f6a-8c0d-2e5f7a9b1c3d"
SETTINGS = OperatorSettings()


@pytest.fixture
def body(lora_cr):
    """An object that names its launcher (the reconciliation of auto has tests of its own)."""
    lora_cr["metadata"].update({"uid": UID, "generation": 1})
    lora_cr["spec"]["launcher"] = "pytorchjob"
    return lora_cr


def observe(body, job=None, pods=(), served=frozenset(LAUNCHERS), queue_message=None, outcome=None):
    return reconcile(Observed(body, job, list(pods), served, NOW, queue_message, outcome), SETTINGS)


def applied(body, actions):
    """The object after the handlers wrote the record and the status patch (null removes)."""
    updated = copy.deepcopy(body)
    status = {**(body.get("status") or {}), **actions.status}
    updated["status"] = {key: value for key, value in status.items() if value is not None}
    if actions.record is not None:
        updated["metadata"].setdefault("annotations", {})[RECORD_ANNOTATION] = actions.record.to_annotation()
    return updated


def as_created(child, uid="job-uid-1"):
    """A child as the API server returns it from a create: with a uid."""
    created = copy.deepcopy(child)
    created["metadata"]["uid"] = uid
    return created


def act(body, job=None, pods=(), uid="job-uid-1", served=frozenset(LAUNCHERS)):
    """A reconciliation as the handlers carry it out: when it asks for children, they are created
    and the object is reconciled again with the created job. Returns the object after, the final
    actions and the children asked for."""
    actions = observe(body, job, pods, served=served)
    children = actions.create
    if children:
        actions = observe(body, job, pods, served=served, outcome=Outcome(job=as_created(children[-1], uid)))
    return applied(body, actions), actions, children


def condition(status, type_):
    found = cond.find(status["conditions"], type_)
    return (found["status"], found["reason"])


def with_conditions(job, *true_conditions):
    job = copy.deepcopy(job)
    job["status"] = {
        "conditions": [{"type": t, "status": "True", "reason": r, "message": m} for t, r, m in true_conditions]
    }
    return job


def started(body):
    """The object once its first job exists, and that job as the API server has it."""
    body, _, children = act(body)
    return body, as_created(children[-1])


def test_a_new_object_gets_its_children_and_status(body):
    actions = observe(body)
    assert [c["kind"] for c in actions.create] == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "PyTorchJob"]
    job = actions.create[-1]
    assert job["metadata"]["name"] == "charts-lora-a1"
    spec = InternVLFinetune.model_validate(body).spec
    assert job["metadata"]["annotations"] == {
        SPEC_HASH_ANNOTATION: spec_hash(spec),
        SUSPEND_ANNOTATION: "false",
        CONTENT_HASH_ANNOTATION: content_hash(job, LAUNCHERS["pytorchjob"].suspend_path),
    }
    assert actions.record.attempt == 1 and actions.record.job is None, "the attempt is recorded before creating"
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


def test_the_created_job_is_recorded_by_uid(body):
    after, actions, _ = act(body)
    assert actions.record.job.uid == "job-uid-1" and actions.record.attempt == 1
    assert actions.status["job"]["uid"] == "job-uid-1"
    assert read_record(after).job.name == "charts-lora-a1"


def test_reconciling_again_changes_nothing(body):
    body, job = started(body)
    pending = observe(body, job)
    assert pending.create == [] and pending.delete_job is None and pending.job_patch is None
    body = applied(body, pending)
    again = observe(body, job)
    assert again.status == {} and again.events == [] and again.record is None


def test_every_child_carries_its_content_hash_and_render_prints_what_reconcile_creates(body, tmp_path, capsys):
    creates = observe(body).create
    for child in creates:
        assert child["metadata"]["annotations"][CONTENT_HASH_ANNOTATION] == content_hash(
            child, LAUNCHERS["pytorchjob"].suspend_path
        )
    source = tmp_path / "object.yaml"
    source.write_text(yaml.safe_dump(body))
    assert main(["render", str(source)]) == 0
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == creates


def test_running_then_succeeded_and_the_output_from_the_spec(body):
    body, job = started(body)
    running = observe(body, with_conditions(job, ("Running", "PyTorchJobRunning", "running")))
    assert condition(running.status, "Running") == ("True", "JobRunning")
    assert running.status["phase"] == "Running" and "output" not in running.status
    body = applied(body, running)
    done = observe(body, with_conditions(job, ("Succeeded", "PyTorchJobSucceeded", "done")))
    assert condition(done.status, "Succeeded") == ("True", "JobSucceeded")
    assert condition(done.status, "Running") == ("False", "JobSucceeded")
    assert condition(done.status, "Failed") == ("False", "JobSucceeded")
    assert done.status["completionTime"] == "2026-11-23T12:00:00Z" and done.status["phase"] == "Succeeded"
    assert done.status["output"] == {
        "modelUri": "s3://models/finetuned/charts-lora/model",
        "manifestUri": "s3://models/finetuned/charts-lora/manifest.json",
    }
    assert done.record.result.type == "Succeeded"
    body = applied(body, done)
    gone = observe(body, None)
    assert gone.status == {} and gone.create == [], "a finished run stays finished, its job deleted or not"


def test_the_output_names_the_layout_the_trainer_publishes(body):
    body["spec"]["output"]["layouts"] = ["original"]
    body, job = started(body)
    done = observe(body, with_conditions(job, ("Succeeded", "PyTorchJobSucceeded", "")))
    assert done.status["output"]["modelUri"] == "s3://models/finetuned/charts-lora/model-original"


def test_a_failure_starts_the_next_attempt(body):
    body, job = started(body)
    failed_job = with_conditions(job, ("Failed", "PyTorchJobFailed", "1 Master replica(s) failed"))
    failed = observe(body, failed_job)
    assert failed.delete_job == {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "charts-lora-a1"}
    assert failed.create[-1]["metadata"]["name"] == "charts-lora-a2"
    labels = failed.create[-1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"]
    assert labels["internvl.dev/attempt"] == "2"
    assert failed.record.attempt == 2 and failed.record.job is None, "attempt 2 is recorded before it is created"
    assert failed.status["attempt"] == 2
    assert failed.status["lastFailureReason"] == "PyTorchJobFailed: 1 Master replica(s) failed"
    assert ("Warning", "Restarting") in [(kind, reason) for kind, reason, _ in failed.events]
    assert condition(failed.status, "Failed") == ("Unknown", "Pending")
    assert job_name(applied(body, failed)) == "charts-lora-a2"


def test_a_long_failure_fits_the_status_schema(body):
    body, job = started(body)
    failed = observe(body, with_conditions(job, ("Failed", "PyTorchJobFailed", "x" * 5000)))
    assert len(failed.status["lastFailureReason"]) == 1024


def test_no_restarts_left_fails_the_run(body):
    body["spec"]["maxRestarts"] = 0
    body, job = started(body)
    failed = observe(body, with_conditions(job, ("Failed", "PyTorchJobFailed", "boom")))
    assert failed.delete_job is None and failed.create == []
    assert condition(failed.status, "Failed") == ("True", "PyTorchJobFailed")
    assert cond.find(failed.status["conditions"], "Failed")["message"] == "attempt 1: boom"
    assert failed.status["phase"] == "Failed" and "output" not in failed.status


def test_bad_input_in_the_trainer_is_not_retried(body):
    body, job = started(body)
    pod = {
        "metadata": {"name": "charts-lora-a1-master-0"},
        "status": {"containerStatuses": [{"name": "pytorch", "state": {"terminated": {"exitCode": 2}}}]},
    }
    failed = observe(body, with_conditions(job, ("Failed", "PyTorchJobFailed", "failed")), [pod])
    assert failed.delete_job is None
    assert condition(failed.status, "Failed") == ("True", "InvalidInput")


def test_an_invalid_spec_is_reported_not_raised(body):
    body["spec"]["method"] = {"type": "full", "lora": {"rank": 8}}
    body["spec"]["resources"] = {"gpus": 12}
    actions = observe(body)
    assert actions.create == [] and actions.record is None
    assert condition(actions.status, "Valid") == ("False", "InvalidSpec") and actions.status["phase"] == "Invalid"
    assert "spec.method" in cond.find(actions.status["conditions"], "Valid")["message"]
    assert actions.status["attempt"] == 0, "no attempt yet, as the schema's default says"


def test_more_vision_layers_than_the_catalog_tower_has_is_invalid_before_any_gpu_is_held(body):
    body["spec"]["method"] = {"type": "lora", "unfreezeVisionLayers": 100}
    actions = observe(body)
    assert actions.create == []
    assert condition(actions.status, "Valid") == ("False", "InvalidSpec")
    assert cond.find(actions.status["conditions"], "Valid")["message"] == (
        "spec.method.unfreezeVisionLayers: 100 exceeds the vision tower's 24 layers"
    )


def test_fields_the_launcher_cannot_carry_make_the_spec_invalid(body):
    body["spec"]["launcher"] = "trainjob"
    body["spec"]["pod"] = {"priorityClassName": "high", "hostNetwork": True}
    actions = observe(body)
    assert actions.create == [] and actions.record is None
    assert condition(actions.status, "Valid") == ("False", "InvalidSpec") and actions.status["phase"] == "Invalid"
    assert cond.find(actions.status["conditions"], "Valid")["message"] == (
        "spec.pod.priorityClassName: a TrainJob of Kubeflow Trainer v2.3 cannot set it on its pods "
        "(runtimePatches have no such field); spec.pod.hostNetwork: a TrainJob of Kubeflow Trainer v2.3 "
        "cannot set it on its pods (runtimePatches have no such field)"
    )


def test_a_missing_launcher_crd_is_reported(body):
    body["spec"]["launcher"] = "mpijob"
    actions = observe(body, served=frozenset({"pytorchjob", "trainjob"}))
    assert actions.create == []
    assert actions.retry is True, "checked again, so that the CRD is found once installed"
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


# --- refused children --------------------------------------------------------------------------


def refused(body, code, message, retryable):
    """The reconciliation after the handlers tried to create the children and the job was not."""
    assert observe(body).create
    return observe(body, outcome=Outcome(refused=Refused("PyTorchJob", "charts-lora-a1", code, message, retryable)))


def test_a_child_refused_by_the_api_server_is_reported_and_waits_for_a_spec_change(body):
    message = 'PyTorchJob.kubeflow.org "charts-lora-a1" is invalid: spec.pytorchReplicaSpecs: Invalid value'
    actions = refused(body, 422, message, retryable=False)
    assert condition(actions.status, "JobCreated") == ("False", "CreateRefused")
    text = cond.find(actions.status["conditions"], "JobCreated")["message"]
    assert text.startswith(f"the API server refused PyTorchJob charts-lora-a1 (HTTP 422): {message}")
    assert ("Warning", "CreateRefused", text) in actions.events
    assert actions.retry is False and actions.status.get("job") is None
    assert actions.record.refusal.generation == 1

    body = applied(body, actions)
    again = observe(body)
    assert again.create == [] and again.status == {} and again.events == [], "not tried again for this spec"
    body["metadata"]["generation"] = 2
    assert observe(body).create, "a new generation is tried again"


def test_a_create_that_may_succeed_later_is_retried(body):
    actions = refused(body, 500, "etcdserver: request timed out", retryable=True)
    assert condition(actions.status, "JobCreated") == ("False", "CreateFailed")
    assert "failed (HTTP 500): etcdserver: request timed out; retrying" in actions.events[-1][2]
    assert actions.retry is True and actions.record.refusal is None
    assert observe(applied(body, actions)).create, "the next reconciliation creates it"
    timeout = refused(body, 0, "Read timed out. (read timeout=30)", retryable=True)
    assert "(no answer)" in cond.find(timeout.status["conditions"], "JobCreated")["message"] and timeout.retry


def test_a_taken_name_is_a_conflict_tried_again_on_the_next_event(body):
    actions = refused(body, 409, "ConfigMap charts-lora-a1-train exists and is not owned by it", retryable=False)
    assert condition(actions.status, "JobCreated") == ("False", "NameConflict")
    assert actions.retry is False
    assert observe(applied(body, actions)).create, "the other object may be gone by then"


# --- adoption ----------------------------------------------------------------------------------


def test_an_existing_job_that_is_what_the_operator_renders_is_adopted(body):
    # The operator crashed after creating the job and before recording it.
    first = observe(body)
    body = applied(body, first)
    job = as_created(first.create[-1], uid="job-uid-9")
    job["metadata"]["creationTimestamp"] = "2026-11-23T11:59:00Z"
    job["spec"]["runPolicy"]["suspend"] = True  # Kueue or a user may have suspended it
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"] = "TCP"
    actions = observe(body, job)
    assert condition(actions.status, "JobCreated") == ("True", "JobCreated")
    assert actions.record.job.uid == "job-uid-9"


@pytest.mark.parametrize("name", list(LAUNCHERS))
@pytest.mark.parametrize("suspend", [True, False])
def test_a_job_whose_suspend_field_kueue_or_a_user_flipped_is_adopted(body, name, suspend):
    body["spec"]["launcher"] = name
    body["spec"]["suspend"] = not suspend
    first = observe(body)
    body = applied(body, first)
    job = as_created(first.create[-1], uid="job-uid-9")
    holder = job
    *parents, field = LAUNCHERS[name].suspend_path
    for key in parents:
        holder = holder[key]
    holder[field] = suspend
    actions = observe(body, job)
    assert condition(actions.status, "JobCreated") == ("True", "JobCreated")
    assert actions.record.job.uid == "job-uid-9"


@pytest.mark.parametrize(
    "change",
    [
        lambda job: job["metadata"]["ownerReferences"][0].update(uid="someone-else"),
        lambda job: job["metadata"]["labels"].pop("app.kubernetes.io/managed-by"),
        lambda job: job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0].update(
            command=["sh", "-c", "curl attacker"]
        ),
        lambda job: job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"].append(
            {"name": "AWS_ENDPOINT_URL", "value": "http://attacker"}
        ),
    ],
    ids=["foreign-owner", "no-operator-label", "changed-command", "added-env"],
)
def test_a_job_that_is_not_what_the_operator_renders_is_a_conflict(body, change):
    first = observe(body)
    body = applied(body, first)
    planted = as_created(first.create[-1], uid="planted")  # the content hash annotation copied too
    change(planted)
    actions = observe(body, planted)
    assert actions.create == [] and actions.delete_job is None and actions.job_patch is None
    assert condition(actions.status, "JobCreated") == ("False", "NameConflict")
    assert actions.status.get("job") is None
    assert actions.record is None or actions.record.job is None


def test_the_recorded_job_is_trusted_whatever_admission_changed(body):
    body, job = started(body)
    # Kueue adds its flavor's tolerations and node selector when it admits a job.
    template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    template["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    template["nodeSelector"] = {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    actions = observe(body, with_conditions(job, ("Running", "PyTorchJobRunning", "")))
    assert condition(actions.status, "Running") == ("True", "JobRunning")


# --- a status only the operator writes ---------------------------------------------------------


def forge(body, **status):
    body = copy.deepcopy(body)
    body["status"] = {**body["status"], **status}
    return body


def test_a_forged_condition_attempt_and_output_are_reverted(body):
    body, job = started(body)
    body = applied(body, observe(body, job))
    honest = copy.deepcopy(body["status"])
    succeeded = {
        "type": "Succeeded",
        "status": "True",
        "reason": "JobSucceeded",
        "message": "",
        "lastTransitionTime": "2026-11-23T11:00:00Z",
    }
    forged = forge(
        body,
        conditions=[succeeded, {**succeeded, "type": "Hacked"}],
        attempt=7,
        phase="Succeeded",
        output={"modelUri": "s3://attacker/model"},
        progress={"step": 5},
    )
    assert job_name(forged) == "charts-lora-a1", "the job followed is the recorded attempt's"
    actions = observe(forged, job)
    assert actions.create == [] and actions.delete_job is None
    reverted = applied(forged, actions)
    assert reverted["status"] == {**honest, "progress": {"step": 5}}, "only progress is the trainer's"
    assert observe(reverted, job).status == {}


def test_a_forged_end_of_a_finished_run_is_reverted(body):
    body, job = started(body)
    body = applied(body, observe(body, with_conditions(job, ("Succeeded", "PyTorchJobSucceeded", "done"))))
    honest = copy.deepcopy(body["status"])
    failed = {
        "type": "Failed",
        "status": "True",
        "reason": "X",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    forged = forge(body, conditions=[failed], output=None, completionTime="2020-01-01T00:00:00Z")
    assert applied(forged, observe(forged, None))["status"] == honest


def test_an_unreadable_record_counts_as_none(body):
    body["metadata"]["annotations"] = {RECORD_ANNOTATION: "{not json"}
    actions = observe(body)
    assert actions.create and actions.record.attempt == 1


# --- the safety net ----------------------------------------------------------------------------


def test_an_error_while_planning_is_a_condition_not_an_exception(body, monkeypatch, caplog):
    def broken(spec):
        raise ValueError("could not convert string to float: '1056439880K'\nsecond line")

    monkeypatch.setattr(reconciliation, "plan", broken)
    with caplog.at_level(logging.ERROR):
        actions = observe(body)
    assert actions.create == []
    assert condition(actions.status, "Valid") == ("False", "OperatorError")
    message = cond.find(actions.status["conditions"], "Valid")["message"]
    assert message == (
        "the operator could not reconcile this object (ValueError: could not convert string to float: "
        "'1056439880K'); its log has the details"
    )
    assert ("Warning", "OperatorError", message) in actions.events
    assert "Traceback" in caplog.text


def test_an_error_while_rendering_is_job_created_false(body, monkeypatch):
    def broken(*args):
        raise ValueError("accumulation 131072 > 65536")

    monkeypatch.setattr(reconciliation, "render_context", broken)
    actions = observe(body)
    assert actions.create == []
    assert condition(actions.status, "JobCreated") == ("False", "RenderFailed")
    assert condition(actions.status, "Valid") == ("True", "Planned")


def test_a_finished_run_keeps_its_end_through_an_operator_error(body, monkeypatch):
    body, job = started(body)
    body = applied(body, observe(body, with_conditions(job, ("Succeeded", "PyTorchJobSucceeded", "done"))))
    monkeypatch.setattr(reconciliation, "validate", lambda body: 1 / 0)
    actions = observe(body, None)
    assert condition(actions.status, "Valid") == ("False", "OperatorError")
    assert applied(body, actions)["status"]["phase"] == "Succeeded"


def test_a_deeply_nested_field_gets_a_status(body):
    deep: dict = {}
    node = deep
    for _ in range(256):
        node["a"] = {}
        node = node["a"]
    body["spec"]["pod"] = {"affinity": {"nodeAffinity": deep}}
    actions = observe(body)
    assert actions.create == [] and cond.find(actions.status["conditions"], "Valid")["status"] == "False"


# --- suspend and spec changes ------------------------------------------------------------------


def test_suspend_is_written_only_when_spec_suspend_changes(body):
    body, job = started(body)
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
    body, job = started(body)
    job = with_conditions(job, ("Suspended", "PyTorchJobSuspended", "waiting for Kueue"))
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
    body, job = started(body)
    body["spec"]["maxRestarts"] = 5
    assert condition(observe(body, job).status, "Valid") == ("True", "Planned"), "maxRestarts takes effect"
    body["spec"]["activeDeadlineSeconds"] = 3600
    actions = observe(body, job)
    assert condition(actions.status, "Valid") == ("True", "SpecChangeIgnored")
    assert actions.create == []


def test_annotations_that_leave_no_room_for_the_record_are_refused_before_anything_is_created(body):
    # The API server allows 256 KiB of annotations in all; the record needs up to 20 KiB of them.
    room = 256 * 1024 - 20 * 1024 - len("example.com/notes")
    body["metadata"]["annotations"] = {"example.com/notes": "x" * (room + 15)}
    actions = observe(body)
    assert condition(actions.status, cond.VALID) == ("False", "AnnotationsTooLarge")
    message = cond.find(actions.status["conditions"], cond.VALID)["message"]
    assert message.startswith("metadata.annotations take 241679 bytes; the operator keeps its record")
    assert message.endswith("remove at least 15 bytes")
    assert actions.create == [] and actions.record is None
    assert ("Warning", "AnnotationsTooLarge") in [event[:2] for event in actions.events]

    body["metadata"]["annotations"]["example.com/notes"] = "x" * room
    assert condition(observe(body).status, cond.VALID) == ("True", "Planned")


def test_the_largest_record_fits_the_room_kept_for_it():
    from internvl_operator.record import RECORD_MAX_BYTES, Record, Refusal, Result

    worst = "\U0001f600" * 5000  # 4 bytes in UTF-8, cut to 1024 characters
    record = Record(
        attempt=2**31 - 1,
        job={"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "n" * 253, "uid": "u" * 36},
        start_time="2026-11-23T12:00:00Z",
        last_failure_reason=worst,
        refusal=Refusal(generation=2**63 - 1, message=worst),
        result=Result(type="Failed", reason=worst, message=worst, time="2026-11-23T12:00:00Z"),
    )
    assert record.result.message == "\U0001f600" * 1024
    assert len(RECORD_ANNOTATION.encode()) + len(record.to_annotation().encode()) <= RECORD_MAX_BYTES


# spec.launcher: auto


@pytest.fixture
def auto(lora_cr):
    lora_cr["metadata"].update({"uid": UID, "generation": 1})
    assert "launcher" not in lora_cr["spec"], "auto is the default"
    return lora_cr


@pytest.mark.parametrize(
    ("served", "kind"),
    [
        ({"trainjob", "pytorchjob", "mpijob"}, "TrainJob"),
        ({"pytorchjob", "mpijob"}, "PyTorchJob"),
        ({"mpijob"}, "MPIJob"),
    ],
)
def test_auto_takes_the_first_launcher_served(auto, served, kind):
    body, actions, children = act(auto, served=frozenset(served))
    assert children[-1]["kind"] == kind
    launcher = LAUNCHERS[kind.lower()]
    assert read_record(body).launcher == launcher.name
    assert body["status"]["plan"]["launcher"] == launcher.name
    assert body["status"]["job"]["kind"] == kind


def test_auto_passes_over_a_launcher_that_cannot_carry_the_spec(auto):
    auto["spec"]["pod"] = {"priorityClassName": "training"}
    body, _, children = act(auto)
    assert children[-1]["kind"] == "PyTorchJob"
    assert body["status"]["plan"]["launcher"] == "pytorchjob"


def test_auto_with_no_launcher_served_names_what_to_install(auto):
    actions = observe(auto, served=frozenset())
    assert actions.create == [] and actions.record is None and actions.retry is True
    assert condition(actions.status, "Valid") == ("False", "LauncherNotInstalled")
    assert cond.find(actions.status["conditions"], "Valid")["message"] == (
        "spec.launcher is auto and this cluster serves no launcher: install one of "
        "TrainJob: the CRD trainjobs.trainer.kubeflow.org; PyTorchJob: the CRD pytorchjobs.kubeflow.org; "
        "MPIJob: the CRD mpijobs.kubeflow.org"
    )
    assert "plan" not in actions.status


def test_auto_where_only_a_launcher_that_cannot_carry_the_spec_is_served(auto):
    auto["spec"]["ttlSecondsAfterFinished"] = 600
    actions = observe(auto, served=frozenset({"trainjob"}))
    assert actions.create == []
    assert condition(actions.status, "Valid") == ("False", "LauncherNotInstalled")
    assert cond.find(actions.status["conditions"], "Valid")["message"].startswith(
        "spec.launcher is auto and the launchers this cluster serves cannot carry the spec: TrainJob "
        "(spec.ttlSecondsAfterFinished: a TrainJob of Kubeflow Trainer v2.3 has no time-to-live); install another"
    )


def test_the_choice_of_auto_never_changes(auto):
    body, _, children = act(auto, served=frozenset({"pytorchjob"}))
    assert children[-1]["kind"] == "PyTorchJob"
    job = as_created(children[-1])
    # Trainer v2 is installed afterwards: the next attempt is a PyTorchJob all the same.
    failed = observe(body, with_conditions(job, ("Failed", "PyTorchJobFailed", "boom")))
    assert failed.delete_job["kind"] == "PyTorchJob"
    assert failed.create[-1]["kind"] == "PyTorchJob"
    assert failed.status.get("plan", body["status"]["plan"])["launcher"] == "pytorchjob"
    # Its CRD uninstalled, the object says so instead of moving to another launcher.
    body = applied(body, failed)
    gone = observe(body, served=frozenset({"trainjob", "mpijob"}))
    assert gone.create == []
    assert condition(gone.status, "Valid") == ("False", "LauncherNotInstalled")
    assert cond.find(gone.status["conditions"], "Valid")["message"] == (
        "PyTorchJob (kubeflow.org/v1) is not served by this cluster (spec.launcher auto chose it for this object): "
        "install the CRD pytorchjobs.kubeflow.org or create a new InternVLFinetune to use another launcher"
    )


def test_the_handlers_read_the_job_of_the_launcher_reconciling_chooses(auto):
    assert reconciliation.launcher_of(auto, frozenset(LAUNCHERS)) is LAUNCHERS["trainjob"]
    assert reconciliation.launcher_of(auto, frozenset()) is None
    body, _, _ = act(auto, served=frozenset({"mpijob"}))
    assert reconciliation.launcher_of(body, frozenset(LAUNCHERS)) is LAUNCHERS["mpijob"], "the recorded one"
    auto["spec"]["launcher"] = "slurm"
    assert reconciliation.launcher_of(auto, frozenset(LAUNCHERS)) is None


def test_the_job_is_looked_up_under_the_name_it_was_created_with(body):
    # An operator that cut names differently (the stem once left room for 46 characters) created
    # the job of this attempt: it is still found, and the next attempt is named as this one names it.
    body["metadata"]["name"] = "x" * 45
    recorded = Record(
        attempt=1, job=JobRecord(api_version="kubeflow.org/v1", kind="PyTorchJob", name="old-a1", uid="u")
    )
    body["metadata"]["annotations"] = {RECORD_ANNOTATION: recorded.to_annotation()}
    assert job_name(body) == "old-a1"
    started = Record(attempt=2)
    body["metadata"]["annotations"] = {RECORD_ANNOTATION: started.to_annotation()}
    assert job_name(body) == f"{'x' * 31}-{hashlib.sha256(b'x' * 45).hexdigest()[:8]}-a2"

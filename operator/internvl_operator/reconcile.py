"""One reconciliation of an InternVLFinetune: from what is observed to what must change.

A pure function. The kopf handlers read the object, the current attempt's job and its pods, call
``reconcile``, and carry out the returned ``Actions``; nothing here talks to a cluster, so every
path (invalid spec, missing launcher, nothing fits, job phases, restarts, suspend, conflicts) is
tested without one. Running it again on the result changes nothing: the status patch is empty
once the status says what the observation says.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from internvl_operator import conditions as cond
from internvl_operator import naming
from internvl_operator.api import InternVLFinetune
from internvl_operator.job_status import job_state
from internvl_operator.planner import Plan, plan
from internvl_operator.render import RenderError, render
from internvl_operator.resolve import render_context
from internvl_operator.settings import OperatorSettings
from internvl_operator.validation import validate
from internvl_trainer.problems import BadInput

# On the job: what spec.suspend was when the operator last wrote the job's runPolicy.suspend,
# and a hash of the spec the job was made from.
SUSPEND_ANNOTATION = "internvl.dev/spec-suspend"
SPEC_HASH_ANNOTATION = "internvl.dev/spec-hash"
LAUNCHER_CRDS = {
    "pytorchjob": ("PyTorchJob", "kubeflow.org/v1", "pytorchjobs.kubeflow.org"),
    "mpijob": ("MPIJob", "kubeflow.org/v2beta1", "mpijobs.kubeflow.org"),
}


@dataclass(frozen=True)
class Observed:
    """What the handlers read before reconciling."""

    body: dict[str, Any]
    """The InternVLFinetune as the API server returned it."""
    job: dict[str, Any] | None
    """The job of the current attempt, if it exists."""
    pods: list[dict[str, Any]]
    """The pods of that job."""
    launcher_installed: bool
    """Whether the CRD of the spec's launcher (at the version the renderers write) is served."""
    now: datetime
    queue_message: str | None = None
    """Why Kueue has not admitted the job yet (its Workload's condition), where readable."""


@dataclass
class Actions:
    """What the handlers must do, in this order."""

    delete_job: dict[str, Any] | None = None
    """A failed job to delete before the next attempt (its kind and name)."""
    create: list[dict[str, Any]] = field(default_factory=list)
    """Children to create, or to adopt when they exist and this object owns them."""
    job_patch: dict[str, Any] | None = None
    """A merge patch for the current job (suspend)."""
    status: dict[str, Any] = field(default_factory=dict)
    """A merge patch for the object's status; empty when nothing changed."""
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """Kubernetes events to post: (type, reason, message)."""


def spec_hash(body: dict[str, Any]) -> str:
    """A hash of the spec without suspend, the one field that may change under a running job."""
    spec = {key: value for key, value in (body.get("spec") or {}).items() if key != "suspend"}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def current_attempt(body: dict[str, Any]) -> int:
    return (body.get("status") or {}).get("attempt") or 1


def job_name(body: dict[str, Any]) -> str:
    """The name of the current attempt's job."""
    return naming.job_name(body["metadata"]["name"], current_attempt(body))


class _Status:
    """The status being built, with the conditions as a list and the events that go with them."""

    def __init__(self, body: dict[str, Any], now: datetime):
        self.before = body.get("status") or {}
        self.generation = body.get("metadata", {}).get("generation")
        self.now = now
        self.fields: dict[str, Any] = {"observedGeneration": self.generation}
        self.conditions = list(self.before.get("conditions") or cond.initial(self.generation, now))
        self.events: list[tuple[str, str, str]] = []

    def set(self, type_: str, status: cond.Status, reason: str, message: str, event: str | None = None) -> None:
        previous = cond.find(self.conditions, type_)
        if event and (previous is None or (previous["status"], previous["reason"]) != (status, reason)):
            self.events.append((event, reason, message or f"{type_} is {status}"))
        self.conditions = cond.set_condition(
            self.conditions, type_, status, reason, message, generation=self.generation, now=self.now
        )

    def patch(self) -> dict[str, Any]:
        """Only what differs from the status the object has."""
        wanted = {**self.fields, "phase": cond.phase(self.conditions), "conditions": self.conditions}
        return {key: value for key, value in wanted.items() if self.before.get(key) != value}


def reconcile(observed: Observed, settings: OperatorSettings) -> Actions:
    body, now = observed.body, observed.now
    status = _Status(body, now)
    actions = Actions()
    if cond.is_true(status.conditions, cond.SUCCEEDED) or cond.is_true(status.conditions, cond.FAILED):
        return _finish(actions, status)

    resource, result = _plan(observed, status)
    if resource is None or result is None:
        return _finish(actions, status)

    attempt = current_attempt(body)
    status.fields["plan"] = result.to_status().to_wire()
    status.fields["attempt"] = attempt
    job = observed.job
    if job is None:
        _create_attempt(actions, status, body, resource, result, attempt, settings)
        return _finish(actions, status)

    owners = [ref.get("uid") for ref in job["metadata"].get("ownerReferences") or [] if ref.get("controller")]
    if owners != [body["metadata"]["uid"]]:
        status.set(
            cond.JOB_CREATED,
            "False",
            "NameConflict",
            f"{job['kind']} {job['metadata']['name']} exists and is not owned by this InternVLFinetune",
            event="Warning",
        )
        return _finish(actions, status)

    status.fields["job"] = _job_reference(job)
    annotations = job["metadata"].get("annotations") or {}
    if annotations.get(SPEC_HASH_ANNOTATION) not in (None, spec_hash(body)):
        status.set(
            cond.VALID,
            "True",
            "SpecChangeIgnored",
            "the spec changed after the job was created; only suspend takes effect on a running job",
            event="Warning",
        )
    actions.job_patch = _suspend_patch(resource, job)
    _mirror(actions, status, body, resource, result, job, observed, attempt, settings)
    return _finish(actions, status)


def _finish(actions: Actions, status: _Status) -> Actions:
    actions.status = status.patch()
    actions.events = status.events
    return actions


def _plan(observed: Observed, status: _Status) -> tuple[InternVLFinetune | None, Plan | None]:
    """Validate and plan; on any problem, Valid=False with the reason, and nothing else."""
    problems = validate(observed.body)
    if problems:
        status.set(cond.VALID, "False", "InvalidSpec", "; ".join(map(str, problems)), event="Warning")
        return None, None
    resource = InternVLFinetune.model_validate(observed.body)
    kind, api_version, crd = LAUNCHER_CRDS[resource.spec.launcher]
    if not observed.launcher_installed:
        message = f"{kind} ({api_version}) is not served by this cluster: install the CRD {crd} or change spec.launcher"
        status.set(cond.VALID, "False", "LauncherNotInstalled", message, event="Warning")
        return None, None
    try:
        result = plan(resource.spec)
    except BadInput as error:
        status.set(cond.VALID, "False", "InvalidSpec", "; ".join(map(str, error.problems)), event="Warning")
        return None, None
    if result.verdict == "nothing-fits":
        status.set(cond.VALID, "False", "NoFeasiblePlan", result.notes[0] if result.notes else "", event="Warning")
        return None, None
    if cond.find(status.conditions, cond.VALID).get("reason") != "SpecChangeIgnored":
        layout = (
            f"{result.nodes} x {result.gpus_per_node} GPUs, ZeRO-{result.zero_stage}"
            f"{' with CPU offload' if result.offload else ''}, {result.per_device_batch_size} per device x "
            f"{result.gradient_accumulation_steps} accumulation, {result.memory.total_gib:.1f} GiB per GPU estimated"
        )
        status.set(cond.VALID, "True", "Planned", layout, event="Normal")
    return resource, result


def _create_attempt(
    actions: Actions,
    status: _Status,
    body: dict[str, Any],
    resource: InternVLFinetune,
    result: Plan,
    attempt: int,
    settings: OperatorSettings,
) -> None:
    try:
        children = render(render_context(resource, result, attempt, settings))
    except (RenderError, ValueError) as error:
        status.set(cond.JOB_CREATED, "False", "RenderFailed", str(error), event="Warning")
        return
    job = children[-1]
    job["metadata"]["annotations"] = {
        SPEC_HASH_ANNOTATION: spec_hash(body),
        SUSPEND_ANNOTATION: str(resource.spec.suspend).lower(),
    }
    actions.create = children
    status.fields["job"] = _job_reference(job)
    status.fields["startTime"] = status.before.get("startTime") or cond.timestamp(status.now)
    status.set(cond.JOB_CREATED, "True", "JobCreated", f"{job['kind']} {job['metadata']['name']}", event="Normal")


def _job_reference(job: dict[str, Any]) -> dict[str, Any]:
    reference = {"apiVersion": job["apiVersion"], "kind": job["kind"], "name": job["metadata"]["name"]}
    if job["metadata"].get("uid"):
        reference["uid"] = job["metadata"]["uid"]
    return reference


def _suspend_patch(resource: InternVLFinetune, job: dict[str, Any]) -> dict[str, Any] | None:
    """The job's runPolicy.suspend follows spec.suspend only when spec.suspend changes, and a
    queued job is never unsuspended here: Kueue admits it."""
    wanted = resource.spec.suspend
    applied = (job["metadata"].get("annotations") or {}).get(SUSPEND_ANNOTATION)
    if applied == str(wanted).lower():
        return None
    patch: dict[str, Any] = {"metadata": {"annotations": {SUSPEND_ANNOTATION: str(wanted).lower()}}}
    if wanted or resource.spec.queue_name is None:
        patch["spec"] = {"runPolicy": {"suspend": wanted}}
    return patch


def _mirror(
    actions: Actions,
    status: _Status,
    body: dict[str, Any],
    resource: InternVLFinetune,
    result: Plan,
    job: dict[str, Any],
    observed: Observed,
    attempt: int,
    settings: OperatorSettings,
) -> None:
    """The job's phase as the object's conditions; a failure starts the next attempt."""
    state = job_state(job, observed.pods)
    if state.phase == "Succeeded":
        status.set(cond.RUNNING, "False", state.reason, state.message)
        status.set(cond.SUCCEEDED, "True", state.reason, state.message, event="Normal")
        status.set(cond.FAILED, "False", state.reason, "")
        status.fields["completionTime"] = status.before.get("completionTime") or cond.timestamp(status.now)
    elif state.phase == "Failed":
        failure = f"{state.reason}: {state.message}".rstrip(": ")
        status.fields["lastFailureReason"] = failure[: cond.MESSAGE_MAX]
        status.set(cond.RUNNING, "False", state.reason, state.message)
        if state.retryable and attempt <= resource.spec.max_restarts:
            actions.delete_job = {"apiVersion": job["apiVersion"], "kind": job["kind"], "name": job["metadata"]["name"]}
            status.events.append(
                ("Warning", "Restarting", f"attempt {attempt} failed ({failure}); starting attempt {attempt + 1}")
            )
            status.fields["attempt"] = attempt + 1
            _create_attempt(actions, status, body, resource, result, attempt + 1, settings)
        else:
            why = "" if state.retryable else " (not retried: a restart cannot fix it)"
            status.set(cond.FAILED, "True", state.reason, f"attempt {attempt}: {state.message}{why}", event="Warning")
            status.set(cond.SUCCEEDED, "False", state.reason, "")
            status.fields["completionTime"] = status.before.get("completionTime") or cond.timestamp(status.now)
    elif state.phase == "Suspended":
        message = "; ".join(part for part in (state.message, observed.queue_message) if part)
        status.set(cond.SUSPENDED, "True", state.reason, message, event="Normal")
        status.set(cond.RUNNING, "False", state.reason, state.message)
    elif state.phase == "Running":
        status.set(cond.SUSPENDED, "False", "NotSuspended", "")
        status.set(cond.RUNNING, "True", state.reason, state.message, event="Normal")
    else:
        status.set(cond.SUSPENDED, "False", "NotSuspended", "")
        status.set(
            cond.RUNNING,
            "False",
            state.reason,
            state.message,
            event="Warning" if state.reason != "JobPending" else None,
        )

"""One reconciliation of an InternVLFinetune: from what is observed to what must change.

A pure function. The kopf handlers read the object, the current attempt's job and its pods, call
``reconcile``, and carry out the returned ``Actions``; when they created children they reconcile
once more with what became of them (``Outcome``: created, adopted, refused). Nothing here talks
to a cluster, so every path (invalid spec, missing launcher, nothing fits, job phases, restarts,
suspend, name conflicts, refused children, a forged status) is tested without one. Running it
again on the result changes nothing: the patches are empty once the status and the record say
what the observation says.

The operator owns the status except ``status.progress``. It derives all of it on every event
from the spec, the observed job and pods, and its own record (``internvl_operator.record``),
never from the status it finds, which the trainer can patch: a forged condition, attempt or
output is reverted. An exception anywhere becomes a condition with a one-sentence reason; the
traceback goes to the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from internvl_operator import conditions as cond
from internvl_operator import naming
from internvl_operator.api import KIND, InternVLFinetune
from internvl_operator.launchers import AUTO, Launcher, chosen, none_served
from internvl_operator.planner import Plan, plan
from internvl_operator.record import (
    RECORDED_MESSAGE_MAX,
    JobRecord,
    Record,
    Refusal,
    Result,
    no_room_for_record,
    read_record,
)
from internvl_operator.render import render, spec_hash
from internvl_operator.render.content import difference
from internvl_operator.render.context import SPEC_HASH_ANNOTATION, SUSPEND_ANNOTATION
from internvl_operator.resolve import render_context
from internvl_operator.settings import OperatorSettings
from internvl_operator.validation import parse, validate
from internvl_trainer.config import OutputLayout
from internvl_trainer.problems import BadInput

logger = logging.getLogger(__name__)

LAUNCHER_NOT_INSTALLED = "LauncherNotInstalled"


@dataclass(frozen=True)
class Refused:
    """A child the API server did not create: it refused it, failed, or the name is taken."""

    kind: str
    name: str
    code: int
    """The HTTP status; 0 when no answer came; 409 when an object that is not this child has its name."""
    message: str
    """The server's message, or for a name conflict why the object found is not the child."""
    retryable: bool
    """Whether the same request may succeed later (no answer, 429, 5xx)."""

    @property
    def reason(self) -> str:
        if self.code == 409:
            return "NameConflict"
        return "CreateFailed" if self.retryable else "CreateRefused"

    def sentence(self) -> str:
        if self.code == 409:
            return f"{self.message}; delete it or rename the InternVLFinetune"
        answer = f"HTTP {self.code}" if self.code else "no answer"
        if self.retryable:
            return f"creating {self.kind} {self.name} failed ({answer}): {self.message}; retrying with backoff"
        return (
            f"the API server refused {self.kind} {self.name} ({answer}): {self.message}; "
            "not retried until the spec changes"
        )


@dataclass(frozen=True)
class Outcome:
    """What became of the children a reconciliation asked to create."""

    job: dict[str, Any] | None = None
    """The job, as the API server returned it when creating it or as found and adopted."""
    refused: Refused | None = None
    """The child that was not created; the ones after it were not tried."""


@dataclass(frozen=True)
class Observed:
    """What the handlers read before reconciling."""

    body: dict[str, Any]
    """The InternVLFinetune as the API server returned it."""
    job: dict[str, Any] | None
    """The object under the name of the current attempt's job, if one exists."""
    pods: list[dict[str, Any]]
    """The pods of that job."""
    served: frozenset[str]
    """The launchers whose CRDs (at the versions the renderers write) the cluster serves."""
    now: datetime
    queue_message: str | None = None
    """Why Kueue has not admitted the job yet (its Workload's condition), where readable."""
    outcome: Outcome | None = None
    """Set when reconciling again after creating the children the first reconciliation asked for."""


@dataclass
class Actions:
    """What the handlers must do, in this order."""

    record: Record | None = None
    """The operator's record to write (before anything else), when it changed."""
    delete_job: dict[str, Any] | None = None
    """A failed job to delete before the next attempt (its kind and name)."""
    create: list[dict[str, Any]] = field(default_factory=list)
    """Children to create, or to adopt when an object under the name is the child (render.content)."""
    job_patch: dict[str, Any] | None = None
    """A merge patch for the observed job (suspend)."""
    status: dict[str, Any] = field(default_factory=dict)
    """A merge patch for the object's status; empty when nothing changed."""
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """Kubernetes events to post: (type, reason, message)."""
    retry: bool = False
    """Whether to reconcile again later: creating a child failed in a way a retry can fix."""


def current_attempt(body: dict[str, Any]) -> int:
    return read_record(body).attempt or 1


def job_name(body: dict[str, Any]) -> str:
    """The name of the current attempt's job: as recorded once created (an operator of another
    version may have named it), else as this one names it."""
    recorded = read_record(body).job
    return recorded.name if recorded is not None else naming.job_name(body["metadata"]["name"], current_attempt(body))


class _Status:
    """The status being derived, the record that goes with it, and the events of the transitions."""

    def __init__(self, body: dict[str, Any], record: Record, now: datetime):
        before = body.get("status")
        self.before: dict[str, Any] = before if isinstance(before, dict) else {}
        found = self.before.get("conditions")
        self.previous = [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []
        self.generation = (body.get("metadata") or {}).get("generation")
        self.now = now
        self.record = record
        # Start from the known conditions found, for their transition times; each is set anew.
        self.conditions = [c for c in self.previous if c.get("type") in cond.TYPES]
        self.derived: set[str] = set()
        self.fields: dict[str, Any] = {"plan": None, "job": None, "output": None}
        self.events: list[tuple[str, str, str]] = []

    def set(self, type_: str, status: cond.Status, reason: str, message: str, event: str | None = None) -> None:
        previous = cond.find(self.previous, type_)
        if event and (previous is None or (previous.get("status"), previous.get("reason")) != (status, reason)):
            self.events.append((event, reason, message or f"{type_} is {status}"))
        self.derived.add(type_)
        self.conditions = cond.set_condition(
            self.conditions, type_, status, reason, message, generation=self.generation, now=self.now
        )

    def patch(self) -> dict[str, Any]:
        """Every field the operator owns, where it differs from the status the object has; the
        conditions not derived in this reconciliation are Unknown."""
        for type_ in cond.TYPES:
            if type_ not in self.derived:
                self.set(type_, "Unknown", "Pending", "")
        record = self.record
        wanted = {
            "observedGeneration": self.generation,
            "phase": cond.phase(self.conditions),
            "conditions": self.conditions,
            "attempt": record.attempt or 0,  # the schema's default: what the API server shows before a first job
            "lastFailureReason": record.last_failure_reason,
            "startTime": record.start_time,
            "completionTime": record.result.time if record.result else None,
            **self.fields,
        }
        return {key: value for key, value in wanted.items() if self.before.get(key) != value}


def reconcile(observed: Observed, settings: OperatorSettings) -> Actions:
    record = read_record(observed.body)
    status = _Status(observed.body, record, observed.now)
    actions = Actions()
    try:
        _reconcile(observed, settings, status, actions)
    except Exception as error:  # the safety net: a stored object always gets a status
        logger.error("reconciling %s failed", _name(observed.body), exc_info=error)
        status, actions = _Status(observed.body, record, observed.now), Actions()
        if record.result is not None:
            _finished(status, record.result, None, observed.body)
        status.set(cond.VALID, "False", "OperatorError", _failure("could not reconcile this object", error), "Warning")
    actions.record = status.record if status.record != record else None
    actions.status = status.patch()
    actions.events = status.events
    return actions


def _name(body: dict[str, Any]) -> str:
    metadata = body.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"


def _failure(doing: str, error: BaseException) -> str:
    """One sentence for a condition: what failed and the error's first line."""
    first = next(iter(str(error).strip().splitlines()), "")[:300]
    return f"the operator {doing} ({type(error).__name__}: {first}); its log has the details"


def launcher_of(body: dict[str, Any], served: frozenset[str]) -> Launcher | None:
    """The launcher of an object as reconciling it finds it (``launchers.chosen``); None when it
    has none yet or its spec cannot be read (reconciling says why)."""
    try:
        spec = parse(body).spec
    except ValueError:
        return None
    return chosen(spec, read_record(body).launcher, served)


def _reconcile(observed: Observed, settings: OperatorSettings, status: _Status, actions: Actions) -> None:
    record = status.record
    resource, result, launcher = _plan(observed, settings, status, actions, finished=record.result is not None)
    if launcher is not None:
        status.record = record = record.model_copy(update={"launcher": launcher.name})
    if result is not None:
        status.fields["plan"] = result.to_status().to_wire() | {"launcher": record.launcher}
    if record.result is not None:
        # A run that ended stays ended, whatever its job does (or whether it still exists).
        if result is not None:
            _valid(status, result)
        _finished(status, record.result, resource, observed.body)
        return
    if resource is None or result is None or launcher is None:
        return
    attempt = record.attempt or 1
    job = observed.job
    if job is None:
        _valid(status, result)
        _create_attempt(observed, settings, status, actions, resource, result, launcher, attempt)
        return

    uid = job["metadata"].get("uid")
    trusted = record.job is not None and uid is not None and record.job.uid == uid
    if not trusted:
        # Not the job the operator recorded: adopted only if it is what the operator renders.
        children = _render(status, resource, result, launcher, attempt, settings)
        if children is None:
            return
        conflict = difference(children[-1], job, launcher.suspend_path)
        if conflict:
            _valid(status, result)
            taken = Refused(job["kind"], job["metadata"]["name"], 409, conflict, retryable=False)
            status.set(cond.JOB_CREATED, "False", taken.reason, taken.sentence(), "Warning")
            return
        status.record = status.record.model_copy(update={"job": _job_record(job)})

    ignored = (job["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION) not in (
        None,
        spec_hash(resource.spec),
    )
    _valid(status, result, spec_change_ignored=ignored)
    status.fields["job"] = _job_reference(job)
    status.set(cond.JOB_CREATED, "True", "JobCreated", f"{job['kind']} {job['metadata']['name']}", "Normal")
    actions.job_patch = _suspend_patch(resource, launcher, job)
    _act_on_job_phase(observed, settings, status, actions, resource, result, launcher, attempt)


def _plan(
    observed: Observed, settings: OperatorSettings, status: _Status, actions: Actions, *, finished: bool
) -> tuple[InternVLFinetune | None, Plan | None, Launcher | None]:
    """Validate, choose the launcher (``launchers.chosen``) and plan; on any problem, Valid=False
    with the reason, and nothing else (but a check again later where the launcher is missing)."""
    problems = validate(observed.body)
    if problems:
        status.set(cond.VALID, "False", "InvalidSpec", "; ".join(map(str, problems)), "Warning")
        return None, None, None
    resource, result = parse(observed.body), None
    launcher = chosen(resource.spec, status.record.launcher, observed.served)
    try:
        refusal = _refusal(observed, settings, resource, launcher, finished=finished)
        result = plan(resource.spec) if refusal is None else None
    except BadInput as error:
        refusal = ("InvalidSpec", "; ".join(map(str, error.problems)))
    if result is not None and result.verdict == "nothing-fits":
        refusal = ("NoFeasiblePlan", result.notes[0] if result.notes else "")
    if refusal is not None:
        status.set(cond.VALID, "False", *refusal, "Warning")
        # Checked again with backoff, so that a launcher installed later is found with no change to the object.
        actions.retry = refusal[0] == LAUNCHER_NOT_INSTALLED
        return None, None, None
    return resource, result, launcher


def _refusal(
    observed: Observed,
    settings: OperatorSettings,
    resource: InternVLFinetune,
    launcher: Launcher | None,
    *,
    finished: bool,
) -> tuple[str, str] | None:
    """Why a valid spec cannot run here as ``launcher`` (None: auto found none), as a condition's
    (reason, message); None when it can. A finished run is not held to the cluster's launchers and
    settings of today: its outcome stays."""
    if launcher is None:
        return None if finished else (LAUNCHER_NOT_INSTALLED, none_served(resource.spec, observed.served))
    unsupported = launcher.unsupported(resource.spec)
    if unsupported:
        return "InvalidSpec", "; ".join(unsupported)
    if finished:
        return None
    if launcher.name not in observed.served:
        recorded = read_record(observed.body).launcher
        change = "change spec.launcher" if recorded is None else f"create a new {KIND} to use another launcher"
        auto = f" (spec.launcher {AUTO} chose it for this object)" if resource.spec.launcher == AUTO else ""
        return LAUNCHER_NOT_INSTALLED, (
            f"{launcher.kind} ({launcher.api_version}) is not served by this cluster{auto}: "
            f"install the CRD {launcher.crd} or {change}"
        )
    refusal = settings.privilege_refusal(resource.spec)
    if refusal is not None:
        return refusal
    crowded = no_room_for_record(observed.body)
    return None if crowded is None else ("AnnotationsTooLarge", crowded)


def _valid(status: _Status, result: Plan, *, spec_change_ignored: bool = False) -> None:
    if spec_change_ignored:
        message = (
            "the spec changed after the job was created; only suspend and maxRestarts take effect on a running job"
        )
        status.set(cond.VALID, "True", "SpecChangeIgnored", message, "Warning")
        return
    layout = (
        f"{result.nodes} x {result.gpus_per_node} GPUs, ZeRO-{result.zero_stage}"
        f"{' with CPU offload' if result.offload else ''}, {result.per_device_batch_size} per device x "
        f"{result.gradient_accumulation_steps} accumulation, {result.memory.total_gib:.1f} GiB per GPU estimated"
    )
    status.set(cond.VALID, "True", "Planned", layout, "Normal")


def _render(
    status: _Status,
    resource: InternVLFinetune,
    result: Plan,
    launcher: Launcher,
    attempt: int,
    settings: OperatorSettings,
) -> list[dict[str, Any]] | None:
    """The children of an attempt; None, with JobCreated=False, when rendering fails."""
    try:
        return render(render_context(resource, result, attempt, settings, launcher))
    except Exception as error:
        logger.error("rendering %s failed", resource.metadata.name, exc_info=error)
        status.set(
            cond.JOB_CREATED, "False", "RenderFailed", _failure("could not render the children", error), "Warning"
        )
        return None


def _create_attempt(
    observed: Observed,
    settings: OperatorSettings,
    status: _Status,
    actions: Actions,
    resource: InternVLFinetune,
    result: Plan,
    launcher: Launcher,
    attempt: int,
) -> None:
    """Ask for the children of an attempt; or, reconciling after that, say what became of them."""
    record = status.record
    if observed.outcome is None and record.refusal is not None and record.refusal.generation == status.generation:
        status.set(cond.JOB_CREATED, "False", "CreateRefused", record.refusal.message)
        return
    started = record.model_copy(
        update={"attempt": attempt, "job": None, "refusal": None, "start_time": record.start_time or _now(status)}
    )
    status.record = started
    outcome = observed.outcome
    if outcome is None:
        children = _render(status, resource, result, launcher, attempt, settings)
        if children is None:
            return
        actions.create = children
        job = children[-1]
    elif outcome.refused is not None:
        refused = outcome.refused
        message = refused.sentence()[:RECORDED_MESSAGE_MAX]  # as the record keeps it
        status.set(cond.JOB_CREATED, "False", refused.reason, message, "Warning")
        if refused.reason == "CreateRefused":
            status.record = started.model_copy(
                update={"refusal": Refusal(generation=status.generation, message=message)}
            )
        actions.retry = refused.retryable
        return
    else:
        job = outcome.job or {}
        status.record = started.model_copy(update={"job": _job_record(job)})
    status.fields["job"] = _job_reference(job)
    status.set(cond.JOB_CREATED, "True", "JobCreated", f"{job['kind']} {job['metadata']['name']}", "Normal")


def _now(status: _Status) -> str:
    return cond.timestamp(status.now)


def _job_reference(job: dict[str, Any]) -> dict[str, Any]:
    reference = {"apiVersion": job["apiVersion"], "kind": job["kind"], "name": job["metadata"]["name"]}
    if job["metadata"].get("uid"):
        reference["uid"] = job["metadata"]["uid"]
    return reference


def _job_record(job: dict[str, Any]) -> JobRecord:
    return JobRecord(
        api_version=job["apiVersion"], kind=job["kind"], name=job["metadata"]["name"], uid=job["metadata"].get("uid")
    )


def _suspend_patch(resource: InternVLFinetune, launcher: Launcher, job: dict[str, Any]) -> dict[str, Any] | None:
    """The job's suspend field follows spec.suspend only when spec.suspend changes, and a
    queued job is never unsuspended here: Kueue admits it."""
    wanted = resource.spec.suspend
    applied = (job["metadata"].get("annotations") or {}).get(SUSPEND_ANNOTATION)
    if applied == str(wanted).lower():
        return None
    patch: dict[str, Any] = {"metadata": {"annotations": {SUSPEND_ANNOTATION: str(wanted).lower()}}}
    if wanted or resource.spec.queue_name is None:
        patch |= launcher.suspend_patch(wanted)
    return patch


def _published(resource: InternVLFinetune, body: dict[str, Any]) -> dict[str, Any]:
    """status.output of a run that succeeded: where the trainer publishes (docs/contract.md §3),
    the transformers layout when the spec exports it (as train.publish chooses)."""
    output = resource.spec.output
    layout = OutputLayout.under(output.uri, body["metadata"]["uid"])
    return {
        "modelUri": layout.model if "hf" in output.layouts else layout.model_original,
        "manifestUri": layout.manifest,
    }


def _finished(status: _Status, result: Result, resource: InternVLFinetune | None, body: dict[str, Any]) -> None:
    """The conditions of a run that ended, from the record: the job may be gone."""
    succeeded = result.type == "Succeeded"
    status.set(cond.RUNNING, "False", result.reason, result.message)
    status.set(cond.SUSPENDED, "False", "NotSuspended", "")
    status.set(
        cond.SUCCEEDED,
        "True" if succeeded else "False",
        result.reason,
        result.message if succeeded else "",
        "Normal" if succeeded else None,
    )
    status.set(
        cond.FAILED,
        "False" if succeeded else "True",
        result.reason,
        "" if succeeded else result.message,
        None if succeeded else "Warning",
    )
    job = status.record.job
    if job is not None:
        status.fields["job"] = job.model_dump(by_alias=True, exclude_none=True)
        status.set(cond.JOB_CREATED, "True", "JobCreated", f"{job.kind} {job.name}")
    if succeeded and resource is not None:
        status.fields["output"] = _published(resource, body)


def _act_on_job_phase(
    observed: Observed,
    settings: OperatorSettings,
    status: _Status,
    actions: Actions,
    resource: InternVLFinetune,
    result: Plan,
    launcher: Launcher,
    attempt: int,
) -> None:
    """What the job's phase makes of the run: success or a failure that cannot be retried ends it
    (result recorded), a retryable failure with restarts left deletes the job and starts the next
    attempt, and otherwise the phase shows as the Running and Suspended conditions."""
    job = observed.job or {}
    state = launcher.state(job, observed.pods)
    if state.phase == "Succeeded":
        ended = Result(type="Succeeded", reason=state.reason, message=state.message, time=_now(status))
        status.record = status.record.model_copy(update={"result": ended})
        _finished(status, ended, resource, observed.body)
    elif state.phase == "Failed":
        failure = f"{state.reason}: {state.message}".rstrip(": ")[:RECORDED_MESSAGE_MAX]
        status.record = status.record.model_copy(update={"last_failure_reason": failure})
        if state.retryable and attempt <= resource.spec.max_restarts:
            actions.delete_job = {"apiVersion": job["apiVersion"], "kind": job["kind"], "name": job["metadata"]["name"]}
            actions.job_patch = None
            status.events.append(
                ("Warning", "Restarting", f"attempt {attempt} failed ({failure}); starting attempt {attempt + 1}")
            )
            status.set(cond.RUNNING, "False", state.reason, state.message)
            _create_attempt(observed, settings, status, actions, resource, result, launcher, attempt + 1)
        else:
            why = "" if state.retryable else " (not retried: a restart cannot fix it)"
            message = f"attempt {attempt}: {state.message}{why}"[:RECORDED_MESSAGE_MAX]
            ended = Result(type="Failed", reason=state.reason, message=message, time=_now(status))
            status.record = status.record.model_copy(update={"result": ended})
            _finished(status, ended, resource, observed.body)
    elif state.phase == "Suspended":
        message = "; ".join(part for part in (state.message, observed.queue_message) if part)
        status.set(cond.SUSPENDED, "True", state.reason, message, "Normal")
        status.set(cond.RUNNING, "False", state.reason, state.message)
    elif state.phase == "Running":
        status.set(cond.SUSPENDED, "False", "NotSuspended", "")
        status.set(cond.RUNNING, "True", state.reason, state.message, "Normal")
    else:
        status.set(cond.SUSPENDED, "False", "NotSuspended", "")
        status.set(
            cond.RUNNING,
            "False",
            state.reason,
            state.message,
            "Warning" if state.reason != "JobPending" else None,
        )

"""What a child job is doing, read from its status and its pods.

PyTorchJob and MPIJob report conditions of their own (Created, Running, Restarting, Suspended,
Succeeded, Failed) with reasons such as ``PyTorchJobFailed``. A TrainJob (Kubeflow Trainer v2)
reports only ``Suspended``, ``Complete`` and ``Failed`` (the last two copied from its JobSet, with
the JobSet's reasons such as ``AllJobsCompleted`` and ``FailedJobs``) and, per replicated job,
counts of child Jobs in ``status.jobsStatus``: it runs once every pod of its ``node`` job is ready.
None of them says why pods do not start or why a process died, so the pods are read too: a pod that
cannot be scheduled, an image that cannot be pulled, a container that crash-loops or was
OOM-killed gives the reason, and the trainer's exit code 2 (bad input) marks a failure that a
restart cannot fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from internvl_trainer.problems import EXIT_BAD_INPUT

Phase = Literal["Pending", "Running", "Suspended", "Succeeded", "Failed"]

WAITING_CAUSES = (
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CrashLoopBackOff",
)


@dataclass(frozen=True)
class JobState:
    """The job's phase, a one-word reason and a message for the InternVLFinetune's conditions."""

    phase: Phase
    reason: str
    message: str
    retryable: bool = True


def _true_conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    conditions = job.get("status", {}).get("conditions") or []
    return {c["type"]: c for c in conditions if c.get("status") == "True"}


def pod_cause(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The first pod-level reason a job is stuck or failed: unschedulable, image pull, config,
    crash loop or OOM-kill, with the pod's name in the message."""
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status", {})
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
                return "Unschedulable", f"pod {name}: {condition.get('message', '')}".rstrip(": ")
        for container in status.get("containerStatuses") or []:
            waiting = container.get("state", {}).get("waiting") or {}
            if waiting.get("reason") in WAITING_CAUSES:
                return waiting["reason"], f"pod {name}, container {container['name']}: {waiting.get('message', '')}"
            for state in (container.get("state", {}), container.get("lastState", {})):
                if (state.get("terminated") or {}).get("reason") == "OOMKilled":
                    return "OOMKilled", f"pod {name}, container {container['name']} ran out of memory"
    return None


def bad_input_exit(pods: list[dict[str, Any]]) -> str | None:
    """The pod whose trainer exited with the bad-input code, if any."""
    for pod in pods:
        for container in pod.get("status", {}).get("containerStatuses") or []:
            terminated = container.get("state", {}).get("terminated") or {}
            if terminated.get("exitCode") == EXIT_BAD_INPUT:
                return pod["metadata"]["name"]
    return None


TRAINER_JOB = "node"
"""The TrainJob's replicated job that runs the trainer (Trainer's runtime convention)."""

# Trainer's reason for a TrainJob whose runtime it cannot find: a Failed condition it takes back
# once the runtime exists, so the job waits rather than fails (a restart could not help).
RUNTIME_NOT_SUPPORTED = "TrainingRuntimeNotSupported"


def needs_pods(job: dict[str, Any]) -> bool:
    """Whether the pods of a PyTorchJob or MPIJob can tell more than the job: only while it is
    pending or once it failed."""
    return not {"Succeeded", "Running", "Suspended"} & _true_conditions(job).keys()


def job_state(job: dict[str, Any], pods: list[dict[str, Any]]) -> JobState:
    """Interpret a PyTorchJob or MPIJob and its pods."""
    true = _true_conditions(job)
    suspended = bool(job.get("spec", {}).get("runPolicy", {}).get("suspend"))
    running = true["Running"].get("message", "") if "Running" in true else None
    return _state(true, pods, succeeded="Succeeded", suspended=suspended, running=running)


def trainjob_needs_pods(job: dict[str, Any]) -> bool:
    """Whether the pods of a TrainJob can tell more than the TrainJob: only while it is pending
    or once it failed."""
    return not ({"Complete", "Suspended"} & _true_conditions(job).keys() or _trainer_ready(job))


def trainjob_state(job: dict[str, Any], pods: list[dict[str, Any]]) -> JobState:
    """Interpret a TrainJob and its pods as a PyTorchJob is interpreted: ``Complete`` is success,
    and it runs once every pod of its ``node`` job is ready."""
    true = _true_conditions(job)
    failed = true.get("Failed", {})
    if failed.get("reason") == RUNTIME_NOT_SUPPORTED:
        runtime = job.get("spec", {}).get("runtimeRef") or {}
        missing = f"{runtime.get('kind', 'ClusterTrainingRuntime')} {runtime.get('name')}"
        return JobState(
            "Pending",
            RUNTIME_NOT_SUPPORTED,
            f"{failed.get('message', '')}; install the {missing} (the chart's value trainJob.runtime.install=true): "
            "Trainer then starts the job".lstrip("; "),
        )
    suspended = bool(job.get("spec", {}).get("suspend"))
    running = f"every pod of the {TRAINER_JOB} job is ready" if _trainer_ready(job) else None
    return _state(true, pods, succeeded="Complete", suspended=suspended, running=running)


def _trainer_ready(job: dict[str, Any]) -> bool:
    """Whether every active child Job of the ``node`` job is ready: JobSet counts a Job active
    while any of its pods runs or waits, and ready once its ready and completed pods reach the
    Job's pod count, so a running Job counts in both."""
    for status in job.get("status", {}).get("jobsStatus") or []:
        if status.get("name") == TRAINER_JOB:
            ready = status.get("ready") or 0
            return ready > 0 and ready >= (status.get("active") or 0)
    return False


def _state(
    true: dict[str, dict[str, Any]],
    pods: list[dict[str, Any]],
    *,
    succeeded: str,
    suspended: bool,
    running: str | None,
) -> JobState:
    """The phase from a job's true conditions, named ``succeeded``, ``Failed`` and ``Suspended``,
    whether its spec suspends it, the message it runs with (None while it does not) and its pods."""
    if succeeded in true:
        return JobState("Succeeded", "JobSucceeded", true[succeeded].get("message", ""))
    if "Failed" in true:
        message = true["Failed"].get("message", "")
        bad_pod = bad_input_exit(pods)
        if bad_pod:
            return JobState("Failed", "InvalidInput", f"the trainer in pod {bad_pod} refused its input", False)
        cause = pod_cause(pods)
        if cause:
            return JobState("Failed", cause[0], f"{cause[1]}; {message}".rstrip("; "))
        return JobState("Failed", true["Failed"].get("reason") or "JobFailed", message)
    if "Suspended" in true or suspended:
        condition = true.get("Suspended", {})
        return JobState("Suspended", condition.get("reason") or "JobSuspended", condition.get("message", ""))
    cause = pod_cause(pods)
    if cause and cause[0] != "OOMKilled":
        return JobState("Pending", cause[0], cause[1])
    if running is not None:
        return JobState("Running", "JobRunning", running)
    return JobState("Pending", "JobPending", "waiting for the job's pods to start")

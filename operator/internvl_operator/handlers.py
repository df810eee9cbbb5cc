"""The kopf handlers: watch InternVLFinetunes, their jobs and their pods; reconcile the object.

Handlers are thin: they read the object, its current job and that job's pods through
``Cluster``, call the pure ``reconcile``, and carry out its actions. One reconciler serves every
event source (an object changed, its status included; a job or pod of it changed), serialised per
object, so the order of events never matters and a restarted operator converges to the same state
without duplicates: child names are deterministic, the operator's record names the job it made,
and an existing child is adopted only when it is what the operator renders.

Nothing here raises: an API call that failed in a way a retry can fix is tried again with backoff
(``internvl_operator.backoff``), a refused child shows in the status, and anything else is logged.

Only event handlers are used. kopf keeps no per-object progress for them, and unlike timers and
daemons they need no finalizer, so deleting an InternVLFinetune never waits for the operator;
its children go with it through owner references.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import kopf

from internvl_operator import metrics
from internvl_operator.api import KIND, PLURAL
from internvl_operator.backoff import BASE_SECONDS, Backoff
from internvl_operator.cluster import ApiError, Cluster, load_api_client
from internvl_operator.launchers import LAUNCHERS, Launcher
from internvl_operator.reconcile import (
    Actions,
    Observed,
    Outcome,
    Refused,
    current_attempt,
    job_name,
    launcher_of,
    reconcile,
)
from internvl_operator.record import Record, read_record, record_patch
from internvl_operator.render.content import difference
from internvl_operator.render.context import ATTEMPT_LABEL, MANAGED_BY, QUEUE_LABEL, UID_LABEL
from internvl_operator.settings import OperatorSettings
from internvl_trainer.config import API_GROUP, API_VERSION, GROUP_VERSION

REGISTRY = kopf.OperatorRegistry()
CHILD_LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY}
# How long a check that a launcher's CRD is served stays valid.
DISCOVERY_TTL_SECONDS = 60.0
KUEUE_API = "kueue.x-k8s.io/v1beta1"

logger = logging.getLogger(__name__)


@kopf.on.login(registry=REGISTRY)
def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """Tests and embedders hand in a connection through the memo; otherwise the pod's
    ServiceAccount or the kubeconfig, as kopf itself does."""
    if memo.get("connection") is not None:
        return memo.connection
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup(registry=REGISTRY)
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Own prefixes, so another kopf operator on the same objects cannot collide with this one.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP)
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    # Explicit timeouts against silently frozen watch streams.
    settings.watching.server_timeout = memo.get("server_timeout", 300)
    settings.watching.client_timeout = memo.get("server_timeout", 300) + 10
    settings.watching.connect_timeout = 30
    settings.scanning.disabled = True
    # Events are posted for transitions (reconcile's own); kopf's per-handler chatter stays in logs.
    settings.posting.level = logging.WARNING
    if memo.get("cluster") is None:
        memo.cluster = Cluster(load_api_client())
    if memo.get("operator_settings") is None:
        memo.operator_settings = OperatorSettings()
    memo.locks = defaultdict(threading.Lock)
    memo.served = {}
    memo.retries = Backoff(lambda key: reconcile_object(memo, *key), base=memo.get("retry_base_seconds", BASE_SECONDS))


@kopf.on.cleanup(registry=REGISTRY)
def stop_retrying(memo: kopf.Memo, **_: Any) -> None:
    memo.retries.stop()


@kopf.index(API_GROUP, API_VERSION, PLURAL, registry=REGISTRY)
def finetunes_by_uid(namespace: str, name: str, uid: str, **_: Any) -> dict[str, tuple[str, str]]:
    return {uid: (namespace, name)}


@kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=REGISTRY)
def finetune_changed(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if event.get("type") == "DELETED" or body.metadata.get("deletionTimestamp"):
        metrics.observe(body.metadata.uid, None)
        return
    # Every change, a status patch included: the operator derives the status it owns again, so
    # what anyone else wrote there (the trainer may patch the status) is reverted; after its own
    # patches nothing differs any more.
    reconcile_object(memo, body.metadata.namespace, body.metadata.name)


def _has_status(body: kopf.Body, **_: Any) -> bool:
    # A child without status (just created) says nothing the object's reconciliation did not know.
    return bool(body.get("status"))


@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS, when=_has_status, registry=REGISTRY)
def child_changed(body: kopf.Body, memo: kopf.Memo, finetunes_by_uid: kopf.Index, **_: Any) -> None:
    for namespace, name in list(finetunes_by_uid.get(body.metadata.labels.get(UID_LABEL), [])):
        reconcile_object(memo, namespace, name)


for _launcher in LAUNCHERS.values():
    kopf.on.event(
        _launcher.group, _launcher.version, _launcher.plural, labels=CHILD_LABELS, when=_has_status, registry=REGISTRY
    )(child_changed)


def reconcile_object(memo: kopf.Memo, namespace: str, name: str) -> None:
    """Read, reconcile, act; never raising, so a bad object or a flaky API server cannot stop the
    operator. What a retry can fix is tried again later, with backoff."""
    try:
        with memo.locks[(namespace, name)]:
            retry = _reconcile_once(memo, namespace, name)
        metrics.RECONCILES.labels("ok").inc()
    except ApiError as error:
        metrics.RECONCILES.labels("error").inc()
        logger.warning("reconciling %s/%s failed: %s", namespace, name, error)
        retry = error.retryable
    except Exception:
        metrics.RECONCILES.labels("error").inc()
        logger.exception("reconciling %s/%s failed", namespace, name)
        retry = False
    memo.retries.settle((namespace, name), retry)


def _reconcile_once(memo: kopf.Memo, namespace: str, name: str) -> bool:
    """One reconciliation; whether it should be tried again later."""
    cluster: Cluster = memo.cluster
    body = cluster.get(GROUP_VERSION, KIND, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return False
    served = frozenset(launcher.name for launcher in LAUNCHERS.values() if _served(memo, launcher))
    launcher = launcher_of(body, served)
    job = None
    if launcher is not None and launcher.name in served:
        job = cluster.get(launcher.api_version, launcher.kind, namespace, job_name(body))
    pods = []
    if job is not None and launcher.needs_pods(job):
        labels = {UID_LABEL: body["metadata"]["uid"], ATTEMPT_LABEL: str(current_attempt(body))}
        pods = cluster.list("v1", "Pod", namespace, labels)
    queue_message = _queue_message(cluster, namespace, launcher, job) if job is not None else None
    observed = Observed(body, job, pods, served, datetime.now(UTC), queue_message)
    actions = _act(cluster, observed, memo.operator_settings)
    conditions = actions.status.get("conditions") or (body.get("status") or {}).get("conditions") or []
    metrics.observe(body["metadata"]["uid"], metrics.state_of(conditions))
    return actions.retry


def _queue_message(cluster: Cluster, namespace: str, launcher: Launcher, job: dict[str, Any]) -> str | None:
    """The message of the Kueue Workload holding a suspended, queued job, or what to configure
    when there is none; None where Kueue's Workloads are not readable."""
    if not launcher.suspended(job) or QUEUE_LABEL not in job["metadata"].get("labels", {}):
        return None
    try:
        workloads = cluster.list(KUEUE_API, "Workload", namespace, {"kueue.x-k8s.io/job-uid": job["metadata"]["uid"]})
    except ApiError as error:
        logger.debug("Kueue Workloads not readable: %s", error)
        return None
    if not workloads:
        return (
            f"Kueue has no Workload for this {launcher.kind} yet; if none comes, Kueue does not manage the kind: "
            f"add {launcher.kueue_framework} to integrations.frameworks in Kueue's configuration"
        )
    for workload in workloads:
        for condition in (workload.get("status") or {}).get("conditions") or []:
            if condition.get("type") in ("QuotaReserved", "Admitted") and condition.get("status") == "False":
                return condition.get("message")
    return None


def _served(memo: kopf.Memo, launcher: Launcher) -> bool:
    checked = memo.served.get(launcher.kind)
    if checked is None or time.monotonic() - checked[1] > memo.get("discovery_ttl_seconds", DISCOVERY_TTL_SECONDS):
        checked = (memo.cluster.serves(launcher.api_version, launcher.kind), time.monotonic())
        memo.served[launcher.kind] = checked
    return checked[0]


def _act(cluster: Cluster, observed: Observed, settings: OperatorSettings) -> Actions:
    """Carry out a reconciliation: the record first (a restarted operator must find the attempt
    it was on), then the failed job's deletion and the new children; reconciled again with what
    became of them; then the job's patch, the status and the events."""
    body = observed.body
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    actions = reconcile(observed, settings)
    stored = _write_record(cluster, body, read_record(body), actions.record)
    if actions.delete_job:
        ref = actions.delete_job
        cluster.delete(ref["apiVersion"], ref["kind"], namespace, ref["name"])
    if actions.create:
        outcome = _create(cluster, actions.create, LAUNCHERS[stored.launcher].suspend_path)
        actions = reconcile(dataclasses.replace(observed, outcome=outcome), settings)
        _write_record(cluster, body, stored, actions.record)
    if actions.job_patch and observed.job is not None:
        job = observed.job
        cluster.patch(job["apiVersion"], job["kind"], namespace, job["metadata"]["name"], actions.job_patch)
    if actions.status:
        cluster.patch(GROUP_VERSION, KIND, namespace, name, {"status": actions.status}, subresource="status")
    for type_, reason, message in actions.events:
        kopf.event(body, type=type_, reason=reason, message=message)
    return actions


def _write_record(cluster: Cluster, body: dict[str, Any], stored: Record, wanted: Record | None) -> Record:
    """Write the operator's record when it differs from the one stored; the record now stored."""
    if wanted is None or wanted == stored:
        return stored
    metadata = body["metadata"]
    cluster.patch(GROUP_VERSION, KIND, metadata["namespace"], metadata["name"], record_patch(wanted))
    return wanted


def _create(cluster: Cluster, children: list[dict[str, Any]], suspend_path: tuple[str, ...]) -> Outcome:
    """Create the children in order, adopting one whose name is taken only when the object found
    is that child (render.content; ``suspend_path`` is the launcher's suspend field); stop at the
    first that is not created."""
    created: dict[str, Any] = {}
    for child in children:
        meta = child["metadata"]
        try:
            created = cluster.create(child)
            continue
        except ApiError as error:
            if error.status != 409:
                return Outcome(
                    refused=Refused(child["kind"], meta["name"], error.status, error.message, error.retryable)
                )
        created = cluster.get(child["apiVersion"], child["kind"], meta.get("namespace"), meta["name"]) or {}
        conflict = difference(child, created, suspend_path)
        if conflict:
            return Outcome(refused=Refused(child["kind"], meta["name"], 409, conflict, retryable=False))
    return Outcome(job=created)  # the job is rendered last

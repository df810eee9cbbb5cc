"""End-to-end fixtures: any real cluster given by KUBECONFIG, skipped with a clear message when
none is reachable.

``E2E_OPERATOR=inprocess`` (default) runs the operator in this process, watching a fresh
namespace; ``installed`` expects an operator already installed (by Helm, as the Deployment
``E2E_OPERATOR_DEPLOYMENT``, default ``internvl-system/internvl-operator``) that watches it too.

Every launcher runs against whatever the cluster has. Where the API server does not serve a
launcher's kind, the suite installs its upstream CRDs from the shared reference folder (Training
Operator v1's PyTorchJob, MPI Operator v2's MPIJob v2beta1, Trainer v2.3's TrainJob with its
runtimes), labelled as the suite's, and plays that launcher's controller: the tests patch the
job's status as the controller would (``E2ECluster.play``). Where the kind was served already, a
real controller runs and the tests leave the status to it. A launcher the suite can neither find
nor install (an MPIJob CRD of another version, no copy of the CRD) is skipped, saying why.
TrainJobs name the ClusterTrainingRuntime ``internvl-torch``: the suite creates it where absent
and deletes it at the end.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

import kopf
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from internvl_operator.cluster import ApiError, Cluster, load_api_client
from internvl_operator.crd import crd
from internvl_operator.handlers import REGISTRY
from internvl_operator.job_status import TRAINER_JOB
from internvl_operator.launchers import LAUNCHERS, Launcher
from internvl_operator.render.runtime import cluster_training_runtime
from internvl_operator.render.trainjob import API_VERSION as TRAINER_API_VERSION
from internvl_operator.render.trainjob import RUNTIME_KIND, RUNTIME_NAME
from internvl_operator.settings import OperatorSettings
from tests.conftest import REPO

KUBEFLOW_CRDS = REPO.parent / "shared" / "reference" / "crds"
# The upstream CRDs that make each launcher's kind served (a TrainJob's runtimes come with it).
LAUNCHER_CRD_FILES = {
    "pytorchjob": ("kubeflow.org_pytorchjobs.yaml",),
    "mpijob": ("kubeflow.org_mpijobs.v2beta1.yaml",),
    "trainjob": (
        "trainer.kubeflow.org_trainjobs.yaml",
        "trainer.kubeflow.org_clustertrainingruntimes.yaml",
        "trainer.kubeflow.org_trainingruntimes.yaml",
    ),
}
CRD_API = "apiextensions.k8s.io/v1"
# On every CRD the suite installs: its kind has no controller, so a later run on the same cluster
# plays it too.
PLAYED_LABEL = "internvl.dev/e2e-played-controller"
# The ClusterTrainingRuntime every TrainJob names: group, version, plural.
RUNTIME_RESOURCE = (*TRAINER_API_VERSION.split("/"), f"{RUNTIME_KIND.lower()}s")
FINETUNE = "internvl.dev/v1alpha1"
SETTINGS = OperatorSettings(trainer_image="registry.invalid/internvl-trainer:e2e")
TIMEOUT = float(os.environ.get("E2E_TIMEOUT", "120"))

Outcome = Literal["running", "succeeded", "failed"]


@dataclass
class E2ECluster:
    """A reachable cluster, a namespace of this run, and which launchers the suite plays."""

    client: Cluster
    namespace: str
    played: frozenset[str]
    """The launchers (spec.launcher names) whose controller the suite plays."""
    unavailable: dict[str, str]
    """The launchers that cannot run on this cluster, each with why."""

    def launcher(self, name: str) -> Launcher:
        """The launcher of this name; the test is skipped where it cannot run here."""
        if name in self.unavailable:
            pytest.skip(f"{name}: {self.unavailable[name]}")
        return LAUNCHERS[name]

    def play(self, launcher: Launcher, name: str, outcome: Outcome) -> None:
        """Be the launcher's controller: write the status it writes on a job that runs, succeeded
        or failed."""
        assert launcher.name in self.played, f"a real {launcher.kind} controller runs here: its status is its own"
        status = played_status(launcher, outcome)
        self.client.patch(
            launcher.api_version, launcher.kind, self.namespace, name, {"status": status}, subresource="status"
        )

    def wait_for(self, check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def kubectl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["kubectl", "-n", self.namespace, *args], capture_output=True, text=True, timeout=TIMEOUT)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kubeflow_job_status(kind: str, outcome: Outcome) -> dict[str, Any]:
    """The status Training Operator v1 writes on a PyTorchJob and MPI Operator v2 on an MPIJob
    (kubeflow-jobs §1.9, §2.3): conditions whose reason is the kind and the type
    (``PyTorchJobRunning``); once the job ended, Running turns False beside Succeeded or Failed."""
    now = _now()

    def condition(type_: str, status: str = "True") -> dict[str, str]:
        return {
            "type": type_,
            "status": status,
            "reason": f"{kind}{type_}",
            "message": f"{kind} {type_.lower()} (played by the e2e suite)",
            "lastUpdateTime": now,
            "lastTransitionTime": now,
        }

    if outcome == "running":
        return {"conditions": [condition("Created"), condition("Running")], "startTime": now}
    ended = condition("Succeeded" if outcome == "succeeded" else "Failed")
    return {
        "conditions": [condition("Created"), condition("Running", "False"), ended],
        "startTime": now,
        "completionTime": now,
    }


def trainjob_status(outcome: Outcome) -> dict[str, Any]:
    """The status Trainer v2.3 writes on a TrainJob (kubeflow-jobs §3.8): per replicated job the
    counts of its child Jobs (``jobsStatus``; the runtime's ``node`` job is one Job, ready once
    its pods are) and, once the JobSet ended, its terminal condition as a metav1.Condition with
    JobSet's reason (the runtime allows no restart, so a failure reached the maximum of 0)."""
    counts = {"name": TRAINER_JOB, "active": 0, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}
    if outcome == "running":
        return {"jobsStatus": [counts | {"active": 1, "ready": 1}]}
    if outcome == "succeeded":
        type_, reason, message, count = "Complete", "AllJobsCompleted", "jobset completed successfully", "succeeded"
    else:
        type_, reason = "Failed", "ReachedMaxRestarts"
        message, count = "jobset failed due to reaching max number of restarts", "failed"
    condition = {"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": _now()}
    return {"conditions": [condition], "jobsStatus": [counts | {count: 1}]}


PLAYED_STATUS: dict[str, Callable[[Outcome], dict[str, Any]]] = {
    "pytorchjob": partial(kubeflow_job_status, LAUNCHERS["pytorchjob"].kind),
    "mpijob": partial(kubeflow_job_status, LAUNCHERS["mpijob"].kind),
    "trainjob": trainjob_status,
}
"""What each launcher's controller writes, by spec.launcher name."""


def played_status(launcher: Launcher, outcome: Outcome) -> dict[str, Any]:
    return PLAYED_STATUS[launcher.name](outcome)


def _reachable() -> tuple[k8s.ApiClient, Cluster]:
    try:
        api = load_api_client()
    except (k8s_config.ConfigException, OSError) as error:
        pytest.skip(f"no Kubernetes cluster configured (KUBECONFIG or ~/.kube/config): {error}")
    cluster = Cluster(api)
    try:
        cluster.serves("v1", "Pod")
    except Exception as error:  # any failure here means there is no usable cluster
        pytest.skip(f"the Kubernetes cluster of KUBECONFIG is not reachable: {error}")
    return api, cluster


def _create_crd(cluster: Cluster, document: dict[str, Any]) -> None:
    try:
        cluster.create(document)
    except ApiError as error:
        if error.status != 409:
            raise


def _served_versions(cluster: Cluster, name: str) -> set[str] | None:
    """The versions a CRD serves once established; None while it is not."""
    found = cluster.get(CRD_API, "CustomResourceDefinition", None, name) or {}
    conditions = (found.get("status") or {}).get("conditions") or []
    if not any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
        return None
    return {version["name"] for version in found["spec"]["versions"] if version.get("served")}


def _install(cluster: Cluster, launcher: Launcher) -> str | None:
    """Install the launcher's upstream CRDs, labelled as the suite's, and wait until they are
    established; why the launcher cannot run here, or None."""
    paths = [KUBEFLOW_CRDS / name for name in LAUNCHER_CRD_FILES[launcher.name]]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        return f"{launcher.crd} is not served and the suite has no copy of it to install ({missing[0]} not found)"
    for path in paths:
        document = yaml.safe_load(path.read_text())
        document["metadata"].setdefault("labels", {})[PLAYED_LABEL] = "true"
        _create_crd(cluster, document)
        name = document["metadata"]["name"]
        [version] = [v["name"] for v in document["spec"]["versions"] if v.get("storage")]
        served = wait_until(lambda n=name: _served_versions(cluster, n), f"the CRD {name} to be established")
        if version not in served:
            # A CRD of that name serving other versions (the Training Operator's MPIJob v1): the
            # suite does not replace what the cluster has.
            return f"the cluster's CRD {name} serves {sorted(served)}, not {version}; the suite leaves it as it is"
    return None


def _plays(cluster: Cluster, launcher: Launcher) -> bool:
    """Whether the launcher's CRD is the suite's (installed by this run or an earlier one)."""
    found = cluster.get(CRD_API, "CustomResourceDefinition", None, launcher.crd) or {}
    return PLAYED_LABEL in (found.get("metadata", {}).get("labels") or {})


def _create_runtime(api: k8s.ApiClient) -> bool:
    """Create the ClusterTrainingRuntime every TrainJob names where it is absent; whether the suite
    created it."""
    try:
        k8s.CustomObjectsApi(api).create_cluster_custom_object(*RUNTIME_RESOURCE, cluster_training_runtime(SETTINGS))
    except k8s.ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


def _delete_runtime(api: k8s.ApiClient) -> None:
    k8s.CustomObjectsApi(api).delete_cluster_custom_object(*RUNTIME_RESOURCE, RUNTIME_NAME)


@pytest.fixture(scope="session")
def e2e() -> Iterator[E2ECluster]:
    api, cluster = _reachable()
    _create_crd(cluster, crd())
    unavailable: dict[str, str] = {}
    installed = []
    for launcher in LAUNCHERS.values():
        if not cluster.serves(launcher.api_version, launcher.kind):
            why = _install(cluster, launcher)
            if why is None:
                installed.append(launcher.name)
            else:
                unavailable[launcher.name] = why
    served = [(FINETUNE, "InternVLFinetune")]
    served += [
        (launcher.api_version, launcher.kind) for launcher in LAUNCHERS.values() if launcher.name not in unavailable
    ]
    for api_version, kind in served:
        wait_until(lambda a=api_version, k=kind: cluster.serves(a, k), f"{kind} to be served")
    played = frozenset(
        name for name, launcher in LAUNCHERS.items() if name not in unavailable and _plays(cluster, launcher)
    )
    runtime_created = "trainjob" not in unavailable and _create_runtime(api)
    namespace = f"internvl-e2e-{uuid.uuid4().hex[:6]}"
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    running = None
    if os.environ.get("E2E_OPERATOR", "inprocess") == "inprocess":
        running = _start_operator(namespace)
    elif installed:
        _restart_installed_operator()
    try:
        yield E2ECluster(cluster, namespace, played, unavailable)
    finally:
        if running:
            running[0].set()
            running[1].join(TIMEOUT)
        cluster.delete("v1", "Namespace", None, namespace)
        if runtime_created:
            _delete_runtime(api)


def wait_until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)
    return result


def _start_operator(namespace: str) -> tuple[threading.Event, threading.Thread]:
    stop, ready = threading.Event(), threading.Event()
    memo = kopf.Memo(operator_settings=SETTINGS)
    operator = kopf.operator(
        registry=REGISTRY, namespaces=[namespace], standalone=True, memo=memo, stop_flag=stop, ready_flag=ready
    )
    thread = threading.Thread(target=asyncio.run, args=(operator,), daemon=True)
    thread.start()
    if not ready.wait(TIMEOUT):
        raise AssertionError("the in-process operator did not start")
    return stop, thread


def _restart_installed_operator() -> None:
    """The operator lists the kinds it watches once, at startup (kopf's scanning is off): one
    started before the suite installed a launcher's CRD watches its jobs only once restarted."""
    namespace, name = os.environ.get("E2E_OPERATOR_DEPLOYMENT", "internvl-system/internvl-operator").split("/")
    for verb in (["restart"], ["status", f"--timeout={TIMEOUT:.0f}s"]):
        command = ["kubectl", "-n", namespace, "rollout", *verb, f"deployment/{name}"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT + 30)
        assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"


def example(name: str, namespace: str) -> dict[str, Any]:
    obj = yaml.safe_load((REPO / "examples" / name).read_text())
    obj["metadata"]["namespace"] = namespace
    return obj


def named(example_file: str, e2e: E2ECluster, name: str, launcher: str | None = None) -> dict[str, Any]:
    """An example under another name, run by ``launcher`` (None: the spec's own, auto by default)."""
    obj = example(example_file, e2e.namespace)
    obj["metadata"]["name"] = name
    if launcher is not None:
        obj["spec"]["launcher"] = launcher
    return obj


def conditions_of(e2e: E2ECluster, name: str) -> dict[str, dict]:
    obj = e2e.client.get(FINETUNE, "InternVLFinetune", e2e.namespace, name) or {}
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def condition_is(e2e: E2ECluster, name: str, type_: str, status: str = "True", reason: str | None = None) -> bool:
    condition = conditions_of(e2e, name).get(type_, {})
    return condition.get("status") == status and reason in (None, condition.get("reason"))

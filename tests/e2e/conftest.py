"""End-to-end fixtures: any real cluster given by KUBECONFIG, skipped with a clear message when
none is reachable.

``E2E_OPERATOR=inprocess`` (default) runs the operator in this process, watching a fresh
namespace; ``installed`` expects an operator already installed (by Helm) that watches it too.
On a bare control plane (no Kubeflow CRDs) the suite installs the Kubeflow CRDs from the shared
reference folder and plays the training operator by patching job status itself.
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
from typing import Any

import kopf
import pytest
import yaml
from kubernetes import config as k8s_config

from internvl_operator.cluster import ApiError, Cluster, load_api_client
from internvl_operator.crd import crd
from internvl_operator.handlers import REGISTRY
from internvl_operator.settings import OperatorSettings
from tests.conftest import REPO

KUBEFLOW_CRDS = REPO.parent / "shared" / "reference" / "crds"
KUBEFLOW_CRD_FILES = ("kubeflow.org_pytorchjobs.yaml", "kubeflow.org_mpijobs.v2beta1.yaml")
TIMEOUT = float(os.environ.get("E2E_TIMEOUT", "120"))


@dataclass
class E2ECluster:
    """A reachable cluster, a namespace of this run, and whether the test plays Kubeflow."""

    client: Cluster
    namespace: str
    play_training_operator: bool

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


def _reachable_client() -> Cluster:
    try:
        api = load_api_client()
    except (k8s_config.ConfigException, OSError) as error:
        pytest.skip(f"no Kubernetes cluster configured (KUBECONFIG or ~/.kube/config): {error}")
    cluster = Cluster(api)
    try:
        cluster.serves("v1", "Pod")
    except Exception as error:  # any failure here means there is no usable cluster
        pytest.skip(f"the Kubernetes cluster of KUBECONFIG is not reachable: {error}")
    return cluster


def _apply_crd(cluster: Cluster, document: dict[str, Any]) -> None:
    try:
        cluster.create(document)
    except ApiError as error:
        if error.status != 409:
            raise


@pytest.fixture(scope="session")
def e2e() -> Iterator[E2ECluster]:
    cluster = _reachable_client()
    _apply_crd(cluster, crd())
    play = not cluster.serves("kubeflow.org/v1", "PyTorchJob")
    if play:
        for name in KUBEFLOW_CRD_FILES:
            _apply_crd(cluster, yaml.safe_load((KUBEFLOW_CRDS / name).read_text()))
    for api_version, kind in (("internvl.dev/v1alpha1", "InternVLFinetune"), ("kubeflow.org/v1", "PyTorchJob")):
        cluster_wait(lambda a=api_version, k=kind: cluster.serves(a, k), f"{kind} to be served")
    namespace = f"internvl-e2e-{uuid.uuid4().hex[:6]}"
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    running = None
    if os.environ.get("E2E_OPERATOR", "inprocess") == "inprocess":
        running = _start_operator(namespace)
    try:
        yield E2ECluster(cluster, namespace, play)
    finally:
        if running:
            running[0].set()
            running[1].join(TIMEOUT)
        cluster.delete("v1", "Namespace", None, namespace)


def cluster_wait(check: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)


def _start_operator(namespace: str) -> tuple[threading.Event, threading.Thread]:
    stop, ready = threading.Event(), threading.Event()
    memo = kopf.Memo(operator_settings=OperatorSettings(trainer_image="registry.invalid/internvl-trainer:e2e"))
    operator = kopf.operator(
        registry=REGISTRY, namespaces=[namespace], standalone=True, memo=memo, stop_flag=stop, ready_flag=ready
    )
    thread = threading.Thread(target=asyncio.run, args=(operator,), daemon=True)
    thread.start()
    if not ready.wait(TIMEOUT):
        raise AssertionError("the in-process operator did not start")
    return stop, thread


def job_succeeded() -> dict[str, str]:
    """The condition a training operator sets on a job that succeeded (the suite plays it where no
    real training can run)."""
    return {
        "type": "Succeeded",
        "status": "True",
        "reason": "PyTorchJobSucceeded",
        "message": "played by the e2e suite",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "lastUpdateTime": "2026-01-01T00:00:00Z",
    }


def example(name: str, namespace: str) -> dict[str, Any]:
    obj = yaml.safe_load((REPO / "examples" / name).read_text())
    obj["metadata"]["namespace"] = namespace
    return obj

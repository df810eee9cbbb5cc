"""The operator against an emulated API server (kmock), for the flow tests and the operator
benchmark (``benchmarks/operator.py``), as ``kopf.testing`` does for kopf: the resources the
operator uses, made servable on an emulator, and a client for the emulator's URL. Kept out of the
operator's package: nothing in a cluster runs it, and kmock is a development dependency."""

from __future__ import annotations

import uuid
from typing import Any

import kmock
from kubernetes import client as k8s

from internvl_operator.cluster import Cluster

RESOURCES = {
    "internvl.dev/v1alpha1/internvlfinetunes": "InternVLFinetune",
    "kubeflow.org/v1/pytorchjobs": "PyTorchJob",
    "kubeflow.org/v2beta1/mpijobs": "MPIJob",
    "trainer.kubeflow.org/v1alpha1/trainjobs": "TrainJob",
    "v1/pods": "Pod",
    "v1/configmaps": "ConfigMap",
    "v1/serviceaccounts": "ServiceAccount",
    "rbac.authorization.k8s.io/v1/roles": "Role",
    "rbac.authorization.k8s.io/v1/rolebindings": "RoleBinding",
    "v1/namespaces": "Namespace",
    "v1/events": "Event",
    "kueue.x-k8s.io/v1beta1/workloads": "Workload",
}
"""Every resource the operator reads or writes (``api-version/plural``: kind)."""


def serve(emulator: Any, resources: dict[str, str] = RESOURCES) -> None:
    """Make ``resources`` servable on a kmock emulator: kind, scope, every verb, a status
    subresource; and give every object created a uid, as an API server does."""
    for resource, kind in resources.items():
        info = emulator.resources[resource]
        info.kind, info.namespaced = kind, kind != "Namespace"
        info.verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}
        info.subresources = {"status"}

    def assign_uid(request: Any) -> Any:
        metadata = request.data.get("metadata") or {}
        stored = emulator.objects[
            request.resource, request.namespace or metadata.get("namespace"), metadata.get("name")
        ]
        if not stored.get("metadata", {}).get("uid"):
            stored.patch({"metadata": {"uid": str(uuid.uuid4())}})
        raise NotImplementedError  # not an answer: the request is served as usual

    emulator["post", kmock.action.CREATE] << assign_uid


def client_for(url: str) -> Cluster:
    """A cluster client of the API server at ``url`` (no credentials)."""
    return Cluster(k8s.ApiClient(k8s.Configuration(host=url)))

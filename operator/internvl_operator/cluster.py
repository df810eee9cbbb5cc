"""The operator's only door to the API server: a few verbs on plain dicts.

Every object the operator touches goes through ``Cluster``, so its calls are few, named, and
recorded (``Cluster.calls``), which is what the Helm chart's RBAC is derived from. It speaks the
Kubernetes REST paths directly through the official client's authenticated transport, so it needs
no typed model per kind and no discovery round trip.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from internvl_operator.launchers import LAUNCHERS

# kind → (plural, namespaced); the kinds the operator reads or writes.
PLURALS = {
    "ConfigMap": "configmaps",
    "ServiceAccount": "serviceaccounts",
    "Pod": "pods",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    **{launcher.kind: launcher.plural for launcher in LAUNCHERS.values()},
    "InternVLFinetune": "internvlfinetunes",
    "Workload": "workloads",
    "Event": "events",
    "Namespace": "namespaces",
    "CustomResourceDefinition": "customresourcedefinitions",
}
CONTENT_MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """An API request that failed, with the HTTP status (0 when no answer came) and the server's
    message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later: no answer (a timeout, a refused
        connection), too many requests, or a server error. A refusal (400, 403, 404, 409, 422)
        stands until the request changes."""
        return self.status in (0, 429) or self.status >= 500


def _path(api_version: str, plural: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def load_api_client() -> k8s.ApiClient:
    """A client from the pod's ServiceAccount, else from KUBECONFIG or ~/.kube/config."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)
    return k8s.ApiClient(configuration)


class Cluster:
    """Get, list, create, patch and delete objects as dicts."""

    def __init__(self, api_client: k8s.ApiClient):
        self._api = api_client
        self._lock = threading.Lock()
        self.calls: set[tuple[str, str, str]] = set()
        """(verb, apiGroup, resource) of every request made, for deriving RBAC."""

    def _request(
        self,
        verb: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        group, resource = _group_and_resource(path)
        with self._lock:
            self.calls.add((verb, group, resource))
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body, _ = self._api.param_serialize(
            method, path, query_params=query, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            response = self._api.call_api(method, url, header_params=headers, body=body, _request_timeout=30)
            response.read()
        except k8s.ApiException as error:
            raise ApiError(error.status or 0, _message(error.body, error.reason)) from None
        except urllib3.exceptions.HTTPError as error:  # timeouts and connection errors
            raise ApiError(0, str(error)) from None
        if not 200 <= response.status < 300:
            raise ApiError(response.status, _message(response.data, response.reason))
        return json.loads(response.data) if response.data else {}

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self._request("get", "GET", _path(api_version, PLURALS[kind], namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Objects whose labels include ``labels`` (also checked here, for servers that ignore
        the selector)."""
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        path = _path(api_version, PLURALS[kind], namespace)
        items = self._request("list", "GET", path, query={"labelSelector": selector}).get("items") or []
        return [item for item in items if labels.items() <= (item.get("metadata", {}).get("labels") or {}).items()]

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        namespace = obj["metadata"].get("namespace")
        return self._request("create", "POST", _path(obj["apiVersion"], PLURALS[obj["kind"]], namespace), body=obj)

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: dict[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """A JSON merge patch (keys set to None are removed)."""
        path = _path(api_version, PLURALS[kind], namespace, name, subresource)
        return self._request("patch", "PATCH", path, body=patch, content_type=CONTENT_MERGE_PATCH)

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        """Delete in the background (children go by garbage collection); gone already is fine."""
        path = _path(api_version, PLURALS[kind], namespace, name)
        try:
            self._request("delete", "DELETE", path, body={"propagationPolicy": "Background"})
        except ApiError as error:
            if error.status != 404:
                raise

    def serves(self, api_version: str, kind: str) -> bool:
        """Whether the API server serves the kind at this version (its CRD is installed)."""
        path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        try:
            resources = self._request("get", "GET", path).get("resources") or []
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return any(r.get("name") == PLURALS[kind] for r in resources)


def _group_and_resource(path: str) -> tuple[str, str]:
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    if not rest:
        return group, ""
    resource = rest[0]
    if len(rest) > 2:
        resource += "/" + rest[2]
    return group, resource


def _message(data: Any, reason: str | None) -> str:
    try:
        return json.loads(data).get("message") or reason or ""
    except (TypeError, ValueError, AttributeError):
        return reason or ""

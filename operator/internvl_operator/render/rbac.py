"""The identity the trainer runs as: a ServiceAccount whose Role may read and patch the status of
its own InternVLFinetune and nothing else."""

from __future__ import annotations

from typing import Any

from internvl_operator import naming
from internvl_operator.api import PLURAL
from internvl_operator.render.context import RenderContext
from internvl_trainer.config import API_GROUP

COMPONENT = "trainer-identity"


def service_account(context: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": context.metadata(naming.trainer_account_name(context.name), COMPONENT, per_attempt=False),
    }


def role(context: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": context.metadata(naming.trainer_account_name(context.name), COMPONENT, per_attempt=False),
        "rules": [
            {
                "apiGroups": [API_GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [context.name],
                "verbs": ["get", "patch"],
            }
        ],
    }


def role_binding(context: RenderContext) -> dict[str, Any]:
    account = naming.trainer_account_name(context.name)
    subject = {"kind": "ServiceAccount", "name": account}
    if context.namespace:
        subject["namespace"] = context.namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": context.metadata(account, COMPONENT, per_attempt=False),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
        "subjects": [subject],
    }

"""Every permission the operator needs, and why: the source of the Helm chart's RBAC.

The operator's own calls go through ``Cluster``, which records them; the flow tests check that
every recorded call is declared here. kopf's watches add list and watch on the watched kinds and
create on events. Creating the trainer's Role requires holding what it grants (Kubernetes refuses
privilege escalation), hence get and patch on the status subresource.
"""

from __future__ import annotations

from internvl_operator.launchers import LAUNCHERS

# (apiGroup, resource, verbs)
OPERATOR_PERMISSIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # patch: the operator's record of a run is an annotation (internvl_operator.record).
    ("internvl.dev", "internvlfinetunes", ("get", "list", "watch", "patch")),
    ("internvl.dev", "internvlfinetunes/status", ("get", "patch")),
    # Every launcher's job: watched, read, created, patched (suspend) and deleted (restart).
    *(
        (launcher.group, launcher.plural, ("get", "list", "watch", "create", "patch", "delete"))
        for launcher in LAUNCHERS.values()
    ),
    ("", "pods", ("list", "watch")),
    ("", "configmaps", ("get", "create")),
    ("", "serviceaccounts", ("get", "create")),
    ("rbac.authorization.k8s.io", "roles", ("get", "create")),
    ("rbac.authorization.k8s.io", "rolebindings", ("get", "create")),
    ("", "events", ("create",)),
    # Optional: the message of the Kueue Workload holding a queued job.
    ("kueue.x-k8s.io", "workloads", ("list",)),
)

"""Pure functions from an InternVLFinetune, its plan and the operator's settings to the objects
the operator creates: the train.yaml ConfigMap, the trainer's RBAC, and the launcher's job
(``internvl_operator.launchers``).

Nothing here talks to a cluster; ``internvl-operator render`` prints the same objects, annotations
included, that the operator creates.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from internvl_operator.api import InternVLFinetuneSpec
from internvl_operator.render.content import content_hash
from internvl_operator.render.context import (
    CONTENT_HASH_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    SUSPEND_ANNOTATION,
    RenderContext,
)
from internvl_operator.render.rbac import role, role_binding, service_account
from internvl_operator.render.train_config import train_config_map

__all__ = ["RenderContext", "RenderError", "render", "spec_hash"]

# The spec fields that take effect on a running job: suspend (patched into the job) and
# maxRestarts (read when an attempt fails). A change to any other field is reported as ignored.
LIVE_FIELDS = ("suspend", "maxRestarts")


class RenderError(ValueError):
    """A rendered job that Kubeflow would refuse: a defect of the renderers, never of the spec."""


def spec_hash(spec: InternVLFinetuneSpec) -> str:
    """A hash of the spec without the fields that take effect on a running job."""
    wire = {key: value for key, value in spec.to_wire().items() if key not in LIVE_FIELDS}
    return hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()[:16]


def render(context: RenderContext) -> list[dict[str, Any]]:
    """Every child object of one attempt, in the order to apply them: the ConfigMap and RBAC the
    pods need first, the job last. Each carries its content hash; the job also the spec's hash
    and the spec.suspend it was made with."""
    job = context.launcher.render(context)
    problems = context.launcher.problems(job)
    if problems:
        raise RenderError(f"{job['kind']} {job['metadata']['name']}: " + "; ".join(problems))
    spec = context.resource.spec
    job["metadata"]["annotations"] = {
        **job["metadata"].get("annotations", {}),
        SPEC_HASH_ANNOTATION: spec_hash(spec),
        SUSPEND_ANNOTATION: str(spec.suspend).lower(),
    }
    children = [train_config_map(context), service_account(context), role(context), role_binding(context), job]
    for child in children:
        child["metadata"]["annotations"] = {
            **child["metadata"].get("annotations", {}),
            CONTENT_HASH_ANNOTATION: content_hash(child, context.launcher.suspend_path),
        }
    return children

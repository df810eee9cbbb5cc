"""Pure functions from an InternVLFinetune, its plan and the operator's settings to the objects
the operator creates: the train.yaml ConfigMap, the trainer's RBAC, and the Kubeflow job.

Nothing here talks to a cluster; ``internvl-operator render`` prints the same objects.
"""

from __future__ import annotations

from typing import Any

from internvl_operator.render.context import RenderContext
from internvl_operator.render.kubeflow_rules import job_problems
from internvl_operator.render.mpijob import mpijob
from internvl_operator.render.pytorchjob import pytorchjob
from internvl_operator.render.rbac import role, role_binding, service_account
from internvl_operator.render.train_config import train_config_map

__all__ = ["RenderContext", "RenderError", "render"]


class RenderError(ValueError):
    """A rendered job that Kubeflow would refuse: a defect of the renderers, never of the spec."""


def render(context: RenderContext) -> list[dict[str, Any]]:
    """Every child object of one attempt, in the order to apply them: the ConfigMap and RBAC the
    pods need first, the job last."""
    render_job = pytorchjob if context.resource.spec.launcher == "pytorchjob" else mpijob
    job = render_job(context)
    problems = job_problems(job)
    if problems:
        raise RenderError(f"{job['kind']} {job['metadata']['name']}: " + "; ".join(problems))
    return [train_config_map(context), service_account(context), role(context), role_binding(context), job]

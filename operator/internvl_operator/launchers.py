"""The launchers: the Kubeflow job kinds an attempt can run as, one entry each.

Everything the operator knows about a launcher is here, and every module reads it from here: the
renderers build the job, the reconciler checks that its CRD is served and writes its suspend
field, the handlers watch it and read it back, the permissions (and so the chart's RBAC) allow
it. Adding a launcher is one entry here and its renderer module.

``spec.launcher: auto`` (the default) leaves the choice to the cluster: at an object's first job
the operator takes the first launcher of ``AUTO_ORDER`` whose CRD is served and that can carry
the spec, and records it (``internvl_operator.record``); the object keeps it for good.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from internvl_operator.api import InternVLFinetuneSpec
from internvl_operator.job_status import JobState, job_state, needs_pods, trainjob_needs_pods, trainjob_state
from internvl_operator.render import mpijob, pytorchjob, trainjob
from internvl_operator.render.context import RenderContext
from internvl_operator.render.kubeflow_rules import mpijob_problems, pytorchjob_problems, trainjob_problems


@dataclass(frozen=True)
class Launcher:
    """One job kind: how it is named, built, checked, read and suspended."""

    kind: str
    api_version: str
    """The version the renderer writes; the operator watches and requires this one."""
    render: Callable[[RenderContext], dict[str, Any]]
    """The job of an attempt."""
    problems: Callable[[dict[str, Any]], list[str]]
    """What the launcher's webhook or controller would refuse in a rendered job, outside its CRD
    schema (an empty list when nothing)."""
    state: Callable[[dict[str, Any], list[dict[str, Any]]], JobState] = job_state
    """The job and its pods read as phase, reason and message (by default as Kubeflow v1's
    controllers write a job's status)."""
    needs_pods: Callable[[dict[str, Any]], bool] = needs_pods
    """Whether the pods can tell more than the job (read only then, to spare the API server)."""
    suspend_path: tuple[str, ...] = ("spec", "runPolicy", "suspend")
    """Where in the job its suspend field is; Kueue and spec.suspend write it."""
    unsupported: Callable[[InternVLFinetuneSpec], list[str]] = lambda spec: []
    """The spec fields set that the kind cannot carry, each with why (the object is then invalid
    rather than its job built without them)."""

    @property
    def name(self) -> str:
        """The value of spec.launcher that selects it: the kind in lower case."""
        return self.kind.lower()

    @property
    def plural(self) -> str:
        return f"{self.name}s"

    @property
    def kueue_framework(self) -> str:
        """The name Kueue's ``integrations.frameworks`` knows the kind by."""
        return f"{self.group}/{self.name}"

    @property
    def group(self) -> str:
        return self.api_version.split("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.split("/")[1]

    @property
    def crd(self) -> str:
        return f"{self.plural}.{self.group}"

    def suspended(self, job: dict[str, Any]) -> bool:
        value: Any = job
        for key in self.suspend_path:
            value = (value or {}).get(key)
        return bool(value)

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        """A merge patch setting the job's suspend field."""
        patch: Any = suspend
        for key in reversed(self.suspend_path):
            patch = {key: patch}
        return patch


LAUNCHERS: dict[str, Launcher] = {
    launcher.name: launcher
    for launcher in (
        Launcher(
            kind=pytorchjob.KIND,
            api_version=pytorchjob.API_VERSION,
            render=pytorchjob.pytorchjob,
            problems=pytorchjob_problems,
        ),
        Launcher(
            kind=mpijob.KIND,
            api_version=mpijob.API_VERSION,
            render=mpijob.mpijob,
            problems=mpijob_problems,
        ),
        Launcher(
            kind=trainjob.KIND,
            api_version=trainjob.API_VERSION,
            render=trainjob.trainjob,
            problems=trainjob_problems,
            state=trainjob_state,
            needs_pods=trainjob_needs_pods,
            suspend_path=("spec", "suspend"),
            unsupported=trainjob.unsupported_fields,
        ),
    )
}
"""Every launcher by the spec.launcher value that selects it."""

AUTO = "auto"
"""The spec.launcher value that lets the operator choose."""

AUTO_ORDER = ("trainjob", "pytorchjob", "mpijob")
"""What auto prefers: Kubeflow Trainer v2 where served (where Kubeflow and Kueue are going), then
the Training Operator v1's PyTorchJob, then the MPI Operator's MPIJob."""


def chosen(spec: InternVLFinetuneSpec, recorded: str | None, served: Collection[str]) -> Launcher | None:
    """The launcher an object runs as: the one recorded at its first job, which never changes;
    else the one spec.launcher names; for auto, the first of AUTO_ORDER that ``served`` names
    (the launchers whose CRDs the cluster serves) and that can carry the spec. None when auto
    finds none."""
    if recorded in LAUNCHERS:
        return LAUNCHERS[recorded]
    if spec.launcher != AUTO:
        return LAUNCHERS[spec.launcher]
    for name in AUTO_ORDER:
        if name in served and not LAUNCHERS[name].unsupported(spec):
            return LAUNCHERS[name]
    return None


def none_served(spec: InternVLFinetuneSpec, served: Collection[str]) -> str:
    """Why auto finds no launcher for the spec, and what to install."""
    install = "; ".join(f"{LAUNCHERS[name].kind}: the CRD {LAUNCHERS[name].crd}" for name in AUTO_ORDER)
    refusing = [LAUNCHERS[name] for name in AUTO_ORDER if name in served]
    carried = [f"{launcher.kind} ({'; '.join(launcher.unsupported(spec))})" for launcher in refusing]
    if not carried:
        return f"spec.launcher is auto and this cluster serves no launcher: install one of {install}"
    return (
        f"spec.launcher is auto and the launchers this cluster serves cannot carry the spec: {', '.join(carried)}; "
        f"install another launcher ({install}) or change the spec"
    )

"""The launcher registry is the one place a launcher is spelled, and its entries say what
Kubeflow and Kueue say (shared/reference/kubeflow-jobs.md §1-2, §4)."""

import ast
import copy
import sys
from pathlib import Path
from typing import get_args

import pytest

from internvl_operator.api import InternVLFinetuneSpec, JobReference, PlanStatus
from internvl_operator.handlers import REGISTRY
from internvl_operator.launchers import AUTO, AUTO_ORDER, LAUNCHERS
from internvl_operator.render import render
from tests.conftest import REPO
from tests.unit.operator.render.conftest import context_for

PACKAGE = REPO / "operator" / "internvl_operator"
# api.py names the launchers in its schema (Literals the CRD carries as enums); it cannot import
# the registry, which imports the renderers, which import it. test_api_names_what_the_registry_has
# keeps the two equal.
SCHEMA = PACKAGE / "api.py"

# (name, kind, apiVersion, plural, CRD, suspend field, Kueue framework)
EXPECTED = [
    (
        "pytorchjob",
        "PyTorchJob",
        "kubeflow.org/v1",
        "pytorchjobs",
        "pytorchjobs.kubeflow.org",
        ("spec", "runPolicy", "suspend"),
        "kubeflow.org/pytorchjob",
    ),
    (
        "mpijob",
        "MPIJob",
        "kubeflow.org/v2beta1",
        "mpijobs",
        "mpijobs.kubeflow.org",
        ("spec", "runPolicy", "suspend"),
        "kubeflow.org/mpijob",
    ),
    (
        "trainjob",
        "TrainJob",
        "trainer.kubeflow.org/v1alpha1",
        "trainjobs",
        "trainjobs.trainer.kubeflow.org",
        ("spec", "suspend"),
        "trainer.kubeflow.org/trainjob",
    ),
]


@pytest.mark.parametrize("expected", EXPECTED, ids=[row[0] for row in EXPECTED])
def test_entries_say_what_kubeflow_and_kueue_say(expected):
    launcher = LAUNCHERS[expected[0]]
    assert (
        launcher.name,
        launcher.kind,
        launcher.api_version,
        launcher.plural,
        launcher.crd,
        launcher.suspend_path,
        launcher.kueue_framework,
    ) == expected


def spelled(launcher) -> set[str]:
    return {launcher.kind, launcher.api_version, launcher.plural, launcher.crd, launcher.group}


def string_constants(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)}


def test_only_the_registry_and_the_renderers_spell_a_launcher():
    allowed = {Path(sys.modules[launcher.render.__module__].__file__) for launcher in LAUNCHERS.values()}
    allowed |= {PACKAGE / "launchers.py", SCHEMA}
    names = set().union(*map(spelled, LAUNCHERS.values()))
    found = {
        f"{path.relative_to(PACKAGE)}: {value}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in allowed
        for value in string_constants(path) & names
    }
    assert found == set()


def test_api_names_what_the_registry_has():
    assert set(get_args(InternVLFinetuneSpec.model_fields["launcher"].annotation)) == {AUTO, *LAUNCHERS}
    assert set(get_args(PlanStatus.model_fields["launcher"].annotation.__args__[0])) == set(LAUNCHERS)
    assert set(AUTO_ORDER) == set(LAUNCHERS)
    assert set(get_args(JobReference.model_fields["kind"].annotation)) == {
        launcher.kind for launcher in LAUNCHERS.values()
    }


def test_the_handlers_watch_every_launcher():
    watched = {
        (h.selector.group, h.selector.version, h.selector.any_name) for h in REGISTRY._watching.get_all_handlers()
    }
    assert {(launcher.group, launcher.version, launcher.plural) for launcher in LAUNCHERS.values()} <= watched


@pytest.mark.parametrize("name", list(LAUNCHERS))
@pytest.mark.parametrize("suspend", [True, False])
def test_the_rendered_job_is_the_entrys(lora_cr, name, suspend):
    """What the renderer writes is what the registry reads: kind, version and suspend field."""
    cr = copy.deepcopy(lora_cr)
    cr["spec"]["launcher"] = name
    cr["spec"]["suspend"] = suspend
    launcher = LAUNCHERS[name]
    *_, job = render(context_for(cr))
    assert (job["apiVersion"], job["kind"]) == (launcher.api_version, launcher.kind)
    assert launcher.suspended(job) is suspend


@pytest.mark.parametrize("name", list(LAUNCHERS))
def test_the_suspend_patch_writes_the_suspend_field(name):
    launcher = LAUNCHERS[name]
    patch = launcher.suspend_patch(True)
    assert launcher.suspended(patch) is True
    assert launcher.suspended(launcher.suspend_patch(False)) is False
    assert launcher.suspended({"spec": {}}) is False


def test_the_kubeflow_suspend_patch():
    assert LAUNCHERS["pytorchjob"].suspend_patch(True) == {"spec": {"runPolicy": {"suspend": True}}}

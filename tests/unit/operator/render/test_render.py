"""Every child object, for every model size, method, node count and launcher, is valid against
the real schemas and the rules Kubeflow applies outside them."""

import copy

import pytest

from internvl_operator.launchers import LAUNCHERS
from internvl_operator.naming import MOST_NODES
from internvl_operator.render import render
from internvl_trainer.config import MODEL_NAMES
from tests.unit.operator.render.conftest import context_for, plan_for, schema_errors
from tests.unit.pod_security import restricted_violations

CASES = [
    (model, method, nodes, launcher)
    for model in MODEL_NAMES
    for method in ("full", "lora")
    for nodes in (1, 4)
    for launcher in ("pytorchjob", "mpijob")
]


@pytest.mark.parametrize(("model", "method", "nodes", "launcher"), CASES)
def test_children_are_valid(lora_cr, model, method, nodes, launcher):
    cr = copy.deepcopy(lora_cr)
    cr["spec"]["model"]["name"] = model
    cr["spec"]["method"] = {"type": method}
    cr["spec"]["launcher"] = launcher
    children = render(context_for(cr, plan_for(nodes=nodes)))
    assert [c["kind"] for c in children] == [
        "ConfigMap",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PyTorchJob" if launcher == "pytorchjob" else "MPIJob",
    ]
    for child in children:
        assert schema_errors(child) == [], child["kind"]


def test_every_placement_field_renders_valid(full_cr):
    cr = copy.deepcopy(full_cr)
    cr["spec"]["pod"] = {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
                }
            }
        },
        "priorityClassName": "training",
        "schedulerName": "volcano",
        "imagePullSecrets": [{"name": "registry"}],
        "annotations": {"sidecar.istio.io/inject": "false"},
        "env": [
            {"name": "NCCL_DEBUG", "value": "INFO"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}},
        ],
        "hostNetwork": True,
    }
    cr["spec"]["resources"].update({"cpu": "96", "memory": "1600Gi", "ephemeralStorage": "500Gi"})
    for launcher in ("pytorchjob", "mpijob"):
        cr["spec"]["launcher"] = launcher
        for child in render(context_for(cr, plan_for(nodes=2))):
            assert schema_errors(child) == [], child["kind"]


def pod_templates(job):
    """Every pod template of a Kubeflow job, by replica type."""
    replicas = job["spec"]["pytorchReplicaSpecs" if job["kind"] == "PyTorchJob" else "mpiReplicaSpecs"]
    return {replica_type: replica["template"] for replica_type, replica in replicas.items()}


@pytest.mark.parametrize("launcher", ["pytorchjob", "mpijob"])
@pytest.mark.parametrize("nodes", [1, 4])
@pytest.mark.parametrize("scratch", [{}, {"sizeLimit": "1Ti"}, {"claimName": "shared-scratch"}])
def test_every_pod_meets_the_restricted_pod_security_standard(lora_cr, launcher, nodes, scratch):
    cr = copy.deepcopy(lora_cr)
    cr["spec"]["launcher"] = launcher
    cr["spec"]["resources"] = {"scratch": scratch}
    *_, job = render(context_for(cr, plan_for(nodes=nodes)))
    templates = pod_templates(job)
    expected = {"pytorchjob": {"Master", "Worker"}, "mpijob": {"Launcher", "Worker"}}[launcher]
    assert set(templates) == (expected if nodes > 1 or launcher == "mpijob" else {"Master"})
    for replica_type, template in templates.items():
        assert restricted_violations(template) == [], replica_type


def test_host_network_where_allowed_is_the_one_departure_from_restricted(full_cr):
    cr = copy.deepcopy(full_cr)
    cr["spec"]["pod"] = {"hostNetwork": True}
    for launcher in ("pytorchjob", "mpijob"):
        cr["spec"]["launcher"] = launcher
        *_, job = render(context_for(cr, plan_for(nodes=2), allow_host_network=True))
        for template in pod_templates(job).values():
            assert restricted_violations(template) == ["host namespaces: hostNetwork=true"]


def test_the_schema_check_catches_misspelt_fields(lora_cr):
    lora_cr["spec"]["launcher"] = "pytorchjob"
    *_, job = render(context_for(lora_cr))
    job["spec"]["nprocPerNod"] = "8"
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    errors = schema_errors(job)
    assert any("nprocPerNod" in e for e in errors)
    assert any("imagePullPolicyy" in e for e in errors)


def test_rendering_is_deterministic(lora_cr):
    assert render(context_for(lora_cr)) == render(context_for(lora_cr))


def object_names(length: int) -> list[str]:
    """Two valid object names of ``length`` characters: a DNS-1035 label as long as the object
    name allows, which the stem keeps while it fits, and a dotted subdomain, which it rewrites."""
    label = ("run-" * 64)[:length]
    dotted = ("v1.2-" * 51)[:length]
    return [name[:-1] + "z" if name[-1] in "-." else name for name in (label, dotted)]


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_every_object_name_renders_with_every_launcher(lora_cr, launcher):
    # The largest job (one pod per GPU), so the longest pod name each launcher's controller makes.
    plan = plan_for(nodes=MOST_NODES, gpus_per_node=1)
    cr = copy.deepcopy(lora_cr)
    cr["spec"]["launcher"] = launcher
    problems = {}
    for length in range(1, 254):
        for name in object_names(length):
            cr["metadata"]["name"] = name
            job = LAUNCHERS[launcher].render(context_for(cr, plan))
            problems[name] = LAUNCHERS[launcher].problems(job)
    assert len(problems) == 2 * 253
    assert {name: found for name, found in problems.items() if found} == {}
